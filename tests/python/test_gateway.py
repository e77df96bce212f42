"""The gateway against real peers: the real agent (in this process, or in a child process when it
must crash), a real Mosquitto with dynamic security, a moto server for AWS IoT, an emulated chip's
USART1, a TCP server in Renode's place, and pyserial's ``loop://`` port.

The device end is the Python reference device (:class:`DeviceSession`) speaking protocol §1 frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest

import servers
from otakey.agent import Agent, AgentConfig
from otakey.cloud import AwsIotAdapter, MosquittoAdapter
from otakey.cloud import CloudCredential as AdapterCredential
from otakey.gateway import (
    AgentLinkState,
    CloudSessions,
    EmulatorUartTransport,
    Gateway,
    InProcessTransport,
    SerialTransport,
    TcpTransport,
    TransportError,
    transport_from_url,
)
from otakey.gateway.mqtt_session import AwsControlPlane, policy_allows, split_pem_secret
from otakey.protocol import (
    Channel,
    CloudCredential,
    DeviceSession,
    DeviceState,
    FrameDecoder,
    KeystoreState,
    Platform,
    SessionOpen,
    SessionResult,
    SessionStatus,
    decode_session_message,
    encode_frame,
)
from otakey.protocol.framing import Frame, cobs_encode, crc32
from otakey.store import Kek, Product, make_store

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
PO_ID, PO_NAME = 41, "PO-GATEWAY"
AWS_LOGIN = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- the device end


class DeviceEnd:
    """The device's side of an in-process link: decodes what the gateway sends to the device."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.queues: dict[int, asyncio.Queue[bytes]] = {int(c): asyncio.Queue() for c in Channel}
        self.transport = InProcessTransport(to_device=self._receive)

    def _receive(self, data: bytes) -> None:
        for event in self.decoder.feed(data):
            assert isinstance(event, Frame), f"the gateway sent a bad frame: {event}"
            self.queues[event.channel].put_nowait(event.payload)

    async def next(self, channel: Channel, timeout: float = 10.0) -> bytes:
        return await asyncio.wait_for(self.queues[channel].get(), timeout)

    def send(self, channel: Channel, payload: bytes) -> None:
        self.transport.feed(encode_frame(channel, payload))


async def drive(end: DeviceEnd, device: DeviceSession, first: bytes) -> None:
    """Run one exchange of the reference device through the gateway, cloud session included."""
    message: bytes | None = first
    while message is not None:
        end.send(Channel.AGENT, message)
        out = device.receive(await end.next(Channel.AGENT))
        assert out.dropped is None, out.dropped
        if out.session is not None:
            end.send(Channel.CLOUD, out.session.encode())
            result = decode_session_message(await end.next(Channel.CLOUD))
            assert isinstance(result, SessionResult)
            out = device.session_result(result)
        message = out.send


def new_device(pk: bytes) -> DeviceSession:
    return DeviceSession(os.urandom(12), KeystoreState(generation=1, po_id=PO_ID, po_name=PO_NAME, pk=pk))


# --------------------------------------------------------------------------------------------- the real agent


@dataclass
class AgentSetup:
    db: str
    kek: bytes
    pk: bytes


@pytest.fixture
def agent_setup(tmp_path: Path) -> AgentSetup:
    """An agent database holding one product order."""
    setup = AgentSetup(str(tmp_path / "agent.db"), os.urandom(32), os.urandom(32))

    async def seed() -> None:
        store = make_store(setup.db, Kek(setup.kek))
        await store.open()
        try:
            async with store.transaction() as tx:
                await tx.add_product(Product(po_id=PO_ID, name=PO_NAME, quantity=100, pk=setup.pk))
        finally:
            await store.close()

    run(seed())
    return setup


@contextlib.asynccontextmanager
async def running_agent(setup: AgentSetup, cloud_urls: tuple[str, ...] = ()) -> AsyncIterator[Agent]:
    config = AgentConfig(db_url=setup.db, cloud_urls=cloud_urls, reconcile_interval=60.0)
    agent = Agent(config, Kek(setup.kek))
    ready = asyncio.Event()
    task = asyncio.create_task(agent.run(lambda host, port: ready.set()))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiter.cancel()
        await task  # raises what kept the agent from starting
        raise AssertionError("the agent did not start")
    try:
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 20)


_CHILD_AGENT = r"""
import asyncio, json, sys
from otakey.agent import Agent, AgentConfig
from otakey.store import Kek
a = json.loads(sys.argv[1])
agent = Agent(AgentConfig(db_url=a["db"], listen_port=a["port"], crash_at=a["crash_at"],
                          reconcile_interval=60.0), Kek(bytes.fromhex(a["kek"])))
asyncio.run(agent.run(lambda host, port: print("READY", port, flush=True)))
"""


