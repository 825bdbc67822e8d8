"""What a request may carry, checked once for every door: the native API and the dialects.

Every check raises a ``JSONError`` (400 unless said) naming the field; a dialect's route turns it
into its own error shape (``server.errors.guarded``). Text must be a string, within its length,
without NUL and encodable as UTF-8 (a lone surrogate, which JSON can spell as ``"\\ud800"``, cannot
be stored or sent: refused here, not a 500 further in).
"""

import asyncio
import json
from typing import Any

from aiohttp import web

from server.context import SETTINGS
from server.errors import JSONError

TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
"""Content part types that carry text (Chat Completions, Responses, AI SDK UI messages)."""


async def json_body(request: web.Request, *, required: bool) -> dict[str, Any]:
    """The request's JSON object, read within the body timeout; a JSON 4xx otherwise."""
    try:
        async with asyncio.timeout(request.app[SETTINGS].body_timeout_seconds):
            raw = await request.read()  # over client_max_size: aiohttp raises 413
    except TimeoutError:
        raise JSONError(408, "the request body took too long to arrive", code="body_timeout") from None
    if not raw.strip():
        if required:
            raise JSONError(400, "a JSON object body is required")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise JSONError(400, "the body is not valid JSON", code="bad_json") from None
    if not isinstance(body, dict):
        raise JSONError(400, "the body must be a JSON object", code="bad_json")
    return body


def bad_field(field: str, message: str) -> JSONError:
    return JSONError(400, message, code="bad_field", field=field)


def text(value: object, field: str, limit: int, *, required: bool = True) -> str:
    """``value`` as message text: a string of at most ``limit`` characters, no NUL, valid Unicode;
    not blank when ``required``."""
    if not isinstance(value, str):
        raise bad_field(field, f"'{field}' must be a string")
    if required and not value.strip():
        raise bad_field(field, f"'{field}' must not be empty")
    if len(value) > limit:
        raise bad_field(field, f"'{field}' is longer than {limit} characters")
    if "\x00" in value:
        raise bad_field(field, f"'{field}' must not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_field(field, f"'{field}' is not valid Unicode (a lone surrogate)") from None
    return value


def content_text(content: object, field: str, limit: int, *, required: bool = True) -> str:
    """A message's text: a string, or a list of text parts (``{"type": "text", "text": ...}`` and
    its Responses kin), joined. A part of another type (an image, a file) is refused: streamfan
    relays text models, and dropping a part silently would answer another question."""
    if isinstance(content, list):
        pieces = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_field(field, f"content parts of type {str(kind)[:40]!r} are not supported (text only)")
            if not isinstance(part.get("text"), str):
                raise bad_field(field, "a text part's 'text' must be a string")
            pieces.append(part["text"])
        content = "".join(pieces)
    return text(content, field, limit, required=required)


def whole_number(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_field(field, f"'{field}' must be a whole number from {low} to {high}")
    return value


def refuse_unsupported(body: dict[str, Any], unsupported: dict[str, tuple[object, ...]]) -> None:
    """Refuse a parameter streamfan would otherwise ignore (a wrong answer with no error), unless it
    is absent, null or one of its neutral values (``n: 1``, ``tools: []``) that ``unsupported`` lists."""
    for name, neutral in unsupported.items():
        value = body.get(name)
        if value is not None and value not in neutral:
            raise JSONError(400, f"'{name}' is not supported by streamfan", code="unsupported_parameter", field=name)
