"""The agent's policies against a real agent process: each refuses with ERROR(REFUSED), an audit
entry saying why and (for leaked-PK signs) an anomaly; malformed and replayed messages get
ERROR(REJECTED) or their stored answer and leave the store byte-for-byte unchanged."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from agentproc import (
    AgentProcess,
    Stack,
    adevice_state,
    device_state,
    make_stack,
    mqtt_accepts,
    run,
    wait_for,
)
from otakey.harness.protocol_device import ProtocolDevice
from otakey.protocol.envelope import ErrorMessage, Header, pkcs7_pad, seal, seal_raw
from otakey.protocol.framing import Channel, encode_frame
from otakey.protocol.messages import Action, ErrorCode, KeyKind, MsgType
from otakey.store import AuditEvent, CredentialState


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mosquitto: Any) -> Iterator[Stack]:
    st = make_stack(tmp_path_factory.mktemp("policy"), "sqlite", mosquitto)
    st.agent("--max-activations", "3", "--activation-window", "60", name="default")
    yield st
    st.stop_all()


@pytest.fixture(scope="module")
def freezing(stack: Stack) -> AgentProcess:
    """A second agent on the same database, with --freeze-on-anomaly (and a lower rate limit)."""
    return stack.agent("--freeze-on-anomaly", "--max-activations", "2", "--activation-window", "60",
                       name="freezing")


def po_name() -> str:
    return f"PO-{os.urandom(3).hex()}"


async def refusals(stack: Stack, device_id: bytes) -> list[str]:
    state = await adevice_state(stack, device_id)
    return [e.detail for e in state["audit"] if e.event is AuditEvent.REFUSED]


def anomaly_kinds(stack: Stack, po_id: int) -> list[str]:
    return [a.kind for a in stack.query(lambda tx: tx.list_anomalies(po_id=po_id))]


def test_policy_duplicate_id_refused_with_anomaly_until_operator_reset(stack: Stack) -> None:
    pf = stack.create_product(po_name(), 10)
    agent = stack.agents[0]

    async def go() -> None:
        d = stack.device(agent, product=pf)
        assert (await d.provision()).ok
        before = (await adevice_state(stack, d.device_id))["device"]
        twin = stack.device(agent, device_id=d.device_id, product=pf)  # same ID, factory PK again
        assert (await twin.provision()).outcome == "refused"
        after = (await adevice_state(stack, d.device_id))["device"]
        assert (after.ak, after.ak_version, after.ak_pending) == (before.ak, 1, None)
        assert (await refusals(stack, d.device_id)) == ["PROV_HELLO: ID already provisioned"]
        anomalies = await stack.aquery(lambda tx: tx.list_anomalies(po_id=pf.po_id))
        assert [a.kind for a in anomalies] == ["duplicate_provisioning"]
        stack.cli("device", "reset", d.device_id.hex())
        twin2 = stack.device(agent, device_id=d.device_id, product=pf)
        assert (await twin2.provision()).ok and (await twin2.checkin()).ok
        assert (await d.checkin()).outcome == "rejected"  # the AK of before the reset is gone
        for x in (d, twin, twin2):
            await x.close()

    run(go())


def test_policy_quantity_exceeded_refused_with_anomaly(stack: Stack) -> None:
    pf = stack.create_product(po_name(), 2)

    async def go() -> list[str]:
        devs = [stack.device(stack.agents[0], product=pf) for _ in range(3)]
        outcomes = [(await d.provision()).outcome for d in devs]
        for d in devs:
            await d.close()
        assert (await refusals(stack, devs[2].device_id)) == ["PROV_HELLO: PO quantity 2 reached"]
        assert (await adevice_state(stack, devs[2].device_id))["device"] is None
        return outcomes

    assert run(go()) == ["done", "done", "refused"]
    assert anomaly_kinds(stack, pf.po_id) == ["quantity_exceeded"]
    assert stack.cli("product", "show", pf.po_name)["frozen"] is False


def test_policy_id_outside_allow_list_refused_with_anomaly(stack: Stack) -> None:
    allowed = [os.urandom(12) for _ in range(2)]
    pf = stack.create_product(po_name(), 10, allow_list=allowed, via_cli=True)

    async def go() -> list[str]:
        devs = [stack.device(stack.agents[0], device_id=i, product=pf) for i in (*allowed, os.urandom(12))]
        outcomes = [(await d.provision()).outcome for d in devs]
        for d in devs:
            await d.close()
        assert (await refusals(stack, devs[2].device_id)) == ["PROV_HELLO: ID not in the PO's allow-list"]
        return outcomes

    assert run(go()) == ["done", "done", "refused"]
    assert anomaly_kinds(stack, pf.po_id) == ["not_allowed"]


def test_policy_frozen_po_refuses_provisioning_keeps_provisioned_devices(stack: Stack) -> None:
    pf = stack.create_product(po_name(), 10)

    async def go() -> None:
        old = stack.device(stack.agents[0], product=pf)
        assert (await old.provision()).ok
        assert stack.cli("product", "freeze", pf.po_name)["frozen"] is True
        new = stack.device(stack.agents[0], product=pf)
        assert (await new.provision()).outcome == "refused"
        assert (await refusals(stack, new.device_id)) == ["PROV_HELLO: PO frozen"]
        assert (await old.checkin()).ok  # a frozen PK does not touch devices that have an AK
        stack.cli("product", "unfreeze", pf.po_name)
        assert (await new.provision()).ok
        for x in (old, new):
            await x.close()

    run(go())


def test_policy_revoked_device_refused_and_its_cloud_credential_disabled(stack: Stack) -> None:
    pf = stack.create_product(po_name(), 10)

    async def setup() -> ProtocolDevice:
        d = stack.device(stack.agents[0], product=pf)
        assert (await d.provision()).ok and all(r.ok for r in await d.run_until_idle())
        await d.close()
        return d

    d = run(setup())
    assert d.cloud is not None and mqtt_accepts(d.cloud)
    assert stack.cli("device", "revoke", d.device_id.hex())["state"] == "revoked"

    async def after() -> None:
        twin = ProtocolDevice(d.device_id, d.keystore, port=stack.agents[0].port)
        assert (await twin.rotate_ak()).outcome == "refused"
        r = await d.checkin()
        assert r.outcome == "revoked" and r.action is Action.REVOKED and d.revoked
        await d.close()
        await twin.close()

    run(after())
    assert run(refusals(stack, d.device_id)) == ["AK_ROTATE_HELLO: device revoked"]
    # The reconciler pushes the revocation to the broker.
    assert wait_for(lambda: device_state(stack, d.device_id)["all_creds"][0].state is CredentialState.REVOKED)
    assert not mqtt_accepts(d.cloud)


def test_policy_revoked_po_refuses_its_pk_and_revokes_its_devices(stack: Stack) -> None:
    pf = stack.create_product(po_name(), 10)

    async def go() -> None:
        old = stack.device(stack.agents[0], product=pf)
        assert (await old.provision()).ok
        out = stack.cli("product", "revoke", pf.po_name)
        assert out["revoked"] is True and out["devices_revoked"] == 1
        new = stack.device(stack.agents[0], product=pf)
        assert (await new.provision()).outcome == "refused"
        assert (await refusals(stack, new.device_id)) == ["PROV_HELLO: PO revoked"]
        assert (await old.checkin()).outcome == "revoked"
        for x in (old, new):
            await x.close()

    run(go())


def test_policy_activation_rate_raises_one_anomaly_per_window(stack: Stack) -> None:
    pf = stack.create_product(po_name(), 10)

    async def go() -> list[str]:
        devs = [stack.device(stack.agents[0], product=pf) for _ in range(5)]
        outcomes = [(await d.provision()).outcome for d in devs]
        for d in devs:
            await d.close()
        return outcomes

    assert run(go()) == ["done"] * 5  # without --freeze-on-anomaly the rate only raises an anomaly
    assert anomaly_kinds(stack, pf.po_id) == ["activation_rate"]


def test_policy_freeze_on_anomaly_freezes_po_after_allow_list_breach(stack: Stack,
                                                                     freezing: AgentProcess) -> None:
    good = os.urandom(12)
    pf = stack.create_product(po_name(), 10, allow_list=[good])

    async def go() -> list[str]:
        intruder = stack.device(freezing, product=pf)
        legit = stack.device(freezing, device_id=good, product=pf)
        outcomes = [(await intruder.provision()).outcome, (await legit.provision()).outcome]
        for d in (intruder, legit):
            await d.close()
        assert (await refusals(stack, good)) == ["PROV_HELLO: PO frozen"]
        return outcomes

    assert run(go()) == ["refused", "refused"]
    assert stack.cli("product", "show", pf.po_name)["frozen"] is True
    assert anomaly_kinds(stack, pf.po_id) == ["not_allowed"]


def test_policy_freeze_on_anomaly_activation_rate_refuses_and_freezes(stack: Stack,
                                                                      freezing: AgentProcess) -> None:
    pf = stack.create_product(po_name(), 10)

    async def go() -> list[str]:
        devs = [stack.device(freezing, product=pf) for _ in range(3)]
        outcomes = [(await d.provision()).outcome for d in devs]
        for d in devs:
            await d.close()
        return outcomes

    assert run(go()) == ["done", "done", "refused"]
    assert anomaly_kinds(stack, pf.po_id) == ["activation_rate"]
    assert stack.cli("product", "show", pf.po_name)["frozen"] is True


def test_policy_source_rate_limit_answers_retry_and_stores_nothing(stack: Stack) -> None:
    limited = stack.agent("--source-rate", "0.5", "--source-burst", "3", name="limited")
    pf = stack.create_product(po_name(), 10)

    async def go() -> list[str]:
        d = stack.device(limited, product=pf)
        outcomes = [(await d.provision()).outcome]  # HELLO + CONFIRM: 2 tokens
        outcomes += [(await d.checkin()).outcome for _ in range(3)]
        await d.close()
        return outcomes

    outcomes = run(go())
    assert outcomes == ["done", "done", "retry", "retry"]
    assert limited.stop() == 0
    assert "event=rate_limited" in limited.log


def _error_code(answer: bytes | None) -> int:
    assert answer is not None and len(answer) == 53, "expected an ERROR message"
    return ErrorMessage.unpack(answer).code


def test_policy_malformed_messages_rejected_and_store_unchanged(stack: Stack) -> None:
    pf = stack.create_product(po_name(), 10)
    agent = stack.agents[0]

    async def setup() -> ProtocolDevice:
        d = stack.device(agent, product=pf)
        assert (await d.provision()).ok
        await d.close()  # a connection belongs to one event loop
        return d

    d = run(setup())
    ak, ak_version, dev_id = d.keystore.ak, d.keystore.ak_version, d.device_id
    assert ak is not None and ak_version is not None
    hello = ProtocolDevice.from_product(pf, os.urandom(12)).session.start_provisioning()
    nonce = os.urandom(16)

    def h(msg_type: int, kind: int = KeyKind.AK, ref: int = ak_version, nonce_a: bytes = bytes(16),
          device: bytes = dev_id) -> Header:
        return Header(msg_type, kind, ref, device, nonce, nonce_a)

    flipped = bytearray(hello)
    flipped[80] ^= 1
    bad_reserved = bytearray(h(MsgType.CHECKIN).pack())
    bad_reserved[3] = 1
    cases = {
        "truncated": hello[:100],
        "garbage": os.urandom(len(hello)),
        "bad_mac": bytes(flipped),
        "wrong_pk": seal(h(MsgType.PROV_HELLO, KeyKind.PK, pf.po_id, device=os.urandom(12)), os.urandom(32),
                         os.urandom(16), os.urandom(32)),
        "unknown_po": seal(h(MsgType.PROV_HELLO, KeyKind.PK, 0xDEAD), pf.pk, os.urandom(16), os.urandom(32)),
        "unknown_device": seal(h(MsgType.CHECKIN, device=os.urandom(12)), ak, os.urandom(16), bytes(110)),
        "agent_to_device_type": seal(h(MsgType.CHECKIN_REPLY), ak, os.urandom(16), bytes(4)),
        "pk_kind_for_checkin": seal_raw(replace(h(MsgType.CHECKIN), key_kind=KeyKind.PK).pack(), pf.pk,
                                        os.urandom(16), pkcs7_pad(bytes(110))),
        "reserved_set": seal_raw(bytes(bad_reserved), ak, os.urandom(16), pkcs7_pad(bytes(110))),
        "bad_padding": seal_raw(h(MsgType.CHECKIN).pack(), ak, os.urandom(16), bytes(112) + bytes([0] * 16)),
        "body_length": seal(h(MsgType.CHECKIN), ak, os.urandom(16), bytes(109)),
        "low_order_point": seal(h(MsgType.AK_ROTATE_HELLO), ak, os.urandom(16), bytes(32)),
        "nonce_a_on_first": seal(h(MsgType.CHECKIN, nonce_a=os.urandom(16)), ak, os.urandom(16), bytes(110)),
        "confirm_foreign_nonces": seal(h(MsgType.AK_ROTATE_CONFIRM, nonce_a=os.urandom(16)), ak,
                                       os.urandom(16), b""),
        "old_ak_version": seal(h(MsgType.CHECKIN, ref=ak_version + 7), ak, os.urandom(16), bytes(110)),
    }
    before = stack.snapshot()

    async def attack() -> dict[str, int]:
        codes = {}
        await d.connect()
        for name, message in cases.items():
            codes[name] = _error_code(await d.send_raw(message))
        # Frames the agent cannot use are dropped without an answer; the link keeps working.
        assert d._writer is not None
        d._writer.write(b"\x00\x07garbage\x00" + encode_frame(Channel.CONSOLE, b"hello\n"))
        await d._writer.drain()
        codes["after_garbage"] = _error_code(await d.send_raw(hello[:100]))
        await d.close()
        return codes

    codes = run(attack())
    assert codes == dict.fromkeys([*cases, "after_garbage"], ErrorCode.REJECTED)
    assert stack.snapshot() == before, "a rejected message changed the store"


def test_policy_replayed_messages_get_stored_answers_and_store_unchanged(stack: Stack) -> None:
    pf = stack.create_product(po_name(), 10)

    async def setup() -> ProtocolDevice:
        d = stack.device(stack.agents[0], product=pf)
        assert (await d.provision()).ok and all(r.ok for r in await d.run_until_idle())
        assert (await d.rotate_ak()).ok
        await d.close()
        return d

    d = run(setup())
    sent, answers = list(d.sent), list(d.answers)
    assert len(sent) == len(answers) >= 7
    before = stack.snapshot()

    async def replay() -> list[bytes | None]:
        attacker = stack.device(stack.agents[0], product=pf)
        out = []
        for message in sent:
            out.append(await attacker.send_raw(message))
        await attacker.close()
        return out

    replies = run(replay())
    assert replies == answers, "a replayed request did not get its stored answer"
    assert stack.snapshot() == before, "a replayed message changed the store"
    assert device_state(stack, d.device_id)["device"].ak_version == 2


def test_policy_cloud_down_answers_retry_and_stores_nothing(stack: Stack) -> None:
    broker = stack.mosquitto
    impatient = stack.agent(name="impatient", clouds=[stack.cloud_urls[0] + "?timeout=1"])
    pf = stack.create_product(po_name(), 10)

    async def go() -> ProtocolDevice:
        d = stack.device(impatient, product=pf)
        assert (await d.provision()).ok
        before = await adevice_state(stack, d.device_id)
        os.kill(broker.process.pid, signal.SIGSTOP)  # the cloud does not answer
        try:
            r = await d.request_cloud()
        finally:
            os.kill(broker.process.pid, signal.SIGCONT)
        assert r.outcome == "retry" and d.cloud is None
        after = await adevice_state(stack, d.device_id)
        assert after["all_creds"] == [] and after["audit"] == before["audit"]
        assert (await d.request_cloud()).ok and d.cloud is not None  # the cloud is back
        await d.close()
        return d

    d = run(go())
    assert d.cloud is not None and mqtt_accepts(d.cloud)
    assert impatient.stop() == 0
    assert "event=retry" in impatient.log