def spawn_agent(setup: AgentSetup, port: int, log: Path,
                crash_at: str | None = None) -> subprocess.Popen[str]:
    """The real agent in a child process, so that its injected crash (SIGKILL) kills only it."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "agent"))
    args = json.dumps({"db": setup.db, "port": port, "crash_at": crash_at, "kek": setup.kek.hex()})
    with open(log, "a") as err:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD_AGENT, args], stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("READY"):
            return proc
    proc.wait(5)
    raise AssertionError(f"the agent did not start: {log.read_text()}")


# --------------------------------------------------------------------------------------------- clouds


def mosquitto_credential(broker: servers.MosquittoServer) -> tuple[CloudCredential, bytes]:
    """A device registered and activated through the real dynsec adapter."""
    device_id = os.urandom(12)

    async def register() -> AdapterCredential:
        async with MosquittoAdapter(broker.url, broker.admin_username, broker.admin_password,
                                    timeout=5.0) as adapter:
            cred = await adapter.register_pending(device_id, 1)
            await adapter.activate(device_id, cred, None)
            return cred

    return to_wire(run(register())), device_id


def to_wire(c: AdapterCredential) -> CloudCredential:
    return CloudCredential(c.version, c.platform_code, c.endpoint, c.client_id, c.username, c.secret)


class Subscriber:
    """A second MQTT client (the dynsec admin may read every topic) that collects messages."""

    def __init__(self, broker: servers.MosquittoServer, topic: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        subscribed: queue.Queue[bool] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{os.urandom(4).hex()}")
        self.client.username_pw_set(broker.admin_username, broker.admin_password)
        self.client.on_connect = lambda c, u, f, reason, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, reasons, p: subscribed.put(
            not any(r.is_failure for r in reasons))
        self.client.on_message = lambda c, u, msg: self.messages.put((msg.topic, msg.payload))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert subscribed.get(timeout=5), "the subscription was refused"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def open_session(request: SessionOpen | bytes, sessions: CloudSessions | None = None,
                       ) -> tuple[SessionResult, Gateway]:
    """One SESSION_OPEN through a gateway with no agent; returns the device's SESSION_RESULT."""
    end = DeviceEnd()
    async with Gateway(end.transport, sessions=sessions) as gw:
        end.send(Channel.CLOUD, request.encode() if isinstance(request, SessionOpen) else request)
        result = decode_session_message(await end.next(Channel.CLOUD, timeout=20))
        assert isinstance(result, SessionResult)
        return result, gw


# --------------------------------------------------------------------------------------------- AGENT channel


def test_gateway_carries_agent_frames_both_ways_so_a_device_provisions_through_the_real_agent(
        agent_setup: AgentSetup) -> None:
    async def body() -> None:
        async with running_agent(agent_setup) as agent:
            end = DeviceEnd()
            device = new_device(agent_setup.pk)
            async with Gateway(end.transport, agent_port=agent.port) as gw:
                await drive(end, device, device.start_next())   # HELLO → OFFER, CONFIRM → ACK
                await gw.settled()
                c = gw.counters
                assert (c.frames_to_agent, c.frames_from_agent, c.frames_to_device) == (2, 2, 2)
                assert c.bad_frames == 0 and c.agent_frames_lost == 0 and gw.in_flight == 0
                assert gw.agent_state is AgentLinkState.CONNECTED and c.agent_connects == 1
        assert device.state is DeviceState.IDLE
        assert device.keystore is not None and device.keystore.ak_version == 1 and device.keystore.pk is None

    run(body())


def test_gateway_garbage_between_frames_is_counted_and_the_next_frame_still_reaches_the_agent(
        agent_setup: AgentSetup) -> None:
    def frame_of(content: bytes) -> bytes:
        return cobs_encode(content) + b"\x00"

    bad_crc = bytearray(encode_frame(Channel.CONSOLE, b"x\n"))
    bad_crc[2] ^= 0x01
    unknown_channel = frame_of(b"\x07ab" + crc32(b"\x07ab").to_bytes(4, "little"))
    garbage = (b"\x00\xff\xfe\xfd\x00"          # a code byte promising 254 bytes: bad COBS
               + bytes(bad_crc)                 # bad CRC
               + b"\x02\x09\x00"                # one byte of content: too short
               + unknown_channel                # channel 7
               + b"\x55" * 5000 + b"\x00")      # longer than any frame

    async def body() -> None:
        async with running_agent(agent_setup) as agent:
            end = DeviceEnd()
            device = new_device(agent_setup.pk)
            async with Gateway(end.transport, agent_port=agent.port) as gw:
                hello = encode_frame(Channel.AGENT, device.start_next())
                # Garbage and the HELLO in one write, the HELLO split over two reads.
                end.transport.feed(garbage + hello[:7])
                end.transport.feed(hello[7:])
                out = device.receive(await end.next(Channel.AGENT))
                assert out.send is not None
                end.send(Channel.AGENT, out.send)
                assert device.receive(await end.next(Channel.AGENT)).done
                assert gw.counters.bad_frames == 5
                assert gw.counters.bad_frame_reasons == Counter(
                    {"frame_bad_cobs": 1, "frame_bad_crc": 1, "frame_too_short": 1, "frame_bad_channel": 1,
                     "frame_too_long": 1})
                assert gw.counters.frames_to_agent == 2 and gw.console_lines == []
        assert device.keystore is not None and device.keystore.ak_version == 1

    run(body())


