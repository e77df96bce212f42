"""The Mosquitto dynamic-security adapter against a real broker; devices log in with paho."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest

from otakey.cloud import ADAPTERS, Activation, CloudCredential, MosquittoAdapter, make_adapter
from otakey.cloud.mosquitto import try_connect
from otakey.errors import AdapterError
from servers import MosquittoServer

T = TypeVar("T")


def adapter_for(broker: MosquittoServer, password: str | None = None) -> MosquittoAdapter:
    return MosquittoAdapter(broker.url, broker.admin_username,
                            broker.admin_password if password is None else password, timeout=5.0)


def with_adapter(broker: MosquittoServer, body: Callable[[MosquittoAdapter], Awaitable[T]]) -> T:
    async def main() -> T:
        async with adapter_for(broker) as adapter:
            return await body(adapter)   # type: ignore[arg-type]

    return asyncio.run(main())


def accepted(broker: MosquittoServer, cred: CloudCredential) -> bool:
    """Log in as the device would, with exactly this credential."""
    reason = try_connect("127.0.0.1", broker.port, cred.client_id, cred.username, cred.secret.decode())
    assert reason is not None, "the broker did not answer"
    return not reason.is_failure


def new_device() -> bytes:
    return os.urandom(12)


async def provision(adapter: MosquittoAdapter, device_id: bytes) -> CloudCredential:
    first = await adapter.register_pending(device_id, 1)
    await adapter.activate(device_id, first, None)
    return first


def test_missing_mosquitto_fails_the_fixture_with_the_setup_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import conftest
    import servers

    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    monkeypatch.setattr(servers.os.path, "exists", lambda path: False)
    with pytest.raises(servers.ServerMissing, match=r"scripts/setup\.sh"):
        servers.start_mosquitto()
    with pytest.raises(pytest.fail.Exception, match=r"scripts/setup\.sh"):   # a failure, not a skip
        next(conftest._serve(servers.start_mosquitto))


def test_mosquitto_adapter_is_registered() -> None:
    assert ADAPTERS["mosquitto"] is MosquittoAdapter
    assert isinstance(make_adapter("mosquitto", url="mqtt://127.0.0.1:1"), MosquittoAdapter)
    with pytest.raises(ValueError):
        make_adapter("nope")


def test_mosquitto_window_accepts_old_and_new_then_activation_keeps_only_new(
        mosquitto: MosquittoServer) -> None:
    dev = new_device()

    async def body(adapter: MosquittoAdapter) -> None:
        old = await provision(adapter, dev)
        assert old.client_id == dev.hex() and old.endpoint == mosquitto.url and old.platform == "mosquitto"
        assert accepted(mosquitto, old)
        new = await adapter.register_pending(dev, 2)
        assert new.username != old.username and new.secret != old.secret and new.client_id == old.client_id
        assert accepted(mosquitto, old) and accepted(mosquitto, new)        # the window: both work
        await adapter.activate(dev, new, old)
        assert accepted(mosquitto, new)
        assert not accepted(mosquitto, old)
        await adapter.activate(dev, new, old)                                # a retry changes nothing
        assert accepted(mosquitto, new)
        assert await adapter.check(new) and not await adapter.check(old)

    with_adapter(mosquitto, body)


def test_mosquitto_revoke_pending_keeps_the_old_credential(mosquitto: MosquittoServer) -> None:
    dev = new_device()

    async def body(adapter: MosquittoAdapter) -> None:
        old = await provision(adapter, dev)
        new = await adapter.register_pending(dev, 2)
        await adapter.revoke_pending(dev, new)
        await adapter.revoke_pending(dev, new)                               # idempotent
        assert accepted(mosquitto, old)
        assert not accepted(mosquitto, new)

    with_adapter(mosquitto, body)


def test_mosquitto_register_retry_for_same_version_leaves_one_valid_password(
        mosquitto: MosquittoServer) -> None:
    dev = new_device()

    async def body(adapter: MosquittoAdapter) -> None:
        lost = await adapter.register_pending(dev, 1)       # the agent crashed before storing it
        kept = await adapter.register_pending(dev, 1)
        assert kept.username == lost.username and kept.secret != lost.secret
        assert accepted(mosquitto, kept)
        assert not accepted(mosquitto, lost)

    with_adapter(mosquitto, body)


def test_mosquitto_disable_refuses_current_and_pending(mosquitto: MosquittoServer) -> None:
    dev = new_device()

    async def body(adapter: MosquittoAdapter) -> None:
        old = await provision(adapter, dev)
        new = await adapter.register_pending(dev, 2)
        await adapter.disable(dev, [old, new])
        await adapter.disable(dev, [old, new])                               # idempotent
        assert not accepted(mosquitto, old)
        assert not accepted(mosquitto, new)

    with_adapter(mosquitto, body)


def test_mosquitto_activating_a_vanished_credential_fails_and_keeps_the_old(
        mosquitto: MosquittoServer) -> None:
    dev = new_device()

    async def body(adapter: MosquittoAdapter) -> None:
        old = await provision(adapter, dev)
        new = await adapter.register_pending(dev, 2)
        await adapter.control([{"command": "deleteClient", "username": new.username}])   # lost on the broker
        with pytest.raises(AdapterError, match="Client not found"):
            await adapter.activate(dev, new, old)
        assert accepted(mosquitto, old)

    with_adapter(mosquitto, body)


def test_mosquitto_remove_deletes_the_clients_and_the_role(mosquitto: MosquittoServer) -> None:
    dev = new_device()

    async def body(adapter: MosquittoAdapter) -> None:
        old = await provision(adapter, dev)
        await adapter.remove(dev, [old])
        await adapter.remove(dev, [old])                                     # idempotent
        assert not accepted(mosquitto, old)
        r = await adapter.control([{"command": "getRole", "rolename": f"device-{dev.hex()}"},
                                   {"command": "getClient", "username": old.username}])
        assert [x.get("error") for x in r] == ["Role not found", "Client not found"]

    with_adapter(mosquitto, body)


def test_mosquitto_admin_with_a_wrong_password_cannot_start(mosquitto: MosquittoServer) -> None:
    async def main() -> None:
        with pytest.raises(AdapterError, match="refused"):
            await adapter_for(mosquitto, password="wrong").start()

    asyncio.run(main())


class DeviceSession:
    """A device's MQTT v5 session, to see what its role lets it do."""

    def __init__(self, broker: MosquittoServer, cred: CloudCredential) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._acks: dict[int, Any] = {}
        self._done = threading.Condition()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cred.client_id, protocol=mqtt.MQTTv5)
        c.username_pw_set(cred.username, cred.secret.decode())
        c.on_message = lambda cl, ud, m: self.messages.put((m.topic, m.payload))
        c.on_subscribe = lambda cl, ud, mid, reasons, props: self._ack(mid, reasons)
        c.on_publish = lambda cl, ud, mid, reason, props: self._ack(mid, reason)
        connected = threading.Event()
        c.on_connect = lambda cl, ud, flags, reason, props: connected.set()
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        assert connected.wait(5)
        self.client = c

    def _ack(self, mid: int, value: Any) -> None:
        with self._done:
            self._acks[mid] = value
            self._done.notify_all()

    def _wait(self, mid: int) -> Any:
        with self._done:
            assert self._done.wait_for(lambda: mid in self._acks, 5)
            return self._acks.pop(mid)

    def subscribe(self, topic: str) -> bool:
        _, mid = self.client.subscribe(topic, qos=1)
        return not self._wait(mid)[0].is_failure

    def publish(self, topic: str, payload: bytes) -> bool:
        info = self.client.publish(topic, payload, qos=1)
        return not self._wait(info.mid).is_failure

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mosquitto_role_allows_only_the_devices_own_topic_tree(mosquitto: MosquittoServer) -> None:
    a_id, b_id = new_device(), new_device()

    async def body(adapter: MosquittoAdapter) -> tuple[CloudCredential, CloudCredential]:
        return await provision(adapter, a_id), await provision(adapter, b_id)

    a_cred, b_cred = with_adapter(mosquitto, body)
    a, b = DeviceSession(mosquitto, a_cred), DeviceSession(mosquitto, b_cred)
    try:
        assert a.subscribe(f"devices/{a_id.hex()}/#")
        assert a.subscribe(f"devices/{a_id.hex()}/cmd/+")
        assert not a.subscribe(f"devices/{b_id.hex()}/#")
        assert not a.subscribe("#")
        assert not a.subscribe("devices/+/cmd")
        # B may not write into A's tree; A may. A's own message arriving proves B's was handled
        # (and dropped) first: B had its PUBACK before A published.
        assert not b.publish(f"devices/{a_id.hex()}/cmd", b"from b")
        assert not a.publish(f"devices/{b_id.hex()}/cmd", b"from a")
        assert not a.publish("elsewhere", b"from a")
        assert a.publish(f"devices/{a_id.hex()}/cmd", b"own")
        assert a.messages.get(timeout=5) == (f"devices/{a_id.hex()}/cmd", b"own")
        assert a.messages.empty()
    finally:
        a.close()
        b.close()


