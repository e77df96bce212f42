"""Shared pytest fixtures: real servers on 127.0.0.1 (see servers.py), one of each per session.

A missing server binary fails the test that needs it, with the fix in the message: these tests
never skip.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TypeVar

import pytest

import servers

S = TypeVar("S")

#: No test here needs minutes; one that runs this long is stuck, and says where instead of holding
#: CI until its cap.
TEST_TIME_LIMIT = float(os.environ.get("OTAKEY_TEST_TIME_LIMIT", "600"))


class TestStuck(Exception):
    """A test ran over TEST_TIME_LIMIT: its threads and asyncio tasks are in the message."""


def _where_everything_waits() -> str:
    out = io.StringIO()
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"--- thread {names.get(ident, ident)}\n{''.join(traceback.format_stack(frame, limit=25))}")
    loop = asyncio._get_running_loop()
    if loop is not None:
        for task in asyncio.all_tasks(loop):
            out.write(f"--- task {task.get_name()}\n")
            task.print_stack(limit=25, file=out)
    return out.getvalue()


@pytest.fixture(autouse=True)
def _stuck_test_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    def expired(_signum: int, _frame: FrameType | None) -> None:
        raise TestStuck(f"{request.node.nodeid} ran over {TEST_TIME_LIMIT:.0f} s; where it waits:\n"
                        f"{_where_everything_waits()}")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIME_LIMIT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _serve(start: Callable[[], S]) -> Iterator[S]:
    try:
        server = start()
    except servers.ServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[servers.MosquittoServer]:
    """A Mosquitto broker with dynamic security; ``.port``, ``.admin_username``/``.admin_password``."""
    yield from _serve(servers.start_mosquitto)


@pytest.fixture(scope="session")
def postgres() -> Iterator[servers.PostgresServer]:
    """A throwaway PostgreSQL 15 cluster; ``.create_database()`` returns a fresh database URL."""
    yield from _serve(servers.start_postgres)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[servers.MotoServer]:
    """A moto server (AWS control plane); ``.url`` is the endpoint_url for boto3."""
    yield from _serve(servers.start_moto)
