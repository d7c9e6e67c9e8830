"""The service's log: our lines to stderr, and every line (uvicorn's and tracebacks included)
through `redact`, so no LLM API key or access token is ever written to a log."""

from __future__ import annotations

import logging

from .errors import redact


class RedactingFormatter(logging.Formatter):
    """Every log line (tracebacks included) without the LLM API keys or the access token."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def log_redacted() -> None:
    """Our log lines to stderr, and every handler (uvicorn's too) through `redact`. Call it after
    uvicorn configured its loggers."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for h in logging.getLogger(name).handlers:
            if not isinstance(h.formatter, RedactingFormatter):
                h.setFormatter(RedactingFormatter(h.formatter or logging.Formatter()))