def test_gateway_loses_the_frame_in_flight_when_the_agent_crashes_then_reconnects_and_the_retry_provisions(
        agent_setup: AgentSetup, tmp_path: Path) -> None:
    port = servers.free_port()
    log = tmp_path / "agent.log"

    async def body() -> None:
        first = spawn_agent(agent_setup, port, log, crash_at="before_commit:PROV_HELLO")
        second: subprocess.Popen[str] | None = None
        try:
            end = DeviceEnd()
            device = new_device(agent_setup.pk)
            async with Gateway(end.transport, agent_port=port, hold_for=30.0, reconnect_max=0.2) as gw:
                await gw.wait_for(lambda: gw.agent_state is AgentLinkState.CONNECTED)
                end.send(Channel.AGENT, device.start_next())
                # The agent kills itself before answering: the HELLO in flight is lost.
                await gw.wait_for(lambda: gw.counters.agent_frames_lost == 1)
                assert await asyncio.to_thread(first.wait, 10) != 0
                assert gw.agent_state is not AgentLinkState.CONNECTED
                # The device times out and retries while the agent is still down: the gateway
                # holds the new HELLO until the agent is back.
                device.timeout()
                end.send(Channel.AGENT, device.start_next())
                await asyncio.sleep(0)
                assert gw.counters.frames_to_agent == 1
                second = await asyncio.to_thread(spawn_agent, agent_setup, port, log)
                out = device.receive(await end.next(Channel.AGENT, timeout=20))
                assert out.send is not None
                end.send(Channel.AGENT, out.send)
                assert device.receive(await end.next(Channel.AGENT)).done
                assert gw.counters.agent_connects == 2 and gw.counters.agent_connect_failures >= 1
                assert gw.counters.agent_frames_lost == 1 and gw.counters.frames_to_agent == 3
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(10)
                if proc is not None and proc.stdout is not None:
                    proc.stdout.close()
        assert device.keystore is not None and device.keystore.ak_version == 1

    run(body())


def test_gateway_without_an_agent_counts_agent_frames_as_lost() -> None:
    async def body() -> None:
        end = DeviceEnd()
        async with Gateway(end.transport) as gw:
            gw.feed_from_device(encode_frame(Channel.AGENT, b"\x01" * 116))
            assert gw.counters.agent_frames_lost == 1 and gw.counters.frames_to_agent == 0
            assert gw.agent_state is AgentLinkState.IDLE

    run(body())


def test_gateway_full_cloud_flow_device_tests_the_agents_credential_on_real_mosquitto_then_confirms(
        agent_setup: AgentSetup, mosquitto: servers.MosquittoServer) -> None:
    cloud = f"mosquitto://{mosquitto.admin_username}:{mosquitto.admin_password}@127.0.0.1:{mosquitto.port}"

    async def body() -> None:
        async with running_agent(agent_setup, (cloud,)) as agent:
            end = DeviceEnd()
            device = new_device(agent_setup.pk)
            topic = f"devices/{device.device_id.hex()}/#"
            sub = await asyncio.to_thread(Subscriber, mosquitto, topic)
            try:
                async with Gateway(end.transport, agent_port=agent.port) as gw:
                    await drive(end, device, device.start_next())   # provisioning
                    await drive(end, device, device.start_next())   # first cloud credential, tested
                    assert gw.counters.sessions_ok == 1 and gw.counters.sessions == 1
                    record = gw.session_records[0]
                    assert record.status is SessionStatus.CONNECTED and record.platform == Platform.MOSQUITTO
                got_topic, payload = await asyncio.to_thread(sub.messages.get, True, 5)
            finally:
                sub.close()
        ks = device.keystore
        assert ks is not None and ks.cloud is not None and ks.cloud.version == 1
        assert device.last_error == 0 and device.state is DeviceState.IDLE
        assert got_topic == f"devices/{device.device_id.hex()}/status" and payload == b"online"

    run(body())


