"""Small pieces the operator CLI modules share: store arguments, output, a progress bar."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO, TypeVar

from otakey.store import KEK_ENV, Store

from .operator import DB_ENV, db_url, load_kek, with_store

T = TypeVar("T")


def add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL",
                   help="the agent's database: sqlite:///abs/path.db, a file path, or "
                        f"postgresql://user@host:port/db (default ${DB_ENV})")
    p.add_argument("--kek-file", metavar="FILE",
                   help=f"file holding the key-encryption key (64 hex digits); default ${KEK_ENV}")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run_on_store(args: argparse.Namespace, work: Callable[[Store], Awaitable[T]]) -> T:
    url = db_url(args.db)
    kek = load_kek(args.kek_file)
    return asyncio.run(with_store(url, kek, work))


def emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str]) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write((text() if callable(text) else text).rstrip("\n") + "\n")
    sys.stdout.flush()


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


class ProgressBar:
    """``[#####.....]  50/100  text`` on stderr. On a terminal it is redrawn in place; otherwise
    (a log, a pipe) only the ``final`` updates (one per batch) are written, one line each."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self._stream = stream or sys.stderr
        self._width = width
        self._tty = self._stream.isatty()
        self._open = False
        self._last_t = 0.0

    def __call__(self, done: int, total: int, text: str = "", final: bool = False) -> None:
        if not (self._tty or final):
            return
        now = time.monotonic()
        if self._tty and not final and now - self._last_t < 0.1:
            return
        self._last_t = now
        filled = self._width if total == 0 else int(self._width * done / total)
        line = f"[{'#' * filled}{'.' * (self._width - filled)}] {done:>{len(str(total))}}/{total}  {text}"
        if self._tty:
            self._stream.write("\r" + line.ljust(78))
            self._open = True
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._open:
            self._stream.write("\n")
            self._stream.flush()
            self._open = False
