"""Turning a request into a key and a value, with every limit checked.

Rules:
- A key is the raw (still percent-encoded) path after `/kv/`, percent-decoded by us, strictly:
  every `%` must start a `%XX` escape and the bytes must be UTF-8. aiohttp's decoded path keeps a
  bad escape such as `%FF` literally, which would make `/kv/%FF` and `/kv/%25FF` the same key.
  `/` and `:` may appear encoded or not. At most MAX_KEY_BYTES bytes (else 414).
- A body is JSON when Content-Type is application/json: `{"value": string}`. Otherwise the body
  itself is the value and must be UTF-8. A value has at most `max_value_bytes` UTF-8 bytes.
- Bodies are bounded before they are buffered: Content-Length is checked first (also from the
  `Expect: 100-continue` hook, so curl does not even send an oversized body); a body without a
  length is read by `limits.BodyGate` up to the app's client_max_size (the JSON bound), then
  checked against the bound for its content type.
- A JSON body may take up to 6 bytes per value byte (`\\u001f`), so its bound is
  6 x max_value_bytes + JSON_OVERHEAD: every value within the limit is accepted in either form.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_to_bytes

import msgspec
from aiohttp import web

from raftkv.server.errors import JSON_CONTENT_TYPE, ApiError

KV_PREFIX: Final = "/kv/"
MAX_KEY_BYTES: Final = 4096
JSON_ESCAPE_FACTOR: Final = 6  # worst case: one byte written as \u00XX
JSON_OVERHEAD: Final = 1024  # braces, the "value" name, whitespace
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


class _PutBody(msgspec.Struct):
    value: str


_PUT_DECODER: Final = msgspec.json.Decoder(_PutBody)


def key_from_request(request: web.Request) -> str:
    raw_path = request.rel_url.raw_path
    encoded = raw_path[len(KV_PREFIX) :] if raw_path.startswith(KV_PREFIX) else ""
    if not encoded:
        raise ApiError(400, "invalid_key", "key must not be empty")
    # Each key byte takes 1 to 3 characters of path, so this bound is exact enough to refuse
    # absurd keys before decoding them.
    if len(encoded) > 3 * MAX_KEY_BYTES:
        raise _key_too_large(None)
    if encoded.isascii() and "%" not in encoded:
        # Nothing to decode (the common key): what the steps below would return, cheaper.
        if len(encoded) > MAX_KEY_BYTES:
            raise _key_too_large(len(encoded))
        return encoded
    if _BAD_ESCAPE.search(encoded):
        raise ApiError(400, "invalid_key", "key has a malformed percent-escape")
    try:
        key_bytes = unquote_to_bytes(encoded)
    except UnicodeEncodeError as exc:  # non-ASCII characters that are not valid Unicode
        raise ApiError(400, "invalid_key", "key is not valid UTF-8") from exc
    if len(key_bytes) > MAX_KEY_BYTES:
        raise _key_too_large(len(key_bytes))
    try:
        key = key_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_key", "key is not valid UTF-8 once percent-decoded") from exc
    return key


def _key_too_large(size: int | None) -> ApiError:
    message = f"key longer than {MAX_KEY_BYTES} bytes"
    if size is None:
        return ApiError(414, "key_too_large", message, max_bytes=MAX_KEY_BYTES)
    return ApiError(414, "key_too_large", message, max_bytes=MAX_KEY_BYTES, size=size)


def is_json_body(request: web.BaseRequest) -> bool:
    return request.content_type == JSON_CONTENT_TYPE


def body_limit(request: web.BaseRequest, max_value_bytes: int) -> int:
    if is_json_body(request):
        return JSON_ESCAPE_FACTOR * max_value_bytes + JSON_OVERHEAD
    return max_value_bytes


def max_body_bytes(max_value_bytes: int) -> int:
    """The largest body any request may carry (aiohttp's client_max_size)."""
    return JSON_ESCAPE_FACTOR * max_value_bytes + JSON_OVERHEAD


def check_content_length(request: web.BaseRequest, max_value_bytes: int) -> None:
    length = request.content_length
    if length is not None and length > body_limit(request, max_value_bytes):
        raise _value_too_large(max_value_bytes)


async def read_body(request: web.Request, max_value_bytes: int) -> bytes:
    check_content_length(request, max_value_bytes)
    # limits.BodyGate has already read (and cached) the body, bounded by client_max_size.
    return checked_body(request, await request.read(), max_value_bytes)


def checked_body(request: web.Request, body: bytes, max_value_bytes: int) -> bytes:
    """`read_body` for a body read already (the fast engine's): the same checks."""
    check_content_length(request, max_value_bytes)
    if len(body) > body_limit(request, max_value_bytes):
        raise _value_too_large(max_value_bytes)
    return body


def value_from_body(request: web.Request, body: bytes, max_value_bytes: int) -> str:
    if is_json_body(request):
        try:
            value = _PUT_DECODER.decode(body).value
        except msgspec.ValidationError as exc:
            raise ApiError(
                400, "invalid_value", f'body must be a JSON object {{"value": string}}: {exc}'
            ) from exc
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # Classified here, not from msgspec's exception type or wording (which changed in
            # msgspec 0.23): a JSON text must be UTF-8 (RFC 8259 §8.1), so a body that is not
            # is an encoding error whatever the decoder says. Checked on the error path only.
            if not _is_utf8(body):
                raise ApiError(400, "invalid_encoding", "JSON body is not valid UTF-8") from exc
            raise ApiError(400, "invalid_json", f"malformed JSON body: {exc}") from exc
        except RecursionError as exc:  # msgspec's answer to deeply nested arrays, even skipped ones
            raise ApiError(400, "invalid_json", "JSON body nested too deeply") from exc
        if len(value) > max_value_bytes or len(value.encode("utf-8")) > max_value_bytes:
            raise _value_too_large(max_value_bytes)
        return value
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_encoding", "value is not valid UTF-8") from exc


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _value_too_large(max_value_bytes: int) -> ApiError:
    return ApiError(
        413,
        "value_too_large",
        f"value longer than {max_value_bytes} bytes",
        max_bytes=max_value_bytes,
    )
