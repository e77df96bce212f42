#!/usr/bin/env python3
"""How fast Mosquitto's dynamic-security plugin registers credentials as the broker fills up.

For each starting size (default 0, 1,000 and 5,000 devices, seeded offline the way the adapter
lays them out: one role and one client per device) it starts a fresh broker and measures, through
the real MosquittoAdapter:

- createClient commands/s, one command per control message (a round trip each);
- createClient commands/s, all in one control message (batched);
- devices/s through ``register_pending`` (createRole + createClient per device) and through
  ``register_many``.

Usage: python3 bench/dynsec_scale.py [--sizes 0,1000,5000] [--count N]
Needs mosquitto with the dynsec plugin (scripts/setup.sh). Results: agent/otakey/cloud/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
sys.path.insert(0, str(ROOT / "agent"))

import servers  # noqa: E402
from otakey.cloud.mosquitto import MosquittoAdapter, client_username, device_acls, role_name  # noqa: E402


def dynsec_hash(password: str) -> tuple[str, str]:
    """dynsec's stored form (DESIGN §5): base64 PBKDF2-SHA512, 12-byte salt, 101 iterations."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return base64.b64encode(digest).decode(), base64.b64encode(salt).decode()


def seeder(devices: int):
    """Adds ``devices`` roles and clients to a fresh dynamic-security.json (offline seeding)."""

    def seed(path: Path) -> None:
        config = json.loads(path.read_text())
        password, salt = dynsec_hash("seeded")   # one hash for all: their passwords do not matter here
        for i in range(devices):
            device_id = b"seed" + i.to_bytes(8, "big")
            config["roles"].append({"rolename": role_name(device_id), "acls": device_acls(device_id)})
            config["clients"].append({"username": client_username(device_id, 1), "clientid": device_id.hex(),
                                      "password": password, "salt": salt, "iterations": 101,
                                      "roles": [{"rolename": role_name(device_id)}]})
        path.write_text(json.dumps(config))

    return seed


MODES = ("create/s 1by1", "create/s batch", "dev/s 1by1", "dev/s batch")


async def measure(server: servers.MosquittoServer, mode: str, count: int) -> float:
    """Operations per second of one mode on a broker nobody else changed."""
    adapter = MosquittoAdapter(server.url, server.admin_username, server.admin_password, timeout=600)
    async with adapter:
        t = time.perf_counter()
        if mode == "create/s 1by1":
            for i in range(count):
                await adapter.control([{"command": "createClient", "username": f"one-{i}", "password": "p"}])
        elif mode == "create/s batch":
            await adapter.control([{"command": "createClient", "username": f"batch-{i}", "password": "p"}
                                   for i in range(count)])
        elif mode == "dev/s 1by1":
            for i in range(count):
                await adapter.register_pending(b"one" + i.to_bytes(4, "big"), 1)
        else:
            results = await adapter.register_many([(b"many" + i.to_bytes(4, "big"), 1) for i in range(count)])
            assert not any(isinstance(r, Exception) for r in results)
        return count / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0,1000,5000", help="devices already registered, comma-separated")
    parser.add_argument("--count", type=int, default=0,
                        help="operations per measurement (default: fewer on larger brokers)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"{'devices before':>14} | " + " | ".join(f"{h:>14}" for h in MODES) + " | json KiB")
    for size in sizes:
        count = args.count or (200 if size < 1000 else 60 if size < 5000 else 30)
        rates, kib = [], 0.0
        for mode in MODES:
            # A fresh broker per mode: each one's writes grow the file the next would pay for.
            server = servers.start_mosquitto(seed=seeder(size))
            try:
                kib = (server.folder / "dynamic-security.json").stat().st_size / 1024
                rates.append(asyncio.run(measure(server, mode, count)))
            finally:
                server.stop()
        print(f"{size:>14} | " + " | ".join(f"{r:>14.1f}" for r in rates) + f" | {kib:>8.0f}"
              + f"   ({count} operations each)")


if __name__ == "__main__":
    main()