# --------------------------------------------------------------------------------------------- CLOUD channel


def test_session_open_with_a_mosquitto_credential_connects_publishes_and_a_subscriber_gets_it(
        mosquitto: servers.MosquittoServer) -> None:
    cred, device_id = mosquitto_credential(mosquitto)
    topic = f"devices/{device_id.hex()}/status"
    sub = Subscriber(mosquitto, f"devices/{device_id.hex()}/#")
    try:
        result, gw = run(open_session(SessionOpen(7, cred, topic, b"hello from the device")))
        assert (result.request_id, result.status) == (7, SessionStatus.CONNECTED)
        assert sub.messages.get(timeout=5) == (topic, b"hello from the device")
    finally:
        sub.close()
    assert gw.counters.sessions_ok == 1 and gw.counters.frames_to_device == 1


def test_session_open_with_a_wrong_password_is_refused(mosquitto: servers.MosquittoServer) -> None:
    cred, device_id = mosquitto_credential(mosquitto)
    wrong = CloudCredential(cred.version, cred.platform, cred.endpoint, cred.client_id, cred.username,
                            cred.secret + b"x")
    result, gw = run(open_session(SessionOpen(8, wrong, f"devices/{device_id.hex()}/status", b"x")))
    assert (result.request_id, result.status) == (8, SessionStatus.REFUSED)
    assert "Not authorized" in result.detail or "password" in result.detail
    assert gw.counters.sessions_refused == 1


def test_session_open_publishing_outside_the_devices_topic_tree_is_refused(
        mosquitto: servers.MosquittoServer) -> None:
    cred, _ = mosquitto_credential(mosquitto)
    result, _ = run(open_session(SessionOpen(9, cred, "devices/someone-else/status", b"x")))
    assert result.status == SessionStatus.REFUSED and "PUBACK" in result.detail


def test_session_open_to_a_closed_port_is_unreachable(mosquitto: servers.MosquittoServer) -> None:
    cred, device_id = mosquitto_credential(mosquitto)
    closed = CloudCredential(cred.version, cred.platform, f"mqtt://127.0.0.1:{servers.free_port()}",
                             cred.client_id, cred.username, cred.secret)
    result, gw = run(open_session(SessionOpen(10, closed, f"devices/{device_id.hex()}/status", b"x")))
    assert (result.request_id, result.status) == (10, SessionStatus.UNREACHABLE)
    assert gw.counters.sessions_unreachable == 1


def test_session_open_to_a_silent_broker_is_unreachable_within_the_timeout() -> None:
    async def body() -> tuple[SessionResult, float]:
        # Accepts TCP and never answers CONNECT.
        accepted: list[asyncio.StreamWriter] = []
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cred = CloudCredential(1, Platform.MOSQUITTO, f"mqtt://127.0.0.1:{port}", "c", "u", b"p")
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with server:
            result, _ = await open_session(SessionOpen(11, cred, "devices/c/status", b"x"),
                                           CloudSessions(timeout=0.5))
            for writer in accepted:
                writer.close()
        return result, loop.time() - start

    result, took = run(body())
    assert result.status == SessionStatus.UNREACHABLE and "CONNACK" in result.detail
    assert took < 5


def test_malformed_session_open_is_answered_with_status_3_and_the_request_id() -> None:
    good = SessionOpen(12, CloudCredential(1, Platform.MOSQUITTO, "mqtt://127.0.0.1:1", "c", "u", b"p"),
                       "devices/c/status", b"x").encode()

    async def body() -> None:
        end = DeviceEnd()
        async with Gateway(end.transport) as gw:
            for payload, request_id in ((good[:-1], 12),           # truncated payload field
                                        (good + b"\x00", 12),      # trailing byte
                                        (b"\x01", 0),              # no request id at all
                                        (b"\x09\x05", 0)):         # unknown type
                end.send(Channel.CLOUD, payload)
                result = decode_session_message(await end.next(Channel.CLOUD))
                assert isinstance(result, SessionResult)
                assert (result.request_id, result.status) == (request_id, SessionStatus.MALFORMED)
            # A well-formed request whose endpoint is not an MQTT URL is malformed too.
            bad_endpoint = SessionOpen(13, CloudCredential(1, Platform.MOSQUITTO, "http://x", "c", "u", b"p"),
                                       "t", b"x")
            end.send(Channel.CLOUD, bad_endpoint.encode())
            result = decode_session_message(await end.next(Channel.CLOUD))
            assert isinstance(result, SessionResult)
            assert (result.request_id, result.status) == (13, SessionStatus.MALFORMED)
            # A SESSION_RESULT from the device is not a request: counted, not answered.
            end.send(Channel.CLOUD, SessionResult(1, 0).encode())
            await gw.wait_for(lambda: gw.counters.cloud_unexpected == 1)
            await gw.settled()
            assert end.queues[Channel.CLOUD].empty()
            assert gw.counters.sessions_malformed == 5 and gw.counters.frames_to_device == 5

    run(body())


