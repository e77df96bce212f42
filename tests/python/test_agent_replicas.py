"""Two agent processes on one PostgreSQL database serve one fleet: devices switch replica between
exchanges, and the same request sent to both replicas at the same moment gets one answer — never
two keys (row locks and the exchange table, see otakey.store.base)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agentproc import (
    AgentProcess,
    Stack,
    adevice_state,
    assert_converged,
    events,
    make_stack,
    mqtt_accepts,
    raw_roundtrip,
    run,
)
from otakey.harness.protocol_device import ProtocolDevice
from otakey.store import AuditEvent


@pytest.fixture
def stack(tmp_path: Any, mosquitto: Any, postgres: Any) -> Iterator[Stack]:
    st = make_stack(tmp_path, "postgresql", mosquitto, postgres)
    st.create_product("PO-R", 100)
    st.agent(name="replica-a")
    st.agent(name="replica-b")
    yield st
    codes = [a.stop() for a in st.agents]
    assert codes == [0] * len(codes)


async def on(d: ProtocolDevice, agent: AgentProcess) -> ProtocolDevice:
    await d.close()
    d.port = agent.port
    return d


def test_agent_replicas_fleet_alternating_replicas_converges(stack: Stack) -> None:
    a, b = stack.agents

    async def lifecycle(d: ProtocolDevice) -> None:
        assert (await (await on(d, a)).provision()).ok
        assert (await (await on(d, b)).checkin()).ok
        assert (await (await on(d, a)).request_cloud()).ok
        assert (await (await on(d, b)).rotate_ak()).ok
        assert (await (await on(d, a)).request_cloud()).ok
        assert (await (await on(d, b)).checkin()).ok
        await d.close()

    devices = [stack.device(a) for _ in range(16)]

    async def go() -> None:
        await asyncio.gather(*(lifecycle(d) for d in devices))

    run(go())
    for d in devices:
        s = assert_converged(stack, d, 2, 2)
        assert [c.version for c in s["all_creds"]] == [1, 2]
    assert "type=PROV_HELLO" in a.log and "type=AK_ROTATE_HELLO" in b.log


def test_agent_replicas_same_request_to_both_at_once_one_answer_one_key(stack: Stack) -> None:
    a, b = stack.agents

    async def both(message: bytes) -> bytes:
        answers = await asyncio.gather(raw_roundtrip(a.port, message), raw_roundtrip(b.port, message))
        assert answers[0] == answers[1], "two replicas gave two different answers to one request"
        return answers[0]

    async def go() -> ProtocolDevice:
        d = stack.device(b)
        offer = await both(d.session.start_provisioning())
        assert (await d.resume(offer)).ok and not d.has_pk
        s = await adevice_state(stack, d.device_id)
        assert events(s, AuditEvent.ISSUED) == 1
        update = await both(d.session.start_cloud_request())
        assert (await d.resume(update)).ok
        s = await adevice_state(stack, d.device_id)
        assert [c.version for c in s["all_creds"]] == [1]
        assert events(s, AuditEvent.CLOUD_ISSUED) == 1
        await d.close()
        return d

    d = run(go())
    assert d.cloud is not None and mqtt_accepts(d.cloud)
    assert_converged(stack, d, 1, 1)
