"""Shared pytest fixtures: real servers on 127.0.0.1 (see servers.py), one of each per session.

A missing server binary fails the test that needs it, with the fix in the message: these tests
never skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

import servers

S = TypeVar("S")


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
