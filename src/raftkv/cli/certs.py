"""`raftkv certs init|add-node|add-client`: a cluster's certificates in one command.

Rules: the certificates are made in `raftkv.transport.certs` (layout, SANs, usages); this module
parses flags and prints what was written. Misuse (existing files, a missing CA, a bad node id or
host) exits 2 with a message that says what to do; nothing is written in that case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raftkv.transport.certs import (
    DEFAULT_CA_DAYS,
    DEFAULT_CLIENT_USER,
    DEFAULT_LEAF_DAYS,
    NODE_URI_PREFIX,
    CertError,
    add_client,
    add_node,
    init_certs,
)

certs_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Make TLS certificates for a cluster (CA, peer, HTTP and client certificates).",
)

OutOpt = Annotated[
    Path, typer.Option("--out", "--dir", help="Directory holding ca.crt/ca.key and <node>/...")
]
HostsOpt = Annotated[
    str,
    typer.Option(
        "--hosts", help="Comma-separated host names / IP addresses the node is reached at"
    ),
]
DaysOpt = Annotated[int, typer.Option("--days", help="Validity of leaf certificates in days")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing files")]


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _report(files: list[Path]) -> None:
    for path in files:
        typer.echo(f"wrote {path}")


def _fail(exc: CertError) -> None:
    typer.echo(f"raftkv certs: {exc}", err=True)
    raise typer.Exit(2)


@certs_app.command("init")
def init_cmd(
    nodes: Annotated[str, typer.Option("--nodes", help="Comma-separated node ids")],
    hosts: HostsOpt = "localhost,127.0.0.1",
    out: OutOpt = Path("certs"),
    cluster_name: Annotated[str, typer.Option("--cluster-name")] = "raftkv",
    client_user: Annotated[
        str, typer.Option("--client-user", help="CN of the operator client certificate")
    ] = DEFAULT_CLIENT_USER,
    days: DaysOpt = DEFAULT_LEAF_DAYS,
    ca_days: Annotated[int, typer.Option("--ca-days")] = DEFAULT_CA_DAYS,
    force: ForceOpt = False,
) -> None:
    """Make a CA, per node a peer and an HTTP certificate, and an operator client certificate.

    A node's peer certificate names it with the URI SAN raftkv://node/<node id>."""
    try:
        files = init_certs(
            out,
            _split(nodes),
            _split(hosts),
            cluster_name=cluster_name,
            client_user=client_user,
            days=days,
            ca_days=ca_days,
            force=force,
        )
    except CertError as exc:
        _fail(exc)
        return
    _report(files)
    typer.echo(
        f"peer certificates name their node as {NODE_URI_PREFIX}<node id>; "
        f"keep {out / 'ca.key'} offline once every node has its certificates"
    )


@certs_app.command("add-node")
def add_node_cmd(
    node_id: Annotated[str, typer.Argument(help="The new node's id")],
    hosts: HostsOpt = "localhost,127.0.0.1",
    out: OutOpt = Path("certs"),
    days: DaysOpt = DEFAULT_LEAF_DAYS,
    force: ForceOpt = False,
) -> None:
    """Issue peer and HTTP certificates for a node that joins later, from the existing CA."""
    try:
        files = add_node(out, node_id, _split(hosts), days=days, force=force)
    except CertError as exc:
        _fail(exc)
        return
    _report(files)


@certs_app.command("add-client")
def add_client_cmd(
    user: Annotated[str, typer.Argument(help="User name (the certificate's CN)")],
    out: OutOpt = Path("certs"),
    days: DaysOpt = DEFAULT_LEAF_DAYS,
    force: ForceOpt = False,
) -> None:
    """Issue one more client certificate from the existing CA."""
    try:
        files = add_client(out, user, days=days, force=force)
    except CertError as exc:
        _fail(exc)
        return
    _report(files)


def register(app: typer.Typer) -> None:
    app.add_typer(certs_app, name="certs")