def test_mosquitto_batch_of_100_devices_registers_and_activates(mosquitto: MosquittoServer) -> None:
    devices = [new_device() for _ in range(100)]

    async def body(adapter: MosquittoAdapter) -> tuple[list[Any], list[Any], list[Any]]:
        first = await adapter.register_many([(d, 1) for d in devices])
        assert all(isinstance(c, CloudCredential) for c in first)
        r1 = await adapter.activate_many([Activation(d, c) for d, c in zip(devices, first, strict=True)])
        second = await adapter.register_many([(d, 2) for d in devices])
        r2 = await adapter.activate_many([Activation(d, n, o)
                                          for d, n, o in zip(devices, second, first, strict=True)])
        assert r1 == [None] * 100 and r2 == [None] * 100
        got = await adapter.control([{"command": "getClient", "username": c.username}
                                     for c in first + second])
        assert [g.get("error") for g in got] == ["Client not found"] * 100 + [None] * 100
        return devices, first, second

    _, first, second = with_adapter(mosquitto, body)
    for i in (0, 37, 99):
        assert accepted(mosquitto, second[i]) and not accepted(mosquitto, first[i])


def test_mosquitto_two_agent_replicas_get_their_own_answers(mosquitto: MosquittoServer) -> None:
    devices = [new_device() for _ in range(20)]

    async def main() -> None:
        async with adapter_for(mosquitto) as a, adapter_for(mosquitto) as b:
            # Both replicas subscribe to the one response topic; correlation keeps answers apart.
            results = await asyncio.gather(*(
                (a if i % 2 else b).register_pending(d, 1) for i, d in enumerate(devices)))
            assert [c.client_id for c in results] == [d.hex() for d in devices]
            checks = await a.control([{"command": "getClient", "username": c.username} for c in results])
            assert all("error" not in c for c in checks)

    asyncio.run(main())
