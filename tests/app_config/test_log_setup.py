"""Every entry point's logging: the project's records shown once, per-request HTTP lines kept out."""

from __future__ import annotations

import logging

from app_config.log_setup import HANDLER_NAME, setup_logging


def test_project_records_are_shown_and_http_request_lines_are_not(capsys):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    quiet_levels = {name: logging.getLogger(name).level for name in ("httpx", "data_partition.array_cache")}
    try:
        # earlier tests may have run an entry point in this process, which
        # installed the handler on the stderr of that test: start without it
        root.handlers[:] = [h for h in root.handlers if h.get_name() != HANDLER_NAME]
        logging.getLogger("data_partition.array_cache").setLevel(logging.NOTSET)
        setup_logging()
        setup_logging()  # a second call adds nothing
        assert [h.get_name() for h in root.handlers].count(HANDLER_NAME) == 1
        logging.getLogger("data_partition.array_cache").info("cache built")
        logging.getLogger("httpx").info('HTTP Request: POST http://127.0.0.1:39091/v1/runtime/push-logs "200 OK"')
        logging.getLogger("httpx").warning("connection refused")
        err = capsys.readouterr().err
        assert "cache built" in err and "connection refused" in err and "push-logs" not in err
    finally:
        root.handlers[:], root.level = saved
        for name, level in quiet_levels.items():
            logging.getLogger(name).setLevel(level)
