"""Structured logging of the agent: one line per event, ``key=value`` pairs or JSON.

Key material must never reach a log. Records and credentials already hide their secrets in
``repr``; on top of that this module refuses, at the call site, any field whose name says it holds
a key and any ``bytes`` value other than identifiers (device IDs, nonces, fingerprints): such a
call is a programming error and raises ``ValueError``/``TypeError`` in tests long before a log
could carry a key.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

LOGGER_NAME = "otakey.agent"

_SECRET_NAME = re.compile(r"(^|_)(key|keys|pk|ak|kek|secret|password|passwd|token|answer|body)($|_)")
# bytes fields that identify things and are public (on the wire in clear, or MACs of a label).
_PUBLIC_BYTES = frozenset({"device", "device_id", "nonce_d", "nonce_a", "ak_fp", "cloud_fp"})
_KV_SAFE = re.compile(r"^[A-Za-z0-9_.:/@+\-]+$")


# Field names already found harmless. Names are literals of the calling code, so this stays small;
# it spares a regular-expression search per field of every event, debug ones included (several per
# request: part of the logging share in bench/README.md's agent profile).
_SAFE_NAMES: set[str] = set()
_BYTES_TYPES = (bytes, bytearray, memoryview)


def check_field(name: str, value: Any) -> None:
    """Refuse a field that may carry key material (whatever the log level)."""
    if name not in _SAFE_NAMES:
        if _SECRET_NAME.search(name):
            raise ValueError(f"log field {name!r} looks like key material; never log it")
        _SAFE_NAMES.add(name)
    if type(value) in _BYTES_TYPES and name not in _PUBLIC_BYTES:
        raise TypeError(f"log field {name!r} carries bytes; only identifiers may be logged")


def _value(name: str, value: Any) -> Any:
    check_field(name, value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, float):
        return round(value, 6)
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def fields_of(event: str, fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"event": event}
    for name, value in fields.items():
        out[name] = _value(name, value)
    return out


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self._json = fmt == "json"
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once per second, not per line
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        data: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
        }
        event_fields = getattr(record, "otakey_fields", None)
        if event_fields is None:
            data["event"] = "log"
            data["msg"] = record.getMessage()
        else:
            data.update(event_fields)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            data["error"] = f"{type(exc).__name__}: {exc}"
        if self._json:
            return json.dumps(data, separators=(",", ":"))
        parts = []
        for k, v in data.items():
            if v is None:
                v = ""
            text = str(v).lower() if isinstance(v, bool) else str(v)
            parts.append(f"{k}={text}" if _KV_SAFE.match(text) else f"{k}={json.dumps(text)}")
        return " ".join(parts)


class EventLog:
    """``log.info("provisioned", device=..., version=1)``: one structured line."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(LOGGER_NAME)

    def enabled(self, level: int) -> bool:
        """Whether events of ``level`` are written (to skip building fields nobody will see)."""
        return self._logger.isEnabledFor(level)

    def _emit(self, level: int, event: str, fields: dict[str, Any], exc: BaseException | None = None) -> None:
        if not self._logger.isEnabledFor(level):
            # Checked even when the level is off: a secret-bearing call must fail in every test run.
            for name, value in fields.items():
                check_field(name, value)
            return
        data = fields_of(event, fields)
        self._logger.log(level, event, extra={"otakey_fields": data},
                         exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, exc: BaseException | None = None, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields, exc)


def setup_logging(fmt: str = "kv", level: int = logging.INFO, stream: Any = None) -> None:
    """Route the agent's (and the libraries') log records to ``stream`` (stderr) as ``fmt`` lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # paho and botocore talk a lot at INFO/DEBUG, and botocore may echo request parameters.
    for noisy in ("botocore", "boto3", "urllib3", "paho", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Record attributes our lines never show; the logging documentation's "Optimization" section
    # lists these switches. Without them every record walks the stack to find its caller.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
