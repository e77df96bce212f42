"""Real servers for tests: the code lives in :mod:`otakey.harness.servers` (``otakey emu run`` starts
its broker the same way); this module keeps the names the tests and fixtures use.

``os`` and ``shutil`` stay importable from here because tests monkeypatch ``servers.shutil.which``
and ``servers.os.path.exists`` to simulate a missing binary.
"""

from __future__ import annotations

import os
import shutil

from otakey.harness.servers import (
    DYNSEC_PLUGIN_PATHS,
    PG_BIN_DIRS,
    SETUP_HINT,
    MosquittoServer,
    MotoServer,
    PostgresServer,
    ServerError,
    ServerMissing,
    free_port,
    start_mosquitto,
    start_moto,
    start_postgres,
    wait_for_port,
)

_wait_for_port = wait_for_port

__all__ = [
    "DYNSEC_PLUGIN_PATHS",
    "PG_BIN_DIRS",
    "SETUP_HINT",
    "MosquittoServer",
    "MotoServer",
    "PostgresServer",
    "ServerError",
    "ServerMissing",
    "free_port",
    "os",
    "shutil",
    "start_mosquitto",
    "start_moto",
    "start_postgres",
    "wait_for_port",
]
