"""Mosquitto over several brokers (otakey.cloud.mosquitto_shards) against two real brokers: a
device lives on the broker its ID picks, its credentials name that broker, and a credential is
always handled where it was registered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

import servers
from otakey.agent.cloudurl import parse_cloud_url
from otakey.cloud.base import Activation
from otakey.cloud.mosquitto import try_connect
from otakey.cloud.mosquitto_shards import ShardedMosquittoAdapter


@pytest.fixture
def brokers() -> Iterator[list[servers.MosquittoServer]]:
    started: list[servers.MosquittoServer] = []
    try:
        for _ in range(2):
            started.append(servers.start_mosquitto())
    except servers.ServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield started
    for b in started:
        b.stop()


def _url(b: list[servers.MosquittoServer]) -> str:
    first, second = b
    return (f"mosquitto://{first.admin_username}:{first.admin_password}@127.0.0.1:{first.port}"
            f"?shards={second.admin_username}:{second.admin_password}@127.0.0.1:{second.port}")


def _clients(b: servers.MosquittoServer) -> set[str]:
    config = json.loads((b.folder / "dynamic-security.json").read_text())
    return {c["username"] for c in config["clients"] if c["username"] != "admin"}


def _accepts(cred: Any) -> bool:
    _, hostport = cred.endpoint.split("://")
    host, port = hostport.split(":")
    reason = try_connect(host, int(port), cred.client_id, cred.username, cred.secret.decode(), 5.0)
    return reason is not None and not reason.is_failure


def test_shards_url_builds_one_adapter_per_broker_and_hides_passwords(
        brokers: list[servers.MosquittoServer]) -> None:
    spec = parse_cloud_url(_url(brokers))
    adapter = spec.build()
    assert isinstance(adapter, ShardedMosquittoAdapter)
    assert [a.device_endpoint for a in adapter.shards] == [f"mqtt://127.0.0.1:{b.port}" for b in brokers]
    assert brokers[0].admin_password not in spec.display and brokers[1].admin_password not in spec.display
    with pytest.raises(ValueError, match="shard"):
        parse_cloud_url("mosquitto://a:b@127.0.0.1:1?shards=nohost")


def test_shards_spread_devices_and_rotate_each_on_its_own_broker(
        brokers: list[servers.MosquittoServer]) -> None:
    ids = [bytes([i]) * 12 for i in range(1, 13)]

    async def main() -> dict[bytes, Any]:
        adapter = parse_cloud_url(_url(brokers)).build()
        assert isinstance(adapter, ShardedMosquittoAdapter)
        async with adapter:
            v1 = await adapter.register_many([(d, 1) for d in ids])
            assert not any(isinstance(c, Exception) for c in v1)
            for d, c in zip(ids, v1, strict=True):
                home = adapter.shard_of(d)
                assert c.endpoint == home.device_endpoint       # the credential names its broker
                assert adapter.shard_of(d) is home              # and the choice is stable
            results = await adapter.activate_many([Activation(d, c) for d, c in zip(ids, v1, strict=True)])
            assert results == [None] * len(ids)
            v2 = {d: await adapter.register_pending(d, 2) for d in ids}
            for d, c in zip(ids, v1, strict=True):
                await adapter.activate(d, v2[d], c)
            return {"v1": dict(zip(ids, v1, strict=True)), "v2": v2}

    got = asyncio.run(main())
    on_first, on_second = _clients(brokers[0]), _clients(brokers[1])
    # Both brokers got devices, each device's v2 lives on exactly one broker, v1 is gone everywhere.
    assert on_first and on_second and not on_first & on_second
    assert on_first | on_second == {c.username for c in got["v2"].values()}
    some = ids[0]
    assert _accepts(got["v2"][some]) and not _accepts(got["v1"][some])


def test_shards_activation_on_another_broker_removes_the_device_from_the_old_one(
        brokers: list[servers.MosquittoServer]) -> None:
    """The shard list changed: the old credential lives on the other broker; activating the new
    one there moves the device (as a migration would)."""
    device = b"\x42" * 12

    async def main() -> tuple[str, str]:
        adapter = parse_cloud_url(_url(brokers)).build()
        assert isinstance(adapter, ShardedMosquittoAdapter)
        async with adapter:
            home = adapter.shard_of(device)
            other = next(a for a in adapter.shards if a is not home)
            old = await other.register_pending(device, 1)     # as if placed by an earlier layout
            await other.activate(device, old)
            new = await adapter.register_pending(device, 2)
            await adapter.activate(device, new, old)
            return old.username, new.username

    old_name, new_name = asyncio.run(main())
    everywhere = _clients(brokers[0]) | _clients(brokers[1])
    assert new_name in everywhere and old_name not in everywhere


def test_shards_unknown_endpoint_is_an_adapter_error(brokers: list[servers.MosquittoServer]) -> None:
    from otakey.cloud.base import CloudCredential
    from otakey.errors import AdapterError

    stray = CloudCredential(version=1, platform="mosquitto", endpoint="mqtt://127.0.0.1:1", client_id="x",
                            username="x.v1", secret=b"s")

    async def main() -> None:
        adapter = parse_cloud_url(_url(brokers)).build()
        assert isinstance(adapter, ShardedMosquittoAdapter)
        async with adapter:
            with pytest.raises(AdapterError, match="no configured Mosquitto shard"):
                await adapter.revoke_pending(b"\x01" * 12, stray)

    asyncio.run(main())
