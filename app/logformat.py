"""Log line fields and the JSON line format (`REALTIME_LOG_FORMAT=json`).

A line that traces something (a mint, a redemption, a session's end) carries its fields in the
record: `logger.info("session ended", extra=fields(session_id=..., tid=...))`. The text format
appends them to the message as `key=value`; the JSON format writes them as members of the line's
object, beside `ts`, `level`, `logger` and `msg`. Field values are this service's own (ids, codes,
numbers), never a secret; they are redacted and their control characters escaped all the same.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from app.logs import FIELDS, escape_controls, redact

_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})


def fields(**values: object) -> dict[str, dict[str, object]]:
    """The `extra` of a logging call that carries `values` as the line's fields."""
    return {FIELDS: values}


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    return escape_controls(redact(value if isinstance(value, str) else str(value)))


class JsonFormat(logging.Formatter):
    """One JSON object per line: `ts` (RFC 3339, UTC, milliseconds), `level`, `logger`, `msg`, the
    record's fields, and `exc` (the traceback) when there is one.

    The message is the one the redaction filter left (secrets cut out, control characters escaped);
    JSON's own escaping then keeps every line one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        body: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        values: dict[str, object] | None = getattr(record, FIELDS, None)
        if values:
            for key, value in values.items():
                if key not in _RESERVED:
                    body[key] = _json_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            body["exc"] = record.exc_text
        if record.stack_info:
            body["stack"] = self.formatStack(record.stack_info)
        return json.dumps(body, ensure_ascii=True, separators=(",", ":"))
