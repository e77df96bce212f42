"""Every flow of docs/protocol.md §6 with protocol-level devices against a real agent process
(``python -m otakey agent serve``), on SQLite and on PostgreSQL, with a real Mosquitto broker: after
each cloud update the new credential connects and the old one is refused."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from agentproc import Stack, assert_converged, device_state, events, make_stack, mqtt_accepts, run
from otakey.harness.protocol_device import ProtocolDevice, mqtt_opener
from otakey.protocol.cloudsession import SessionOpen, SessionResult, SessionStatus
from otakey.protocol.envelope import is_error_message
from otakey.protocol.messages import Action
from otakey.store import AuditEvent, CredentialState


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          mosquitto: Any) -> Iterator[Stack]:
    pg = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    st = make_stack(tmp_path_factory.mktemp(f"flows-{request.param}"), request.param, mosquitto, pg)
    st.create_product("PO-1", 1000, via_cli=True)
    st.agent()
    yield st
    codes = [a.stop() for a in st.agents]
    assert codes == [0] * len(codes), st.agents[0].log[-2000:]


async def provisioned(stack: Stack, **kwargs: Any) -> ProtocolDevice:
    d = stack.device(stack.agents[0], **kwargs)
    assert (await d.provision()).ok
    results = await d.run_until_idle()
    assert results and all(r.ok for r in results) and d.cloud is not None and d.cloud.version == 1
    return d


def test_flows_full_lifecycle_keys_agree_and_old_keys_refused(stack: Stack) -> None:
    agent = stack.agents[0]

    async def go() -> tuple[ProtocolDevice, Any, Any]:
        d = stack.device(agent, fw_version=0x010203, app_hash=bytes(range(32)))
        r = await d.provision()
        assert r.ok and not d.has_pk and d.ak_version == 1
        first = await d.checkin()
        assert first.ok and first.action is Action.UPDATE_CLOUD  # first credentials after stage 2
        assert (await d.request_cloud()).ok
        cred1 = d.cloud
        old_keys = d.keystore
        assert (await d.rotate_ak()).ok and d.ak_version == 2
        ghost = ProtocolDevice(d.device_id, old_keys, port=agent.port)
        assert (await ghost.checkin()).outcome == "rejected", "the old AK is still accepted"
        assert (await d.request_cloud()).ok
        assert (await d.checkin()).action is Action.NONE
        await d.close()
        await ghost.close()
        return d, cred1, d.cloud

    d, cred1, cred2 = run(go())
    assert cred1.version == 1 and cred2.version == 2 and cred1.secret != cred2.secret
    assert mqtt_accepts(cred2)
    assert not mqtt_accepts(cred1)
    s = assert_converged(stack, d, 2, 2)
    assert events(s, AuditEvent.ROTATED) == 1 and events(s, AuditEvent.CLOUD_ACTIVATED) == 2
    ci = s["device"].last_checkin
    assert ci.fw_version == 0x010203 and ci.app_hash == bytes(range(32)) and ci.ak_version == 2
    shown = stack.cli("device", "show", d.device_id.hex())
    assert shown["last_checkin"]["firmware"] == "1.2.3" and shown["cloud"]["version"] == 2
    # Key material never reaches the log: not the PK, the KEK, an AK, or a cloud secret.
    log = agent.log
    assert stack.product is not None
    for secret in (stack.product.pk.hex(), stack.kek_hex, s["device"].ak.hex(), d.keystore.ak.hex(),
                   cred1.secret.decode(), cred2.secret.decode(), cred2.secret.hex()):
        assert secret not in log


PROV_FAULTS = [("drop", "send:PROV_HELLO"), ("dup", "send:PROV_HELLO"), ("drop", "recv:PROV_OFFER"),
               ("cut", "recv:PROV_OFFER"), ("cut", "send:PROV_CONFIRM"), ("drop", "send:PROV_CONFIRM"),
               ("dup", "send:PROV_CONFIRM"), ("drop", "recv:ACK")]


@pytest.mark.parametrize(("kind", "point"), PROV_FAULTS, ids=[f"{k}-{p}" for k, p in PROV_FAULTS])
def test_flows_provisioning_fault_converges_to_one_ak(stack: Stack, kind: str, point: str) -> None:
    async def go() -> ProtocolDevice:
        d = stack.device(stack.agents[0])
        d.faults.add(kind, point)
        first = await d.provision()
        if kind == "dup":
            assert first.ok and d.dropped, "the duplicate answer should reach the device and be dropped"
            assert any(a == b for a, b in zip(d.answers, d.answers[1:], strict=False)), \
                "a duplicate request did not get the stored answer"
        if d.has_pk:  # the device never committed: it simply provisions again
            assert (await d.provision()).ok
        # The check-in under the new AK activates it at the agent if its confirm was lost.
        assert (await d.checkin()).ok
        await d.close()
        return d

    d = run(go())
    s = assert_converged(stack, d, 1, None)
    assert events(s, AuditEvent.ISSUED) <= 2


AKROT_FAULTS = [(k, p.replace("PROV_HELLO", "AK_ROTATE_HELLO").replace("PROV_OFFER", "AK_ROTATE_OFFER")
                 .replace("PROV_CONFIRM", "AK_ROTATE_CONFIRM")) for k, p in PROV_FAULTS]


@pytest.mark.parametrize(("kind", "point"), AKROT_FAULTS, ids=[f"{k}-{p}" for k, p in AKROT_FAULTS])
def test_flows_ak_rotation_fault_converges_and_old_ak_refused(stack: Stack, kind: str, point: str) -> None:
    async def go() -> ProtocolDevice:
        d = await provisioned(stack)
        old = d.keystore
        d.faults.add(kind, point)
        first = await d.rotate_ak()
        if kind == "dup":
            assert first.ok and d.dropped
        if d.ak_version == 1:
            assert (await d.rotate_ak()).ok
        assert (await d.checkin()).ok
        ghost = ProtocolDevice(d.device_id, old, port=stack.agents[0].port)
        assert (await ghost.checkin()).outcome == "rejected"
        await ghost.close()
        await d.close()
        return d

    d = run(go())
    s = assert_converged(stack, d, 2, 1)
    assert events(s, AuditEvent.ROTATED) == 1


CLOUD_FAULTS = [("drop", "send:CLOUD_REQUEST"), ("dup", "send:CLOUD_REQUEST"), ("drop", "recv:CLOUD_UPDATE"),
                ("cut", "recv:CLOUD_UPDATE"), ("cut", "session"), ("drop", "send:CLOUD_CONFIRM"),
                ("dup", "send:CLOUD_CONFIRM"), ("drop", "recv:ACK")]


@pytest.mark.parametrize(("kind", "point"), CLOUD_FAULTS, ids=[f"{k}-{p}" for k, p in CLOUD_FAULTS])
def test_flows_cloud_update_fault_converges_new_accepted_old_refused(stack: Stack, kind: str,
                                                                     point: str) -> None:
    async def go() -> ProtocolDevice:
        d = await provisioned(stack)
        d.faults.add(kind, point)
        first = await d.request_cloud()
        if kind == "dup":
            assert first.ok and d.dropped
        r = await d.checkin()
        if d.cloud is not None and d.cloud.version == 1:
            # Lost request or update: the agent asks again when it holds a pending one.
            if point != "send:CLOUD_REQUEST":
                assert r.action is Action.UPDATE_CLOUD
            assert (await d.request_cloud()).ok
            assert (await d.checkin()).ok
        await d.close()
        return d

    d = run(go())
    s = assert_converged(stack, d, 1, 2)
    # A lost or repeated request got the same pending credential: version 2 was registered once.
    assert [c.version for c in s["all_creds"]] == [1, 2]
    assert events(s, AuditEvent.CLOUD_ISSUED) == 2


def test_flows_cloud_refused_by_broker_falls_back_and_agent_revokes_new(stack: Stack) -> None:
    async def refuse_v2(request: SessionOpen) -> SessionResult:
        if request.credential.version == 2:
            return SessionResult(request.request_id, SessionStatus.REFUSED, "test: broker refuses")
        return await mqtt_opener(request)

    async def go() -> tuple[ProtocolDevice, Any]:
        d = await provisioned(stack, opener=refuse_v2)
        cred1 = d.cloud
        assert (await d.request_cloud()).ok  # the exchange ends with CONFIRM(result 1) and its ACK
        assert d.cloud == cred1 and d.session.last_error == 5
        after = await d.checkin()
        assert after.action is Action.NONE  # a refusal is not retried in a loop
        d.opener = mqtt_opener
        assert (await d.request_cloud()).ok
        await d.close()
        return d, cred1

    d, cred1 = run(go())
    s = assert_converged(stack, d, 1, 3)
    states = {c.version: c.state for c in s["all_creds"]}
    assert states == {1: CredentialState.RETIRED, 2: CredentialState.REVOKED, 3: CredentialState.ACTIVE}
    assert events(s, AuditEvent.CLOUD_REVOKED) == 1
    assert not mqtt_accepts(cred1)


def test_flows_operator_pending_action_reaches_device_at_checkin(stack: Stack) -> None:
    async def go() -> ProtocolDevice:
        d = await provisioned(stack)
        await stack.aquery(lambda tx: tx.set_pending_action([d.device_id], Action.ROTATE_AK))
        r = await d.checkin()
        assert r.action is Action.ROTATE_AK
        assert (await d.step()).ok and d.ak_version == 2  # the firmware follows the action
        assert (await d.checkin()).action is Action.NONE
        await d.close()
        return d

    d = run(go())
    assert_converged(stack, d, 2, 1)
    assert device_state(stack, d.device_id)["device"].pending_action == Action.NONE


def test_flows_sigterm_closes_idle_sessions_and_exits_cleanly(tmp_path: Any, mosquitto: Any) -> None:
    stack = make_stack(tmp_path, "sqlite", mosquitto)
    stack.create_product("PO-1", 10)
    agent = stack.agent(name="sigterm")

    async def go() -> bytes:
        d = stack.device(agent)
        assert (await d.provision()).ok
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
        assert agent.proc is not None
        os.kill(agent.proc.pid, signal.SIGTERM)
        data = await asyncio.wait_for(reader.read(100), 5)  # the agent closes the idle session
        writer.close()
        await d.close()
        return data

    assert run(go()) == b""
    assert agent.wait_exit(10) == 0
    log = agent.new_log()
    assert "event=signal name=SIGTERM" in log and "event=stopped" in log


def test_flows_sigterm_lets_in_flight_message_finish_then_device_converges(tmp_path: Any,
                                                                          mosquitto: Any) -> None:
    """Graceful shutdown: a message being handled when SIGTERM arrives is still answered (within
    --shutdown-timeout); the session then closes, and the device converges on the next agent."""
    stack = make_stack(tmp_path, "sqlite", mosquitto)
    stack.create_product("PO-1", 10)
    agent = stack.agent("--shutdown-timeout", "5", name="draining")

    async def go() -> ProtocolDevice:
        d = stack.device(agent)
        assert (await d.provision()).ok
        os.kill(mosquitto.process.pid, signal.SIGSTOP)  # the cloud hangs: the request stays in flight
        try:
            task = asyncio.ensure_future(d.request_cloud())
            await asyncio.sleep(0.4)
            assert agent.proc is not None
            os.kill(agent.proc.pid, signal.SIGTERM)
            await asyncio.sleep(0.4)
        finally:
            os.kill(mosquitto.process.pid, signal.SIGCONT)
        r = await task
        # The UPDATE arrived and was committed; the CONFIRM found the session closed.
        assert r.outcome == "timeout" and d.cloud is not None and d.cloud.version == 1
        await d.close()
        return d

    d = run(go())
    assert agent.wait_exit(10) == 0
    log = agent.new_log()
    assert log.index("event=stopping") < log.index("type=CLOUD_REQUEST")
    again = stack.agent(name="after-drain")

    async def converge() -> None:
        d.port = again.port
        assert (await d.checkin()).ok  # its fingerprint proves the new credential
        await d.close()

    run(converge())
    assert_converged(stack, d, 1, 1)
    assert again.stop() == 0


def test_flows_device_keystore_file_survives_power_cut_and_new_process(stack: Stack) -> None:
    path = stack.tmp / f"dev-{os.urandom(4).hex()}.keystore.json"

    async def go() -> ProtocolDevice:
        d = stack.device(stack.agents[0], keystore_path=path)
        d.faults.add("cut", "send:PROV_CONFIRM")  # committed AK v1, RAM lost before the confirm
        assert (await d.provision()).outcome == "cut"
        assert not d.has_pk and d.ak_version == 1
        reborn = ProtocolDevice(d.device_id, keystore_path=path, port=stack.agents[0].port)
        assert reborn.keystore == d.keystore  # the same flash, read by a new process
        results = await reborn.run_until_idle()
        assert results and all(r.ok for r in results)
        await reborn.close()
        return reborn

    d = run(go())
    assert_converged(stack, d, 1, 1)


def test_flows_device_link_left_open_by_a_finished_event_loop_is_replaced_not_reused(stack: Stack) -> None:
    """A harness drives one device from several asyncio.run() calls; the link the first loop left
    open is dead with it, so the next exchange opens a new one instead of failing on the old."""
    d = run(provisioned(stack))  # returns with its link still open, bound to a closed loop
    assert d._writer is not None

    async def checkin_again() -> None:
        results = await d.run_until_idle()
        assert results and results[-1].ok and results[-1].action == 0
        await d.close()

    run(checkin_again())
    assert_converged(stack, d, 1, 1)


def test_flows_cloud_request_delayed_past_a_newer_update_is_refused_and_registers_nothing(
        stack: Stack) -> None:
    """A CLOUD_REQUEST the device gave up (time-out) reaches the agent after the device completed
    a newer update: the agent refuses it, registers no credential, and the device keeps v2."""

    async def go() -> tuple[ProtocolDevice, bytes | None]:
        d = await provisioned(stack)
        late = d.session.start_cloud_request()  # have_version 1, held "in the network"
        d.session.timeout()                      # the device gives it up
        assert (await d.request_cloud()).ok and d.cloud is not None and d.cloud.version == 2
        answer = await d.send_raw(late)          # the late copy arrives
        await d.close()
        return d, answer

    d, answer = run(go())
    assert answer is not None and is_error_message(answer)
    s = assert_converged(stack, d, 1, 2)
    assert s["creds"].pending is None
    assert [c.version for c in s["all_creds"]] == [1, 2]
