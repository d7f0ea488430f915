"""How every command reaches a cluster: endpoints, TLS and credentials, defined once.

Rules:
- One definition of the flags: `--endpoints/-e` (env RAFTKV_ENDPOINTS; default the seed's three
  nodes), `--timeout`, `--json`, TLS (`--cacert`, `--cert`, `--key`, `--insecure`) and auth
  (`--user NAME[:PASSWORD]` / RAFTKV_USER, `--password` / RAFTKV_PASSWORD, prompted when a user
  has none; or `--token` / RAFTKV_TOKEN).
- A command takes a parameter `conn: Connection` and is decorated with
  `@connection_options(...)`: the decorator puts the flags into the command's signature (typer
  reads `__signature__`) and hands the command one `Connection` built from them. Commands that
  name their target another way (`serve --join URL`, `inspect --address`) leave out
  `--endpoints` (and `--json`, `--timeout` where they have their own or none).
- A `Connection` makes what each tool needs: a `raftkv.client.Client` (put/get/member ...),
  `ClientOptions` (snapshot save), or an SSL context plus an `Authorization` header for tools
  with their own HTTP client (the inspector, the join request of `serve --join`).
- Credentials never appear in `repr()`, messages or logs.
"""

from __future__ import annotations

import base64
import functools
import inspect
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

import typer

from raftkv.client.options import (
    DEFAULT_ENDPOINTS,
    ClientOptions,
    build_ssl_context,
    make_options,
)
from raftkv.ops.httpc import HTTPS_HINT

if TYPE_CHECKING:
    from raftkv.client import Client

F = TypeVar("F", bound=Callable[..., Any])

SEED_ENDPOINTS: Final = ",".join(DEFAULT_ENDPOINTS)

Endpoints = Annotated[
    str,
    typer.Option(
        "--endpoints",
        "-e",
        envvar="RAFTKV_ENDPOINTS",
        help="Comma-separated node addresses (host:port or http(s)://host:port)",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
Timeout = Annotated[float, typer.Option(help="Seconds per operation, retries included")]
CaCert = Annotated[Path | None, typer.Option("--cacert", help="CA bundle to verify the nodes")]
Cert = Annotated[Path | None, typer.Option("--cert", help="Client certificate (PEM)")]
Key = Annotated[Path | None, typer.Option("--key", help="Client certificate's key (PEM)")]
Insecure = Annotated[
    bool, typer.Option("--insecure", help="HTTPS without verifying certificates (testing only)")
]
User = Annotated[
    str | None,
    typer.Option("--user", envvar="RAFTKV_USER", help="NAME[:PASSWORD] for HTTP Basic auth"),
]
Password = Annotated[
    str | None,
    typer.Option(
        "--password",
        envvar="RAFTKV_PASSWORD",
        help="The --user's password (prompted when neither gives one)",
    ),
]
Token = Annotated[str | None, typer.Option("--token", envvar="RAFTKV_TOKEN", help="Bearer token")]


@dataclass(frozen=True, slots=True)
class Connection:
    """The connection flags of one command invocation."""

    endpoints: str = SEED_ENDPOINTS
    timeout: float = 10.0
    as_json: bool = False
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def tls_asked(self) -> bool:
        return self.cacert is not None or self.cert is not None or self.insecure

    def https_hint(self) -> str:
        """Said after "no node answered" over plain HTTP: an HTTPS port just hangs up on it."""
        if self.tls_asked or "https://" in self.endpoints:
            return ""
        return HTTPS_HINT

    def credentials(self) -> tuple[str | None, str | None]:
        """(user, password), prompting for a password a user was given without one."""
        if self.user is None:
            return None, None  # (a RAFTKV_PASSWORD in the environment alone means nothing)
        name, sep, password = self.user.partition(":")
        if sep:
            return name, password
        if self.password is not None:
            return name, self.password
        return name, typer.prompt(f"password for {name}", hide_input=True, err=True)

    def auth_header(self) -> str | None:
        """The `Authorization` header value, or None without credentials."""
        name, password = self.credentials()
        if self.token is not None:
            if name is not None:
                raise ValueError("give either --token or --user, not both")
            return f"Bearer {self.token}"
        if name is None or password is None:
            return None
        if ":" in name:
            raise ValueError("a user name must not contain ':' (HTTP Basic)")
        return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode("ascii")

    def ssl_context(self, https: bool) -> ssl.SSLContext | None:
        """The client TLS context for an https:// target (None for http://)."""
        if not https:
            if self.tls_asked:
                raise ValueError("TLS options given for an http:// address")
            return None
        return build_ssl_context(self.cacert, self.cert, self.key, not self.insecure)

    def client(self, **extra: Any) -> Client:
        """A `raftkv.client.Client` for these flags (`extra`: its other arguments)."""
        from raftkv.client import Client  # not at import: `serve` and `inspect` never need it

        return Client(self.endpoints, **self._client_kwargs(), **extra)

    def options(self, **extra: Any) -> ClientOptions:
        """`ClientOptions` for these flags (`extra`: make_options' other arguments)."""
        return make_options(self.endpoints, **self._client_kwargs(), **extra)

    def _client_kwargs(self) -> dict[str, Any]:
        """What `Client(...)` and `make_options(...)` both take, by the same names."""
        name, password = self.credentials()
        return {
            "timeout": self.timeout,
            "ca": self.cacert,
            "cert": self.cert,
            "key": self.key,
            "verify": not self.insecure,
            "username": name,
            "password": password,
            "token": self.token,
        }


# (parameter name, annotation, default, which group) in the order --help lists them
_FLAGS: Final = (
    ("endpoints", Endpoints, SEED_ENDPOINTS, "endpoints"),
    ("as_json", AsJson, False, "json"),
    ("timeout", Timeout, 10.0, "timeout"),
    ("cacert", CaCert, None, "tls"),
    ("cert", Cert, None, "tls"),
    ("key_file", Key, None, "tls"),
    ("insecure", Insecure, False, "tls"),
    ("user", User, None, "auth"),
    ("password", Password, None, "auth"),
    ("token", Token, None, "auth"),
)


def connection_options(
    *, endpoints: bool = True, json: bool = True, timeout: float | None = 10.0
) -> Callable[[F], F]:
    """Give a command the shared connection flags; it receives them as `conn: Connection`.
    `timeout=None` leaves `--timeout` out (the Connection then has the default 10 s)."""
    groups = {"tls", "auth"}
    groups |= {"endpoints"} if endpoints else set()
    groups |= {"json"} if json else set()
    groups |= {"timeout"} if timeout is not None else set()
    flags = [(n, a, timeout if n == "timeout" else d) for n, a, d, g in _FLAGS if g in groups]

    def decorate(fn: F) -> F:
        own = inspect.signature(fn, eval_str=True)
        if "conn" not in own.parameters:
            raise TypeError(f"{fn.__name__} must take a `conn: Connection` parameter")
        params = [p for p in own.parameters.values() if p.name != "conn"]
        params += [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
            for n, a, d in flags
        ]
        names = [n for n, _, _ in flags]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in names}
            values["key"] = values.pop("key_file", None)
            kwargs["conn"] = Connection(**values)
            return fn(*args, **kwargs)

        command.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate
