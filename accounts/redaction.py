"""Keeps the operator endpoints' admin_key out of the server's access log (`GET /admin/users?admin_key=…`)."""

from __future__ import annotations

import logging
import re

_ADMIN_KEY = re.compile(r"(admin_key=)[^&\s\"]*", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return _ADMIN_KEY.sub(rf"\g<1>{REDACTED}", text)


class RedactAdminKey(logging.Filter):
    """A filter for uvicorn's access logger, whose lines hold each request's path with its query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True