def test_session_opener_that_raises_becomes_unreachable_and_the_gateway_goes_on() -> None:
    async def broken(request: SessionOpen) -> SessionResult:
        raise RuntimeError("boom")

    cred = CloudCredential(1, Platform.MOSQUITTO, "mqtt://127.0.0.1:1", "c", "u", b"p")
    result, gw = run(open_session(SessionOpen(14, cred, "t", b"x"), broken))  # type: ignore[arg-type]
    assert (result.request_id, result.status) == (14, SessionStatus.UNREACHABLE)
    assert "RuntimeError" in result.detail and gw.counters.sessions_unreachable == 1


# ------------------------------------------------------------------------------------------ AWS IoT stand-in


def aws_adapter(moto: servers.MotoServer, data_endpoint: str | None) -> AwsIotAdapter:
    return AwsIotAdapter(endpoint_url=moto.url, data_endpoint=data_endpoint, **AWS_LOGIN)


def with_aws(moto: servers.MotoServer, data_endpoint: str | None,
             body: Callable[[AwsIotAdapter], Awaitable[T]]) -> T:
    async def main() -> T:
        async with aws_adapter(moto, data_endpoint) as adapter:
            return await body(adapter)

    return run(main())


def test_aws_session_accepts_an_active_certificate_with_the_device_policy_and_refuses_it_once_revoked(
        moto_server: servers.MotoServer) -> None:
    endpoint = f"aws-iot://127.0.0.1:{moto_server.port}?region=us-east-1"
    device_id = os.urandom(12)

    async def body(adapter: AwsIotAdapter) -> list[SessionResult]:
        cred = await adapter.register_pending(device_id, 1)
        await adapter.activate(device_id, cred, None)
        wire = to_wire(cred)
        assert wire.endpoint == endpoint and wire.platform == Platform.AWS_IOT
        topic = f"devices/{device_id.hex()}/status"
        results = [(await open_session(SessionOpen(1, wire, topic, b"x")))[0],
                   (await open_session(SessionOpen(2, wire, "devices/another/status", b"x")))[0]]
        await adapter.disable(device_id)   # every certificate REVOKED
        results.append((await open_session(SessionOpen(3, wire, topic, b"x")))[0])
        return results

    ok, other_topic, revoked = with_aws(moto_server, endpoint, body)
    assert ok.status == SessionStatus.CONNECTED, ok.detail
    assert other_topic.status == SessionStatus.REFUSED and "publishing" in other_topic.detail
    assert revoked.status == SessionStatus.REFUSED and "REVOKED" in revoked.detail


def test_aws_session_with_the_gateways_control_plane_serves_an_mqtts_endpoint_and_refuses_unknown_certs(
        moto_server: servers.MotoServer) -> None:
    device_id = os.urandom(12)
    sessions = CloudSessions(aws_control=f"aws-iot://127.0.0.1:{moto_server.port}?region=us-east-1")

    async def body(adapter: AwsIotAdapter) -> tuple[str, SessionResult, SessionResult, SessionResult]:
        cred = await adapter.register_pending(device_id, 1)
        wire = to_wire(cred)
        topic = f"devices/{device_id.hex()}/status"
        ok = (await open_session(SessionOpen(1, wire, topic, b"x"), sessions))[0]
        # Another certificate than the one registered: same shape, unknown to the cloud.
        other = await adapter.register_pending(os.urandom(12), 1)
        cert, _ = split_pem_secret(other.secret)
        _, key = split_pem_secret(cred.secret)
        await adapter.remove(bytes.fromhex(other.client_id))
        forged = CloudCredential(1, Platform.AWS_IOT, wire.endpoint, wire.client_id, "",
                                 (cert + key).encode())
        unknown = (await open_session(SessionOpen(2, forged, topic, b"x"), sessions))[0]
        garbage = CloudCredential(1, Platform.AWS_IOT, wire.endpoint, wire.client_id, "", b"not a pem")
        no_cert = (await open_session(SessionOpen(3, garbage, topic, b"x"), sessions))[0]
        return wire.endpoint, ok, unknown, no_cert

    endpoint, ok, unknown, no_cert = with_aws(moto_server, None, body)
    assert endpoint.startswith("mqtts://")
    assert ok.status == SessionStatus.CONNECTED, ok.detail
    assert unknown.status == SessionStatus.REFUSED and unknown.detail == "unknown certificate"
    assert no_cert.status == SessionStatus.REFUSED


