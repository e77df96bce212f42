"""``otakey bench dynsec``: Mosquitto's dynamic-security plugin as the broker fills up.

For each starting size (default 0, 1,000 and 5,000 devices, seeded offline the way the Mosquitto
adapter lays them out: one role and one client per device) a fresh broker is started and measured,
through the real :class:`~otakey.cloud.mosquitto.MosquittoAdapter`:

- createClient commands/s, one command per control message (a round trip each);
- createClient commands/s, all in one control message (batched);
- devices/s through ``register_pending`` (createRole + createClient per device) and through
  ``register_many`` (all in one message).

Dynsec rewrites its whole JSON file after every command that changes something, batched or not:
the cost per command grows with the broker's size. Offline seeding writes the file before the
broker starts (the stored hash is base64 PBKDF2-SHA512 with a 12-byte salt and 101 iterations,
:func:`dynsec_hash`), which is how a large initial fleet avoids that cost.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otakey.cloud.mosquitto import MosquittoAdapter, client_username, device_acls, role_name
from otakey.harness import servers

from .common import BenchError, Report, machine, say

MODES = ("create/s 1by1", "create/s batched", "devices/s register_pending", "devices/s register_many")


def dynsec_hash(password: str, salt: bytes | None = None) -> tuple[str, str]:
    """dynsec's stored form of a password (DESIGN §5): (base64 PBKDF2-SHA512 of 101 iterations,
    base64 of the 12-byte salt)."""
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return base64.b64encode(digest).decode(), base64.b64encode(salt).decode()


def seeder(devices: int, prefix: bytes = b"seed") -> Callable[[Path], None]:
    """Adds ``devices`` roles and clients (credential version 1) to a fresh dynamic-security.json."""

    def seed(path: Path) -> None:
        config = json.loads(path.read_text())
        password, salt = dynsec_hash("seeded")  # one hash for all: their passwords do not matter here
        for i in range(devices):
            device_id = prefix + i.to_bytes(8, "big")
            config["roles"].append({"rolename": role_name(device_id), "acls": device_acls(device_id)})
            config["clients"].append({"username": client_username(device_id, 1), "clientid": device_id.hex(),
                                      "password": password, "salt": salt, "iterations": 101,
                                      "roles": [{"rolename": role_name(device_id)}]})
        path.write_text(json.dumps(config))

    return seed


@dataclass(frozen=True)
class DynsecSpec:
    sizes: tuple[int, ...] = (0, 1000, 5000)
    count: int = 0  # operations per measurement; 0: fewer on larger brokers


async def _measure(server: servers.MosquittoServer, mode: str, count: int) -> float:
    adapter = MosquittoAdapter(server.url, server.admin_username, server.admin_password, timeout=600)
    async with adapter:
        t = time.perf_counter()
        if mode == MODES[0]:
            for i in range(count):
                await adapter.control([{"command": "createClient", "username": f"one-{i}", "password": "p"}])
        elif mode == MODES[1]:
            await adapter.control([{"command": "createClient", "username": f"batch-{i}", "password": "p"}
                                   for i in range(count)])
        elif mode == MODES[2]:
            for i in range(count):
                await adapter.register_pending(b"one" + i.to_bytes(4, "big"), 1)
        else:
            results = await adapter.register_many([(b"many" + i.to_bytes(4, "big"), 1) for i in range(count)])
            errors = [r for r in results if isinstance(r, Exception)]
            if errors:
                raise BenchError(f"register_many failed: {errors[0]}")
        return count / (time.perf_counter() - t)


def run(spec: DynsecSpec) -> Report:
    rows: list[dict[str, Any]] = []
    for size in spec.sizes:
        count = spec.count or (200 if size < 1000 else 60 if size < 5000 else 30)
        row: dict[str, Any] = {"devices_before": size, "operations": count}
        for mode in MODES:
            # A fresh broker per mode: each one's writes grow the file the next would pay for.
            say(f"{size} devices: {mode}")
            try:
                server = servers.start_mosquitto(seed=seeder(size))
            except servers.ServerError as exc:
                raise BenchError(str(exc)) from None
            try:
                row["json_kib"] = round((server.folder / "dynamic-security.json").stat().st_size / 1024)
                row[mode] = round(asyncio.run(_measure(server, mode, count)), 1)
            finally:
                server.stop()
        row["ms_per_write"] = round(1000 / row[MODES[0]], 2) if row[MODES[0]] else None
        rows.append(row)
    rep = Report("dynsec", {"benchmark": "dynsec", "machine": machine(), "rows": rows})
    for r in rows:
        rep.row(f"{r['devices_before']:,} devices ({r['json_kib']} KiB JSON)",
                " | ".join(f"{r[m]}" for m in MODES), note=f"{r['ms_per_write']} ms per changing command")
    rep.notes.append("columns: " + " | ".join(MODES))
    return rep
