"""The fault proxy, one kind of fault at a time against a recording upstream, and the fault campaign
(``otakey campaign faults``) at its CI size: randomized sessions through the proxy against a real
agent, Mosquitto (and moto), protocol-level and emulated devices — every session converges."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from agentproc import base_env
from otakey.errors import FrameError
from otakey.harness.fault_campaign import FaultCampaignSpec, run_fault_campaign
from otakey.harness.faults import FAULT_KINDS, FaultProxy, FaultRates
from otakey.protocol.envelope import Header, seal
from otakey.protocol.framing import Channel, Frame, FrameDecoder, encode_frame
from otakey.protocol.messages import KeyKind, MsgType

DEV = bytes(range(12))
OTHER = bytes(range(100, 112))


def message(device: bytes, n: int) -> bytes:
    """A CHECKIN-shaped envelope of ``device``; ``n`` goes into nonce_d to tell copies apart."""
    header = Header(MsgType.CHECKIN, KeyKind.AK, 1, device, n.to_bytes(16, "little"))
    return seal(header, bytes(32), bytes(16), bytes(110))


class Upstream:
    """A TCP server that records every frame (and framing error) it receives and never answers."""

    def __init__(self) -> None:
        self.events: list[Frame | FrameError] = []
        self.connections = 0
        self.closed = 0
        self.port = 0
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            self.events.extend(decoder.feed(data))
            self._changed.set()
        self.closed += 1
        self._changed.set()
        writer.close()

    async def wait(self, predicate: Any, timeout: float = 3.0) -> None:
        async def until() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)

    @property
    def payloads(self) -> list[bytes]:
        return [e.payload for e in self.events if isinstance(e, Frame)]


@asynccontextmanager
async def proxied(kind: str | FaultRates, **options: Any) -> AsyncIterator[tuple[Upstream, FaultProxy, Any]]:
    async with Upstream() as up:
        rates = FaultRates.only(kind) if isinstance(kind, str) else kind
        options.setdefault("max_faults_per_session", 1)
        proxy = await FaultProxy("127.0.0.1", up.port, seed=7, rates=rates, **options).start()
        _reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            yield up, proxy, writer
        finally:
            writer.close()
            await proxy.close()


def send(writer: Any, *messages: bytes) -> None:
    for m in messages:
        writer.write(encode_frame(Channel.AGENT, m))


def test_fault_proxy_without_session_forwards_every_frame_unchanged() -> None:
    async def go() -> None:
        async with proxied("drop") as (up, proxy, w):
            msgs = [message(DEV, i) for i in range(5)]
            send(w, *msgs)
            await up.wait(lambda: len(up.payloads) == 5)
            assert up.payloads == msgs and proxy.injected == 0

    asyncio.run(go())


def test_fault_proxy_drop_loses_exactly_one_frame_of_the_session_and_logs_it() -> None:
    async def go() -> None:
        async with proxied("drop") as (up, proxy, w):
            proxy.begin_session(DEV, "s1")
            msgs = [message(DEV, i) for i in range(4)]
            send(w, *msgs, message(OTHER, 9))
            await up.wait(lambda: len(up.payloads) == 4)
            assert up.payloads == [*msgs[1:], message(OTHER, 9)]  # max one fault; OTHER has no session
            (rec,) = proxy.records
            assert (rec.kind, rec.session, rec.seed, rec.direction, rec.frame, rec.msg_type, rec.device) == \
                ("drop", "s1", 7, "up", 0, "CHECKIN", DEV.hex())

    asyncio.run(go())


def test_fault_proxy_duplicate_delivers_the_frame_twice() -> None:
    async def go() -> None:
        async with proxied("duplicate") as (up, proxy, w):
            proxy.begin_session(DEV, "s1")
            send(w, message(DEV, 1), message(DEV, 2))
            await up.wait(lambda: len(up.payloads) == 3)
            assert up.payloads == [message(DEV, 1), message(DEV, 1), message(DEV, 2)]

    asyncio.run(go())


def test_fault_proxy_reorder_sends_the_held_frame_after_the_next_one() -> None:
    async def go() -> None:
        async with proxied("reorder", reorder_hold=5.0) as (up, proxy, w):
            proxy.begin_session(DEV, "s1")
            send(w, message(DEV, 1), message(DEV, 2))
            await up.wait(lambda: len(up.payloads) == 2)
            assert up.payloads == [message(DEV, 2), message(DEV, 1)]

    asyncio.run(go())


def test_fault_proxy_reorder_without_a_next_frame_only_delays() -> None:
    async def go() -> None:
        async with proxied("reorder", reorder_hold=0.2) as (up, proxy, w):
            proxy.begin_session(DEV, "s1")
            send(w, message(DEV, 1))
            await asyncio.sleep(0.1)
            assert up.payloads == []
            await up.wait(lambda: len(up.payloads) == 1)
            assert up.payloads == [message(DEV, 1)]

    asyncio.run(go())


def test_fault_proxy_delay_holds_the_frame_and_keeps_order() -> None:
    async def go() -> None:
        async with proxied("delay", delay_range=(0.3, 0.3)) as (up, proxy, w):
            proxy.begin_session(DEV, "s1")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            send(w, message(DEV, 1), message(DEV, 2))
            await up.wait(lambda: len(up.payloads) == 2)
            assert loop.time() - t0 >= 0.29
            assert up.payloads == [message(DEV, 1), message(DEV, 2)]
            assert proxy.records[0].detail == "0.300s"

    asyncio.run(go())


def test_fault_proxy_truncate_makes_the_receivers_framing_drop_the_frame() -> None:
    async def go() -> None:
        async with proxied("truncate") as (up, proxy, w):
            proxy.begin_session(DEV, "s1")
            send(w, message(DEV, 1), message(DEV, 2))
            await up.wait(lambda: len(up.events) == 2)
            assert isinstance(up.events[0], FrameError)
            assert up.payloads == [message(DEV, 2)]

    asyncio.run(go())


def test_fault_proxy_flip_reframes_with_a_valid_crc_so_the_envelope_sees_the_damage() -> None:
    async def go() -> None:
        async with proxied("flip") as (up, proxy, w):
            proxy.begin_session(DEV, "s1")
            original = message(DEV, 1)
            send(w, original)
            await up.wait(lambda: len(up.payloads) == 1)
            (got,) = up.payloads
            assert len(got) == len(original) and got != original
            flipped = sum(bin(a ^ b).count("1") for a, b in zip(got, original, strict=True))
            assert 1 <= flipped <= 3
            assert proxy.records[0].detail.startswith("bits ")

    asyncio.run(go())


def test_fault_proxy_close_ends_both_connections_and_loses_the_frame() -> None:
    async def go() -> None:
        async with proxied("close") as (up, proxy, w):
            proxy.begin_session(DEV, "s1")
            send(w, message(DEV, 1))
            await up.wait(lambda: up.closed == 1)
            assert up.payloads == []

    asyncio.run(go())


def test_fault_proxy_clean_stops_the_faults_of_the_device() -> None:
    async def go() -> None:
        async with proxied("drop", max_faults_per_session=100) as (up, proxy, w):
            proxy.begin_session(DEV, "s1")
            send(w, message(DEV, 1))
            await asyncio.sleep(0.1)
            proxy.clean(DEV)
            send(w, message(DEV, 2), message(DEV, 3))
            await up.wait(lambda: len(up.payloads) == 2)
            assert up.payloads == [message(DEV, 2), message(DEV, 3)] and proxy.injected == 1

    asyncio.run(go())


def test_fault_proxy_same_seed_and_session_meets_the_same_faults() -> None:
    async def faults_of(label: str) -> list[tuple[str, int]]:
        rates = FaultRates(0.5, (("drop", 1.0), ("duplicate", 1.0)))
        async with proxied(rates, max_faults_per_session=50) as (up, proxy, w):
            proxy.begin_session(DEV, label)
            send(w, *(message(DEV, i) for i in range(30)))
            await up.wait(lambda: proxy.counters["frames"] == 30)
            return [(r.kind, r.frame) for r in proxy.records]

    first, again, other = (asyncio.run(faults_of(label)) for label in ("17", "17", "18"))
    assert first == again and len(first) > 3
    assert first != other


def test_fault_rates_refuse_unknown_kinds_and_bad_probabilities() -> None:
    with pytest.raises(ValueError):
        FaultRates(1.5)
    with pytest.raises(ValueError):
        FaultRates(0.2, (("explode", 1.0),))
    assert set(FAULT_KINDS) == {k for k, _ in FaultRates().weights}


def test_fault_campaign_quick_every_session_converges_with_every_kind_of_fault() -> None:
    summary = run_fault_campaign(FaultCampaignSpec(sessions=300, emulated=1, seed=11))
    detail = summary.text()
    assert summary.inconsistent == 0, detail
    assert summary.protocol.sessions == 300 and summary.emulated.sessions == 3, detail
    assert summary.converged == summary.sessions
    assert summary.faults_injected > 100, detail
    assert summary.emulated.faults_injected > 0, detail
    kinds = summary.protocol.by_kind
    assert set(FAULT_KINDS) | {"power_cut"} <= set(kinds), f"kinds never injected: {detail}"
    assert {"provision", "ak-rotate", "cloud-update", "checkin"} <= set(summary.protocol.by_flow)


def test_fault_campaign_cli_with_aws_migrates_and_reports_json() -> None:
    env = base_env()
    r = subprocess.run([sys.executable, "-m", "otakey", "campaign", "faults", "--sessions", "60",
                        "--devices", "6", "--emulated", "0", "--aws", "--seed", "3", "--json"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["inconsistent"] == 0 and out["sessions"] == 60 and out["faults_injected"] > 0
    assert out["protocol"]["flows"].get("migrate", 0) > 0 and out["aws"] is True
    assert set(out) >= {"sessions", "faults_injected", "converged", "inconsistent", "seconds", "failures"}


def test_fault_campaign_replay_runs_one_faulty_session_after_clean_history() -> None:
    spec = FaultCampaignSpec(sessions=40, devices=4, seed=5, replay=37, emulated=0)
    summary = run_fault_campaign(spec)
    assert summary.inconsistent == 0, summary.text()
    # Device 37 % 4 = 1 runs its sessions 1, 5, ..., 37: only the last one under faults.
    assert summary.protocol.sessions == 10
    assert "--replay 37" in spec.replay_command(37) and "--devices 4" in spec.replay_command(37)


def test_fault_campaign_spec_refuses_a_replay_outside_the_run() -> None:
    with pytest.raises(ValueError):
        FaultCampaignSpec(sessions=10, replay=10)


def test_fault_proxy_settle_drops_frames_still_delayed_so_none_arrives_after_the_faulty_phase() -> None:
    async def go() -> None:
        async with proxied("delay", delay_range=(0.5, 0.5)) as (up, proxy, w):
            proxy.begin_session(DEV, "s1")
            send(w, message(DEV, 1))
            await asyncio.sleep(0.1)  # the proxy holds it now
            proxy.clean(DEV)
            await proxy.settle(DEV)
            await up.wait(lambda: up.closed == 1)
            await asyncio.sleep(0.6)
            assert up.payloads == [] and proxy.injected == 1

    asyncio.run(go())
