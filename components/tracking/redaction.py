"""Secrets never reach a tracking server: values of secret-looking keys and passwords inside URLs are masked."""

from __future__ import annotations

import re
from typing import Any, Mapping

MASK = "***"
# Whole key names (or their last underscore-separated parts) that hold secrets. "tokens" and
# "tokenizer_*" settings are not secrets, so a bare "token" must be the whole name or its end.
_SECRET_KEY = re.compile(
    r"(^|_)(password|passwd|pwd|secret|token|api_key|apikey|access_key|secret_key|private_key|credentials?)$",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    """Whether a setting of this name holds a secret (``password``, ``mlflow_token``, ``aws_secret_key``...)."""
    return bool(_SECRET_KEY.search(key))


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", value)
    return value


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with secret values masked, at any depth."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if _SECRET_KEY.search(str(key)) and value not in (None, ""):
            out[key] = MASK
        elif isinstance(value, Mapping):
            out[key] = redact(value)
        elif isinstance(value, (list, tuple)):
            out[key] = [redact(v) if isinstance(v, Mapping) else redact_value(v) for v in value]
        else:
            out[key] = redact_value(value)
    return out
