"""The portal's JSON log lines, captured in memory."""

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from portal.logging import configure_logging


@contextmanager
def json_logs(level: str) -> Iterator[io.StringIO]:
    """Log lines at `level` and above, as JSON into a string; the previous logging set-up
    (root handlers, level, structlog configuration) comes back at the end."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_config = structlog.get_config()
    stream = io.StringIO()
    configure_logging(level, json=True, stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_config)
