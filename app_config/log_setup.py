"""The log format of every entry point: the ServerApp, the ClientApp and every command.

Flower's own records (logger ``flwr``) keep Flower's console handler; this
adds one stderr handler for everything else, so the project's module loggers
(e.g. the dataset cache's "skipped N files") are shown. Calling it again in
the same process changes nothing. The HTTP clients Flower uses log every
request at INFO; in a ServerApp or ClientApp process each of those lines is
itself pushed to the SuperLink by another request, so they are kept at WARNING.
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "fssuavl"
QUIET_LOGGERS = ("httpx", "httpcore", "urllib3")  # one INFO line per HTTP request


def _not_flower(record: logging.LogRecord) -> bool:
    return not record.name.startswith("flwr")


def setup_logging(level: int = logging.INFO) -> None:
    """Send log records of ``level`` and above, other than Flower's, to stderr (once per process)."""
    root = logging.getLogger()
    if any(h.get_name() == HANDLER_NAME for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_not_flower)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