def test_aws_session_with_a_control_plane_nobody_serves_is_unreachable() -> None:
    port = servers.free_port()
    cred = CloudCredential(1, Platform.AWS_IOT, f"aws-iot://127.0.0.1:{port}?region=us-east-1", "c", "",
                           b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"
                           b"-----BEGIN RSA PRIVATE KEY-----\nAA==\n-----END RSA PRIVATE KEY-----\n")
    result, _ = run(open_session(SessionOpen(4, cred, "devices/c/status", b"x"), CloudSessions(timeout=2.0)))
    assert result.status == SessionStatus.UNREACHABLE


def test_aws_control_plane_url_parsing_follows_the_agents_cloud_url() -> None:
    local = AwsControlPlane.from_url("aws-iot://127.0.0.1:5000?region=eu-west-1")
    assert (local.endpoint_url, local.region) == ("http://127.0.0.1:5000", "eu-west-1")
    assert local.access_key_id is None
    remote = AwsControlPlane.from_url("aws-iot://AK:S%2F@iot.example.com?region=us-east-1")
    assert remote.endpoint_url == "https://iot.example.com"
    assert (remote.access_key_id, remote.secret_access_key) == ("AK", "S/")
    for bad in ("aws-iot://127.0.0.1:5000", "mqtt://127.0.0.1:5000?region=x", "aws-iot://h?region=r&tls=2"):
        with pytest.raises(ValueError):
            AwsControlPlane.from_url(bad)


def test_aws_policy_evaluation_needs_an_allow_and_a_deny_wins() -> None:
    arn = "arn:aws:iot:us-east-1:123456789012"
    allow = json.dumps({"Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/${{iot:ClientId}}"},
        {"Effect": "Allow", "Action": ["iot:Publish"], "Resource": f"{arn}:topic/devices/dev1/*"}]})
    deny = json.dumps({"Statement": {"Effect": "Deny", "Action": "iot:*",
                                     "Resource": f"{arn}:topic/devices/dev1/secret"}})
    assert policy_allows([allow], "iot:Connect", f"{arn}:client/dev1", "dev1")
    assert not policy_allows([allow], "iot:Connect", f"{arn}:client/dev2", "dev2x")
    assert policy_allows([allow, deny], "iot:Publish", f"{arn}:topic/devices/dev1/status", "dev1")
    assert not policy_allows([allow, deny], "iot:Publish", f"{arn}:topic/devices/dev1/secret", "dev1")
    assert not policy_allows([allow], "iot:Publish", f"{arn}:topic/devices/dev2/status", "dev1")
    assert not policy_allows(["not json"], "iot:Connect", f"{arn}:client/dev1", "dev1")


# --------------------------------------------------------------------------------------------- console


def test_console_frames_become_lines_through_callback_and_list_even_split_across_frames() -> None:
    seen: list[str] = []

    async def body() -> Gateway:
        end = DeviceEnd()
        async with Gateway(end.transport, on_console=seen.append) as gw:
            end.send(Channel.CONSOLE, b"OTA-Key boot fw 1.0.0\n")
            end.send(Channel.CONSOLE, b"event: prov")
            end.send(Channel.CONSOLE, b"isioned\r\nbad \xff utf8\n")
            await gw.wait_for(lambda: gw.counters.console_lines == 3)
            return gw

    gw = run(body())
    assert seen == gw.console_lines == ["OTA-Key boot fw 1.0.0", "event: provisioned", "bad \ufffd utf8"]


# --------------------------------------------------------------------------------------------- transports


