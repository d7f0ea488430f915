"""The asyncio transport of `AsyncClient`: aiohttp, with its silent retry switched off.

Rules:
- aiohttp's ClientSession re-sends an idempotent request (PUT and DELETE are) once when it fails
  with ClientOSError or ServerDisconnectedError, outside the middleware chain (aiohttp 3.14
  client.py, `retry_persistent_connection`). That would send a write twice behind the engine's
  back (ARCHITECTURE.md §4). `_classify` runs inside that loop, around connect + send + reading
  the reply head, and turns every failure into `_NotSentError` / `_MaybeSentError`, which
  derive from neither of those types (nor from ClientError or OSError): the loop re-raises them
  instead of re-sending. Whatever fails, one `send` is at most one copy on the wire.
- Failure attribution: a failed connect (ClientConnectorError, its TLS subclasses, the connect
  timeout) is `NotSent`; any failure after that, including the attempt's total timeout, is
  `MaybeSent`. `Send.fresh` requests go through a second session whose connector has
  `force_close=True`, so the connection is new and attribution exact.
- Sessions are created lazily inside the running loop and closed by `close()`. No proxies from
  the environment, no redirects, no cookies, no automatic decompression.
"""

from __future__ import annotations

import ssl

import aiohttp
from yarl import URL

from raftkv.client.engine import MaybeSent, NotSent, Outcome, Send
from raftkv.client.wire import Reply


class _NotSentError(Exception):
    def __init__(self, reason: str, tls: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tls = tls


class _MaybeSentError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _classify(
    req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    try:
        return await handler(req)
    except aiohttp.ClientConnectorCertificateError as exc:
        raise _NotSentError(str(exc.certificate_error), tls=True) from exc
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise _NotSentError(str(exc) or type(exc).__name__, tls=False) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise _MaybeSentError(str(exc) or type(exc).__name__) from exc


class AsyncTransport:
    def __init__(self, ssl_context: ssl.SSLContext | None) -> None:
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._pooled: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None

    def _session(self, fresh: bool) -> aiohttp.ClientSession:
        current = self._fresh if fresh else self._pooled
        if current is None or current.closed:
            current = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, force_close=fresh),
                middlewares=(_classify,),
                trust_env=False,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            if fresh:
                self._fresh = current
            else:
                self._pooled = current
        return current

    async def send(self, s: Send) -> Outcome:
        session = self._session(s.fresh)
        timeout = aiohttp.ClientTimeout(
            total=s.timeout_s, connect=min(s.connect_timeout_s, s.timeout_s)
        )
        try:
            async with session.request(
                s.method,
                URL(s.endpoint + s.target, encoded=True),
                data=s.body or None,
                headers=dict(s.headers),
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                headers = {k.lower(): v for k, v in resp.headers.items()}
                return Reply(resp.status, headers, body)
        except _NotSentError as exc:
            return NotSent(exc.reason, tls=exc.tls)
        except _MaybeSentError as exc:
            return MaybeSent(exc.reason)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # Reading the body failed, or the total timeout fired: after the connection was up
            # (the connect timeout is never longer than the total, so it fires first).
            return MaybeSent(str(exc) or type(exc).__name__)

    async def close(self) -> None:
        for session in (self._pooled, self._fresh):
            if session is not None:
                await session.close()
        self._pooled = self._fresh = None
