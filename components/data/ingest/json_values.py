"""Table values as strict JSON, by one stated rule, so that no column type can fail a sample's ``.json``.

- NaN and ±infinity become null (strict JSON has neither);
- dates, times and timestamps become ISO 8601 strings; durations, seconds;
- decimals become strings (exact, not rounded through a float);
- binary values are dropped (the input table keeps them; a caption is text);
- text that is not valid Unicode (lone surrogates) has those characters replaced;
- lists and mappings are converted item by item; anything else becomes its ``str()``.
"""

from __future__ import annotations

import datetime
import decimal
import math
from typing import Any

DROPPED = object()


def clean_text(value: str) -> str:
    """``value`` with anything UTF-8 cannot encode (lone surrogates) replaced."""
    return value.encode("utf-8", "replace").decode("utf-8")


def json_value(value: Any) -> Any:
    """A value ``json.dumps(..., allow_nan=False)`` accepts, or ``DROPPED``."""
    if value is None or isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return DROPPED
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dict):
        items = ((clean_text(str(k)), json_value(v)) for k, v in value.items())
        return {k: v for k, v in items if v is not DROPPED}
    if isinstance(value, (list, tuple, set)):
        return [v for v in map(json_value, value) if v is not DROPPED]
    return clean_text(str(value))


def json_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The columns of ``row`` as strict-JSON values, binary ones left out."""
    return json_value(row) if row else {}
