"""JSON log lines: one object per line, structured fields, tracebacks only server-side."""

from __future__ import annotations

import io
import json
import logging

from jobworker.server.jsonlog import JsonFormatter, fields


def render(record: logging.LogRecord) -> dict[str, object]:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, object] = json.loads(line)
    return parsed


def make_record(msg: str, extra: dict[str, object], exc: BaseException | None = None) -> logging.LogRecord:
    logger = logging.getLogger("test.jsonlog")
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, msg, (), exc_info, extra=extra)


def test_fields_and_plain_extras_become_keys() -> None:
    entry = render(make_record("call", fields(identity="walt", code="OK", duration_ms=1.5)))
    assert entry["msg"] == "call"
    assert entry["level"] == "warning"
    assert entry["logger"] == "test.jsonlog"
    assert (entry["identity"], entry["code"], entry["duration_ms"]) == ("walt", "OK", 1.5)
    # The engine logs with plain extra={...}; those fields must not be lost either.
    assert render(make_record("job started", {"job_id": "j", "pid": 3}))["pid"] == 3


def test_multiline_messages_and_tracebacks_stay_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError as exc:
        entry = render(make_record("unexpected\nerror", {}, exc))
    assert entry["msg"] == "unexpected\nerror"
    assert "ValueError: boom" in str(entry["traceback"])


def test_configure_logging_writes_json_lines() -> None:
    from jobworker.server import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        configure_logging("INFO", stream)
        logging.getLogger("jobworker.audit").info("call", extra=fields(method="/x/Y"))
        logging.getLogger("jobworker.audit").debug("hidden")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["method"] == "/x/Y"