def test_emulator_uart_transport_carries_frames_through_a_real_emulated_usart1(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    from emu_programs.harness import monitor_chip, program
    from otakey.emu import StopReason

    monitor = monitor_chip(program(tmp_path_factory, "monitor").elf, name="gw-dut")
    chip, uart = monitor.chip, monitor.uart
    uart.write(b"Y\n")   # the monitor now echoes every byte until 0x04
    assert chip.run(max_instructions=5_000_000).reason is StopReason.IDLE

    async def body() -> Gateway:
        transport = EmulatorUartTransport(uart)
        async with Gateway(transport) as gw:
            # The chip transmits a console frame (it echoes what the host put on its RX line)...
            banner = encode_frame(Channel.CONSOLE, b"hello from USART1\n")
            uart.write(banner)
            chip.run(max_instructions=5_000_000)
            await gw.wait_for(lambda: gw.console_lines == ["hello from USART1"])
            # ...and a malformed SESSION_OPEN, which the gateway answers into the chip's RX queue.
            uart.write(encode_frame(Channel.CLOUD, b"\x01\x2a"))
            chip.run(max_instructions=5_000_000)
            await gw.wait_for(lambda: gw.counters.frames_to_device == 1)
            # The chip echoes the SESSION_RESULT back: the gateway reads it as an unexpected message.
            chip.run(max_instructions=5_000_000)
            assert transport.pump() > 0
            await gw.wait_for(lambda: gw.counters.cloud_unexpected == 1)
            assert gw.counters.sessions_malformed == 1 and gw.counters.bad_frames == 0
            return gw

    gw = run(body())
    assert gw.session_records[0].request_id == 0x2A


def test_tcp_transport_reaches_a_socket_terminal_that_starts_late_and_carries_provisioning(
        agent_setup: AgentSetup) -> None:
    """A TCP server in the place of Renode's ``CreateServerSocketTerminal``: the device end."""
    port = servers.free_port()

    async def body() -> Gateway:
        async with running_agent(agent_setup) as agent:
            device = new_device(agent_setup.pk)
            connected: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
            gw = Gateway(TcpTransport("127.0.0.1", port, connect_timeout=10), agent_port=agent.port)
            starting = asyncio.create_task(gw.start())
            await asyncio.sleep(0.3)    # the gateway is already retrying when the "emulator" starts
            assert not starting.done()
            server = await asyncio.start_server(lambda r, w: connected.put_nowait((r, w)), "127.0.0.1", port)
            try:
                await asyncio.wait_for(starting, 10)
                reader, writer = await asyncio.wait_for(connected.get(), 5)
                decoder = FrameDecoder()

                async def frame() -> Frame:
                    while True:
                        frames = [f for f in decoder.feed(await reader.read(4096)) if isinstance(f, Frame)]
                        if frames:
                            assert len(frames) == 1
                            return frames[0]

                writer.write(b"\x00" + encode_frame(Channel.CONSOLE, b"OTA-Key boot\n"))
                message: bytes | None = device.start_next()
                while message is not None:
                    writer.write(encode_frame(Channel.AGENT, message))
                    answer = await asyncio.wait_for(frame(), 10)
                    assert answer.channel == Channel.AGENT
                    message = device.receive(answer.payload).send
                await gw.wait_for(lambda: gw.console_lines == ["OTA-Key boot"])
                # The terminal goes away: the gateway's device link ends and run() would return.
                writer.close()
                await gw.wait_for(lambda: gw.device_link_ended)
            finally:
                await gw.close()
                server.close()
                await server.wait_closed()
        assert device.keystore is not None and device.keystore.ak_version == 1
        return gw

    gw = run(body())
    assert gw.counters.frames_to_agent == 2 and gw.counters.frames_to_device == 2


def test_tcp_transport_to_nothing_fails_with_a_clear_error_after_its_timeout() -> None:
    async def body() -> None:
        with pytest.raises(TransportError, match="nothing accepts connections"):
            await TcpTransport("127.0.0.1", servers.free_port(), connect_timeout=0.3).open()

    run(body())


def test_serial_transport_opens_loop_url_as_115200_8n1_and_the_gateway_reads_and_writes_through_it() -> None:
    import serial  # type: ignore[import-untyped]

    async def body() -> Gateway:
        transport = SerialTransport("loop://", baudrate=115200)
        async with Gateway(transport) as gw:
            port = transport.serial
            assert isinstance(port, serial.SerialBase) and port.is_open
            assert (port.port, port.baudrate, port.bytesize, port.parity, port.stopbits) == (
                "loop://", 115200, serial.EIGHTBITS, serial.PARITY_NONE, serial.STOPBITS_ONE)
            # loop:// returns what is written: the test writes as the device would...
            port.write(encode_frame(Channel.CONSOLE, b"board up\n")
                       + encode_frame(Channel.CLOUD, b"\x01\x05"))
            await gw.wait_for(lambda: gw.console_lines == ["board up"]
                              and gw.counters.sessions_malformed == 1)
            # ...and the gateway's SESSION_RESULT, written to the port, comes back to the gateway.
            await gw.wait_for(lambda: gw.counters.cloud_unexpected == 1)
            assert gw.counters.frames_to_device == 1 and gw.counters.bad_frames == 0
        assert transport.serial is None
        return gw

    gw = run(body())
    assert gw.device_link_ended


def test_serial_transport_without_pyserial_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "serial", None)   # makes `import serial` fail

    async def body() -> None:
        with pytest.raises(TransportError, match="pip install pyserial"):
            await SerialTransport("loop://").open()

    run(body())


