"""kill -9 of the agent at each step of each flow (docs/protocol.md §6), restart, and the device
converges — with one AK, one cloud credential the broker accepts, and no key issued twice (checked
in the store's audit log and credentials, and against the real Mosquitto broker).

The agent kills itself with SIGKILL at a named point (``OTAKEY_CRASH_AT``, see
``otakey.agent.service``): inside the transaction before its commit, after the commit before the
answer leaves, and between a cloud call and the store write that records it. One more test kills
it from outside while a fleet is busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agentproc import Stack, assert_converged, events, make_stack, mqtt_accepts, run
from otakey.agent.handlers import to_wire
from otakey.harness.protocol_device import ProtocolDevice, mqtt_opener
from otakey.protocol.cloudsession import SessionOpen, SessionResult, SessionStatus
from otakey.protocol.messages import Action
from otakey.store import AuditEvent, CredentialState


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mosquitto: Any) -> Iterator[Stack]:
    st = make_stack(tmp_path_factory.mktemp("crash"), "sqlite", mosquitto)
    st.create_product("PO-1", 1000)
    st.agent(name="setup")
    yield st
    st.stop_all()


async def refuse_v2(request: SessionOpen) -> SessionResult:
    """The new cloud refuses credential v2 (a misconfigured cloud), everything else is real."""
    if request.credential.version == 2:
        return SessionResult(request.request_id, SessionStatus.REFUSED, "test: refused")
    return await mqtt_opener(request)


async def prepare(stack: Stack, flow: str) -> ProtocolDevice:
    """A device at the start of ``flow``, set up through the long-running setup agent."""
    d = stack.device(stack.agents[0], opener=refuse_v2 if flow == "cloud-refused" else mqtt_opener)
    if flow == "prov":
        return d
    assert (await d.provision()).ok
    assert all(r.ok for r in await d.run_until_idle()) and d.cloud is not None
    if flow == "cloud-checkin":
        d.faults.add("drop", "send:CLOUD_CONFIRM")  # the check-in must then activate v2
        await d.request_cloud()
        assert d.cloud.version == 2
    await d.close()
    return d


async def attempt(d: ProtocolDevice, flow: str) -> None:
    """The exchange during which the agent dies."""
    if flow == "prov":
        r = await d.provision()
    elif flow == "akrot":
        r = await d.rotate_ak()
    elif flow in ("cloud", "cloud-refused"):
        r = await d.request_cloud()
    else:
        r = await d.checkin()
    assert r.outcome == "timeout", f"the agent answered although it should have died: {r}"


async def converge(d: ProtocolDevice, flow: str) -> None:
    """What the device does anyway after a failed exchange: retry, check in."""
    if flow == "prov" and d.has_pk:
        assert (await d.provision()).ok
    if flow == "akrot" and d.ak_version == 1:
        assert (await d.rotate_ak()).ok
    r = await d.checkin()
    assert r.ok
    if flow == "cloud" and d.cloud is not None and d.cloud.version == 1:
        assert (await d.request_cloud()).ok
    # The firmware's idle loop: whatever the agent still asks for (first credentials after stage
    # 2; for cloud-refused the pending v2 it dropped from the cloud before dying, which the device
    # tries, is refused again, and the agent then revokes for good), then a quiet check-in.
    results = await d.run_until_idle()
    assert results and all(x.ok for x in results) and results[-1].action is Action.NONE
    await d.close()


CASES = [
    ("prov", "before_commit:PROV_HELLO"), ("prov", "after_commit:PROV_HELLO"),
    ("prov", "before_commit:PROV_CONFIRM"), ("prov", "after_commit:PROV_CONFIRM"),
    ("akrot", "before_commit:AK_ROTATE_HELLO"), ("akrot", "after_commit:AK_ROTATE_HELLO"),
    ("akrot", "before_commit:AK_ROTATE_CONFIRM"), ("akrot", "after_commit:AK_ROTATE_CONFIRM"),
    ("cloud", "after_cloud:CLOUD_REQUEST"), ("cloud", "before_commit:CLOUD_REQUEST"),
    ("cloud", "after_commit:CLOUD_REQUEST"), ("cloud", "after_cloud:activate"),
    ("cloud", "before_commit:CLOUD_CONFIRM"), ("cloud", "after_commit:CLOUD_CONFIRM"),
    ("cloud-refused", "after_cloud:revoke"), ("cloud-refused", "after_commit:CLOUD_CONFIRM"),
    ("cloud-checkin", "after_cloud:activate"), ("cloud-checkin", "before_commit:CHECKIN"),
]
# flow → (AK version, cloud version) everyone agrees on at the end.
EXPECTED = {"prov": (1, 1), "akrot": (2, 1), "cloud": (1, 2), "cloud-refused": (1, 1),
            "cloud-checkin": (1, 2)}


@pytest.mark.parametrize(("flow", "point"), CASES, ids=[f"{f}-{p}" for f, p in CASES])
def test_agent_crash_at_point_restart_device_converges_no_key_twice(stack: Stack, flow: str,
                                                                    point: str) -> None:
    d = run(prepare(stack, flow))
    doomed = stack.agent(crash_at=point, name=f"crash-{flow}-{point.replace(':', '-')}")
    d.port = doomed.port
    run(attempt(d, flow))
    assert doomed.wait_exit(10) == -9
    assert f"event=crash_injected point={point}" in doomed.new_log()
    restarted = stack.agent(name=f"restart-{flow}-{point.replace(':', '-')}")
    d.port = restarted.port
    run(converge(d, flow))
    assert restarted.stop() == 0

    ak_version, cloud_version = EXPECTED[flow]
    s = assert_converged(stack, d, ak_version, cloud_version)
    versions = [c.version for c in s["all_creds"]]
    if flow == "prov":
        assert versions == [1]
    elif flow == "cloud-refused":
        states = {c.version: c.state for c in s["all_creds"]}
        assert states == {1: CredentialState.ACTIVE, 2: CredentialState.REVOKED}
        assert not mqtt_accepts(to_wire(s["all_creds"][1].credential))
    elif flow in ("cloud", "cloud-checkin"):
        assert versions == [1, 2], "a second credential was issued for the same update"
    if flow == "akrot":
        assert events(s, AuditEvent.ROTATED) == 1


def test_agent_crash_kill9_during_fleet_traffic_all_devices_converge(stack: Stack) -> None:
    victim = stack.agent(name="fleet-victim")
    devices = [stack.device(victim, timeout=10.0) for _ in range(12)]

    async def traffic() -> None:
        async def one(d: ProtocolDevice) -> None:
            for _ in range(6):
                await d.run_until_idle()
                if d.has_pk or d.cloud is None:
                    continue
                break

        task = asyncio.gather(*(one(d) for d in devices))
        await asyncio.sleep(0.15)
        victim.kill9()  # wherever each device happens to be
        await task

    run(traffic())
    survivor = stack.agent(name="fleet-survivor")

    async def recover() -> None:
        for d in devices:
            d.port = survivor.port
        pending = list(devices)
        for _ in range(10):  # a loaded machine may time a device out now and then: it retries
            results = await asyncio.gather(*(d.run_until_idle() for d in pending))
            pending = [d for d, r in zip(pending, results, strict=True)
                       if not (r and r[-1].ok and r[-1].action == 0 and d.cloud is not None)]
            if not pending:
                break
        for d in devices:
            await d.close()
        assert not pending, f"{len(pending)} devices did not converge"

    run(recover())
    assert survivor.stop() == 0
    for d in devices:
        s = assert_converged(stack, d, 1, 1)
        assert [c.version for c in s["all_creds"]] == [1]
