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
_SAFE_TEXTS: set[str] = set()  # texts found to need no quoting (bounded, see _Formatter.format)


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
    kind = type(value)
    if kind is str or kind is int:  # most fields: no conversion
        return value
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
        event_fields = getattr(record, "otakey_fields", None)
        if event_fields is None:
            event_fields = {"event": "log", "msg": record.getMessage()}
        exc = record.exc_info[1] if record.exc_info else None
        return self.line(record.created, record.msecs, record.levelname, event_fields, exc)

    def line(self, created: float, msecs: float, levelname: str, event_fields: dict[str, Any],
             exc: BaseException | None) -> str:
        second = int(created)
        if second != self._second:  # strftime once per second, not per line
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        data: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(msecs):03d}Z",
            "level": levelname.lower(),
        }
        data.update(event_fields)
        if exc is not None:
            data["error"] = f"{type(exc).__name__}: {exc}"
        if self._json:
            return json.dumps(data, separators=(",", ":"))
        parts = []
        for k, v in data.items():
            kind = type(v)
            if kind is int:  # digits and a sign: never quoted
                parts.append(f"{k}={v}")
                continue
            if v is None:
                v = ""
            text = v if kind is str else (str(v).lower() if kind is bool else str(v))
            if text in _SAFE_TEXTS or _KV_SAFE.match(text):
                parts.append(f"{k}={text}")
                if len(text) <= 32 and len(_SAFE_TEXTS) < 4096:
                    # Event names, types, results, addresses repeat on every line.
                    _SAFE_TEXTS.add(text)
            else:
                parts.append(f"{k}={json.dumps(text)}")
        return " ".join(parts)


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`setup_logging` installs. While it is the only way out of the agent's
    logger (nothing else attached anywhere on the way to the root, no filters), :class:`EventLog`
    hands it the finished line without a LogRecord: the same text, for about half the cost of the
    logging machinery, which was ~8 % of the agent under load (bench/README.md, goal 1). Anything
    else attached (a test's log capture, another handler) gets the normal route."""

    def write_line(self, line: str) -> None:
        self.acquire()
        try:
            self.stream.write(line + self.terminator)
            self.flush()
        except Exception:
            # As Handler.handleError would: a closed or full stream must not take the caller down.
            if logging.raiseExceptions:
                sys.stderr.write("--- logging error: cannot write a log line ---\n")
        finally:
            self.release()


def _direct_handler(logger: logging.Logger, level: int) -> _LineHandler | None:
    """The :class:`_LineHandler` ``logger``'s events go to, when it is their only destination."""
    node: logging.Logger | None = logger
    root = logging.root
    while node is not None and node is not root:
        if node.handlers or node.filters or not node.propagate or node.disabled:
            return None
        node = node.parent
    handlers = root.handlers
    if len(handlers) != 1 or root.filters:
        return None
    handler = handlers[0]
    if (type(handler) is not _LineHandler or handler.filters or level < handler.level
            or not isinstance(handler.formatter, _Formatter)):
        return None
    return handler


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
        direct = _direct_handler(self._logger, level)
        if direct is not None:
            formatter = direct.formatter
            assert isinstance(formatter, _Formatter)
            created = time.time()
            direct.write_line(formatter.line(created, (created - int(created)) * 1000,
                                             logging.getLevelName(level), data, exc))
            return
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
    handler = _LineHandler(stream or sys.stderr)
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