def test_serial_transport_to_a_missing_device_raises_transport_error() -> None:
    async def body() -> None:
        with pytest.raises(TransportError, match="/dev/otakey-no-such-tty"):
            await SerialTransport("/dev/otakey-no-such-tty").open()

    run(body())


def test_transport_from_url_picks_tcp_for_tcp_urls_and_serial_otherwise() -> None:
    tcp = transport_from_url("tcp://127.0.0.1:3456")
    assert isinstance(tcp, TcpTransport) and (tcp.host, tcp.port) == ("127.0.0.1", 3456)
    ser = transport_from_url("/dev/ttyACM0", baudrate=9600)
    assert isinstance(ser, SerialTransport) and (ser.url, ser.baudrate) == ("/dev/ttyACM0", 9600)
    with pytest.raises(ValueError):
        transport_from_url("tcp://nohost")


def test_in_process_transport_end_stops_the_gateway_run() -> None:
    async def body() -> Any:
        end = DeviceEnd()
        gw = Gateway(end.transport)
        task = asyncio.create_task(gw.run())
        await asyncio.sleep(0.05)
        end.transport.end()
        await asyncio.wait_for(task, 5)
        return gw

    gw = run(body())
    assert gw.device_link_ended


# ------------------------------------------------------------------------------------ TLS client certificate


def _cert(subject: str, key: Any, issuer: tuple[Any, Any] | None, ca: bool = False,
          ip: str | None = None) -> Any:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip is not None:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: Any, key: Any) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization

    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()))


@pytest.fixture(scope="module")
def tls_broker() -> Any:
    """Mosquitto with a TLS listener that requires a client certificate from its CA — what AWS IoT's
    data plane does, so the gateway's real (non stand-in) AWS session is tested end to end."""
    import shutil
    import tempfile

    from cryptography.hazmat.primitives.asymmetric import ec

    tmp = tempfile.TemporaryDirectory(prefix="otakey-gw-tls-")
    folder = Path(tmp.name)
    # The broker drops to the `mosquitto` user when started as root: it must read these files
    # (pytest's own temporary folders are private to root).
    folder.chmod(0o755)
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("otakey test CA", ca_key, None, ca=True)
    srv = _cert("127.0.0.1", srv_key, (ca, ca_key), ip="127.0.0.1")
    for name, data in (("ca.pem", _pem(ca, ca_key)[0]), ("server.pem", _pem(srv, srv_key)[0]),
                       ("server.key", _pem(srv, srv_key)[1])):
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o644)
    port = servers.free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"per_listener_settings false\nlistener {port} 127.0.0.1\nallow_anonymous false\n"
                    f"cafile {folder / 'ca.pem'}\ncertfile {folder / 'server.pem'}\n"
                    f"keyfile {folder / 'server.key'}\nrequire_certificate true\n"
                    "use_identity_as_username true\npersistence false\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        servers._wait_for_port(port, proc, 10.0, None)
        yield {"port": port, "ca_file": str(folder / "ca.pem"), "ca": (ca, ca_key)}
    finally:
        proc.terminate()
        proc.wait(5)
        tmp.cleanup()


def test_aws_session_without_a_stand_in_is_a_real_tls_client_certificate_session(tls_broker: Any) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    def credential(issuer: tuple[Any, Any] | None) -> CloudCredential:
        key = ec.generate_private_key(ec.SECP256R1())
        cert_pem, key_pem = _pem(_cert("dev1", key, issuer), key)
        return CloudCredential(1, Platform.AWS_IOT, f"mqtts://127.0.0.1:{tls_broker['port']}", "dev1", "",
                               cert_pem + key_pem)

    sessions = CloudSessions(timeout=5.0, ca_file=tls_broker["ca_file"])
    trusted, _ = run(open_session(SessionOpen(1, credential(tls_broker["ca"]), "devices/dev1/status", b"x"),
                                  sessions))
    stranger, _ = run(open_session(SessionOpen(2, credential(None), "devices/dev1/status", b"x"), sessions))
    # Without the test CA the gateway cannot trust the broker: no session, the credential not judged.
    untrusted, _ = run(open_session(SessionOpen(3, credential(tls_broker["ca"]), "devices/dev1/status", b"x"),
                                    CloudSessions(timeout=5.0)))
    assert trusted.status == SessionStatus.CONNECTED, trusted.detail
    assert stranger.status == SessionStatus.REFUSED and "client certificate" in stranger.detail
    assert untrusted.status == SessionStatus.UNREACHABLE and "not trusted" in untrusted.detail
