"""Client options: endpoints, timeouts, TLS and authentication, validated once.

Rules:
- Endpoints are `host:port`, `http://host:port` or `https://host:port`; a bare `host:port` is
  https when any TLS option is given, else http. They are normalized to base URLs
  (`scheme://host:port`, no path) and must all use one scheme.
- TLS: `ca` (CA bundle to verify the servers; default: the system's), `cert`/`key` (a client
  certificate, for servers that require one), `verify=False` only for experiments. The
  `ssl.SSLContext` is built here once and shared by both transports.
- Auth: `username`/`password` (HTTP Basic on every request) or a bearer `token`; never both.
  With `token_auth=True`, the username and password are traded for a bearer token from
  `POST /auth/token` (renewed by the engine when the server says it expired), so the password
  crosses the wire once. Credentials are never part of `repr()` or error messages.
"""

from __future__ import annotations

import base64
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

DEFAULT_ENDPOINTS: Final = ("localhost:8081", "localhost:8082", "localhost:8083")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    endpoints: tuple[str, ...]  # base URLs, normalized
    timeout_s: float = 10.0  # budget of one operation, retries and failover included
    request_timeout_s: float = 7.0  # one attempt on one node (the server's own limit is 5 s)
    connect_timeout_s: float = 1.0
    sessions: bool = True  # exactly-once retries of writes via server sessions, when supported
    session_ttl_s: int | None = None  # None: the server's default (60 s)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    auth_header: str | None = field(default=None, repr=False)
    # token_auth: trade these for a bearer token (POST /auth/token), renewed when it expires
    token_credentials: tuple[str, str] | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.endpoints[0].startswith("https://")


def normalize_endpoint(endpoint: str, default_scheme: str) -> str:
    text = endpoint.strip()
    if "://" not in text:
        text = f"{default_scheme}://{text}"
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"endpoint {endpoint!r}: scheme must be http or https")
    if not parts.hostname or parts.port is None:
        raise ValueError(f"endpoint {endpoint!r}: expected host:port")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"endpoint {endpoint!r}: expected scheme://host:port and nothing else")
    return f"{parts.scheme}://{parts.netloc}"


def build_ssl_context(
    ca: str | Path | None, cert: str | Path | None, key: str | Path | None, verify: bool
) -> ssl.SSLContext:
    if key is not None and cert is None:
        raise ValueError("key= needs cert=")
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    return ctx


def make_options(
    endpoints: str | Sequence[str] | None = None,
    *,
    timeout: float = 10.0,
    request_timeout: float = 7.0,
    connect_timeout: float = 1.0,
    sessions: bool = True,
    session_ttl: int | None = None,
    ca: str | Path | None = None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    verify: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    token_auth: bool = False,
) -> ClientOptions:
    if endpoints is None:
        endpoints = DEFAULT_ENDPOINTS
    elif isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    if not endpoints:
        raise ValueError("at least one endpoint is needed")
    tls_asked = ssl_context is not None or ca is not None or cert is not None or not verify
    scheme = "https" if tls_asked else "http"
    urls = tuple(dict.fromkeys(normalize_endpoint(e, scheme) for e in endpoints))
    schemes = {u.split("://", 1)[0] for u in urls}
    if len(schemes) > 1:
        raise ValueError("endpoints mix http and https")
    if min(timeout, request_timeout, connect_timeout) <= 0:
        raise ValueError("timeouts must be positive")
    if urls[0].startswith("https://") and ssl_context is None:
        ssl_context = build_ssl_context(ca, cert, key, verify)
    elif urls[0].startswith("http://") and tls_asked:
        raise ValueError("TLS options given for http:// endpoints")
    return ClientOptions(
        endpoints=urls,
        timeout_s=timeout,
        request_timeout_s=min(request_timeout, timeout),
        connect_timeout_s=min(connect_timeout, request_timeout, timeout),
        sessions=sessions,
        session_ttl_s=_session_ttl(session_ttl),
        ssl_context=ssl_context,
        auth_header=None if token_auth else _auth_header(username, password, token),
        token_credentials=_token_credentials(token_auth, username, password),
    )


def _session_ttl(ttl: int | None) -> int | None:
    if ttl is not None and (isinstance(ttl, bool) or not 1 <= ttl <= 3600):
        raise ValueError("session_ttl must be 1..3600 seconds")
    return ttl


def _token_credentials(
    token_auth: bool, username: str | None, password: str | None
) -> tuple[str, str] | None:
    if not token_auth:
        return None
    if username is None or password is None:
        raise ValueError("token_auth=True needs username= and password=")
    return (username, password)


def _auth_header(username: str | None, password: str | None, token: str | None) -> str | None:
    if token is not None:
        if username is not None or password is not None:
            raise ValueError("give either token= or username=/password=, not both")
        return f"Bearer {token}"
    if username is None and password is None:
        return None
    if username is None or password is None:
        raise ValueError("username= and password= go together")
    if ":" in username:
        raise ValueError("a username must not contain ':' (HTTP Basic)")
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")
