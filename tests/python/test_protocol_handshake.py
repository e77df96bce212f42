"""Every flow of protocol §3/§4/§6 between DeviceSession and the ReferenceAgent: completion,
duplicates, replays, losses and retries, and the forward secrecy of the AK derivation."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otakey.errors import EnvelopeError
from otakey.protocol import envelope as env
from otakey.protocol.cloudsession import SessionResult, SessionStatus
from otakey.protocol.handshake import (
    DeviceSession,
    DeviceState,
    LastError,
    ReferenceAgent,
    ScriptedRng,
)
from otakey.protocol.keystore import KeystoreState
from otakey.protocol.messages import Action, ErrorCode, Hello, MsgType, Offer

PK = bytes(range(100, 132))
PO_ID = 42
PO_NAME = "PO-42"
DEV1 = bytes.fromhex("a1a2a3a4a5a6a7a8a9aaabac")
DEV2 = bytes.fromhex("b1b2b3b4b5b6b7b8b9babbbc")


def make_agent(seed: bytes = b"agent", quantity: int | None = None) -> ReferenceAgent:
    agent = ReferenceAgent(rng=ScriptedRng(fallback_seed=seed))
    agent.add_order(PO_ID, PO_NAME, PK, quantity)
    return agent


def make_device(device_id: bytes = DEV1, seed: bytes = b"device") -> DeviceSession:
    return DeviceSession(device_id, KeystoreState(1, PO_ID, PO_NAME, pk=PK), ScriptedRng(fallback_seed=seed))


def run_exchange(device: DeviceSession, agent: ReferenceAgent, first: bytes) -> list[bytes]:
    """Deliver every message both ways until the device is done; returns all messages."""
    trace = [first]
    msg = first
    while True:
        answer = agent.handle(msg)
        trace.append(answer)
        out = device.receive(answer)
        assert out.dropped is None, out.dropped
        if out.session is not None:
            out = device.session_result(SessionResult(out.session.request_id, SessionStatus.CONNECTED))
        if out.send is None:
            return trace
        trace.append(out.send)
        msg = out.send


def provisioned(device_id: bytes = DEV1) -> tuple[DeviceSession, ReferenceAgent]:
    device, agent = make_device(device_id), make_agent()
    run_exchange(device, agent, device.start_provisioning())
    return device, agent


def agent_state(agent: ReferenceAgent) -> object:
    return copy.deepcopy((agent.devices, agent.exchanges, agent.anomalies, agent.events))


def device_state(device: DeviceSession) -> object:
    return copy.deepcopy({k: v for k, v in vars(device).items() if k != "rng"})


def error_code(answer: bytes) -> int:
    return env.ErrorMessage.unpack(answer).code


# --- every flow completes -------------------------------------------------------------------


def test_provisioning_completes_with_ak_v1_and_no_pk_on_device():
    device, agent = provisioned()
    ks = device.keystore
    assert ks is not None and ks.pk is None and ks.ak_version == 1 and ks.generation == 2
    rec = agent.devices[DEV1]
    assert rec.completed and rec.ak == ks.ak and rec.ak_version == 1 and rec.pending_ak is None
    assert device.state == DeviceState.IDLE


def test_provisioning_messages_have_documented_keys_and_nonces():
    device, agent = make_device(), make_agent()
    hello, offer, confirm, ack = run_exchange(device, agent, device.start_provisioning())
    h = [env.Header.unpack(m) for m in (hello, offer, confirm, ack)]
    assert [x.type for x in h] == [MsgType.PROV_HELLO, MsgType.PROV_OFFER, MsgType.PROV_CONFIRM, MsgType.ACK]
    assert [x.key_kind for x in h] == [0, 0, 1, 1]
    assert [x.key_ref for x in h] == [PO_ID, PO_ID, 1, 1]
    assert h[0].nonce_a == bytes(16) and len({x.nonce_a for x in h[1:]}) == 1 and h[1].nonce_a != bytes(16)
    assert len({x.nonce_d for x in h}) == 1


def test_ak_rotation_completes_and_old_ak_is_refused_afterwards():
    device, agent = provisioned()
    old_ak = device.keystore.ak
    old_checkin = device.start_checkin()  # sealed under AK v1, delivered after the rotation
    device.timeout()
    run_exchange(device, agent, device.start_ak_rotation())
    assert device.keystore.ak_version == 2 and device.keystore.ak != old_ak
    assert agent.devices[DEV1].ak_version == 2 and agent.devices[DEV1].ak == device.keystore.ak
    assert error_code(agent.handle(old_checkin)) == ErrorCode.REJECTED


def test_cloud_update_completes_after_successful_test_session():
    device, agent = provisioned()
    run_exchange(device, agent, device.start_cloud_request())
    assert device.keystore.cloud is not None and device.keystore.cloud.version == 1
    assert agent.devices[DEV1].cloud == device.keystore.cloud and agent.devices[DEV1].cloud_pending is None
    assert ("cloud_active", DEV1, 1) in agent.events


def test_cloud_update_refused_by_cloud_falls_back_and_agent_revokes_pending():
    device, agent = provisioned()
    run_exchange(device, agent, device.start_cloud_request())  # v1 active
    before = device.keystore
    out = device.receive(agent.handle(device.start_cloud_request()))
    assert out.session is not None and device.keystore.cloud.version == 2
    confirm = device.session_result(SessionResult(out.session.request_id, SessionStatus.REFUSED))
    assert device.keystore == before  # fell back to the previous record
    assert device.receive(agent.handle(confirm.send)).done
    rec = agent.devices[DEV1]
    assert rec.cloud.version == 1 and rec.cloud_pending is None
    assert ("cloud_revoked", DEV1, 2) in agent.events
    assert device.last_error == LastError.CLOUD_REFUSED


def test_checkin_reports_fingerprints_and_gets_pending_action():
    device, agent = provisioned()
    agent.set_action(DEV1, Action.ROTATE_AK)
    run_exchange(device, agent, device.start_checkin())
    seen = agent.devices[DEV1].last_checkin
    assert seen.ak_fp == env.fingerprint(device.keystore.ak) and seen.ak_version == 1
    assert device.pending_action == Action.ROTATE_AK
    first = device.start_next()
    assert env.Header.unpack(first).type == MsgType.AK_ROTATE_HELLO


def test_revoked_device_is_told_so_and_stops():
    device, agent = provisioned()
    agent.revoke(DEV1)
    run_exchange(device, agent, device.start_checkin())
    assert device.state == DeviceState.REVOKED


# --- duplicates get identical answers --------------------------------------------------------


def test_duplicate_hello_gets_identical_offer_and_one_pending_ak():
    device, agent = make_device(), make_agent()
    hello = device.start_provisioning()
    first = agent.handle(hello)
    pending = agent.devices[DEV1].pending_ak
    assert agent.handle(hello) == first
    assert agent.devices[DEV1].pending_ak == pending


def test_duplicate_confirm_gets_identical_ack():
    device, agent = make_device(), make_agent()
    confirm = device.receive(agent.handle(device.start_provisioning())).send
    ack = agent.handle(confirm)
    assert agent.handle(confirm) == ack
    assert env.Header.unpack(ack).type == MsgType.ACK


def test_duplicate_cloud_request_gets_same_credential():
    device, agent = provisioned()
    request = device.start_cloud_request()
    assert agent.handle(request) == agent.handle(request)


def test_retried_cloud_request_with_fresh_nonce_gets_same_pending_credential():
    device, agent = provisioned()
    update1 = agent.handle(device.start_cloud_request())  # lost on the way back
    device.timeout()
    out = device.receive(agent.handle(device.start_cloud_request()))
    assert out.session is not None
    _, body1 = env.open_message(update1, lambda _h: device.keystore.ak)
    assert out.session.credential.encode() == body1


def test_duplicate_checkin_gets_identical_reply():
    device, agent = provisioned()
    checkin = device.start_checkin()
    assert agent.handle(checkin) == agent.handle(checkin)


# --- replays ----------------------------------------------------------------------------------


def test_replayed_hello_after_completion_is_refused_and_raises_anomaly():
    device, agent = make_device(), make_agent()
    hello = device.start_provisioning()
    confirm = device.receive(agent.handle(hello)).send
    device.receive(agent.handle(confirm))
    ak_before = agent.devices[DEV1].ak
    answer = agent.handle(hello)
    assert error_code(answer) == ErrorCode.REFUSED
    assert ("duplicate_provisioning", DEV1) in agent.anomalies
    assert agent.devices[DEV1].ak == ak_before and agent.devices[DEV1].pending_ak is None


def test_fresh_hello_for_completed_id_is_refused():
    _, agent = provisioned()
    clone = make_device(seed=b"clone")  # another device holding the same PK and ID
    assert error_code(agent.handle(clone.start_provisioning())) == ErrorCode.REFUSED


def test_replayed_offer_is_dropped_by_device_without_state_change():
    device, agent = make_device(), make_agent()
    offer = agent.handle(device.start_provisioning())
    confirm = device.receive(offer).send
    device.receive(agent.handle(confirm))
    before = device_state(device)
    out = device.receive(offer)
    assert out.dropped is not None
    assert device_state(device) == before


def test_replayed_nonce_confirm_from_older_exchange_is_rejected():
    device, agent = make_device(), make_agent()
    offer_old = agent.handle(device.start_provisioning())
    device.timeout()
    # The device retries; the old offer arrives late and is dropped (nonce not current).
    hello_new = device.start_provisioning()
    assert device.receive(offer_old).dropped == "nonce_or_state"
    # An attacker replays a confirm-shaped message with the old nonces under the new pending AK:
    # it cannot be made without the key, so take a real confirm and move it to the old nonces.
    confirm = device.receive(agent.handle(hello_new)).send
    h = env.Header.unpack(confirm)
    old_h = env.Header.unpack(offer_old)
    forged = env.seal(env.Header(h.type, h.key_kind, h.key_ref, h.device_id, old_h.nonce_d, old_h.nonce_a),
                      device.keystore.ak, bytes(16), b"")
    before = agent_state(agent)
    assert error_code(agent.handle(forged)) == ErrorCode.REJECTED
    assert agent_state(agent) == before


def test_first_message_with_nonzero_nonce_a_is_rejected():
    device, agent = provisioned()
    ks = device.keystore
    h = env.Header(MsgType.CHECKIN, 1, 1, DEV1, bytes([3]) * 16, bytes([4]) * 16)
    msg = env.seal(h, ks.ak, bytes(16), device.checkin_body().encode())
    before = agent_state(agent)
    assert error_code(agent.handle(msg)) == ErrorCode.REJECTED
    assert agent_state(agent) == before


# --- losses and retries converge -------------------------------------------------------------


def test_lost_offer_then_retry_replaces_pending_and_converges():
    device, agent = make_device(), make_agent()
    agent.handle(device.start_provisioning())  # offer lost
    first_pending = agent.devices[DEV1].pending_ak
    device.timeout()
    assert device.last_error == LastError.TIMEOUT
    run_exchange(device, agent, device.start_provisioning())
    assert agent.devices[DEV1].ak != first_pending.ak
    assert agent.devices[DEV1].ak == device.keystore.ak


def test_lost_confirm_then_checkin_activates_pending_ak():
    device, agent = make_device(), make_agent()
    device.receive(agent.handle(device.start_provisioning()))  # confirm produced, lost
    assert agent.devices[DEV1].pending_ak is not None and not agent.devices[DEV1].completed
    device.timeout()
    run_exchange(device, agent, device.start_checkin())
    rec = agent.devices[DEV1]
    assert rec.completed and rec.pending_ak is None and rec.ak == device.keystore.ak


def test_lost_rotation_confirm_then_checkin_under_new_ak_activates_it():
    device, agent = provisioned()
    device.receive(agent.handle(device.start_ak_rotation()))  # confirm lost
    assert agent.devices[DEV1].ak_version == 1 and agent.devices[DEV1].pending_ak.version == 2
    device.timeout()
    run_exchange(device, agent, device.start_checkin())
    assert agent.devices[DEV1].ak_version == 2 and agent.devices[DEV1].ak == device.keystore.ak


def test_lost_rotation_offer_keeps_old_ak_working():
    device, agent = provisioned()
    agent.handle(device.start_ak_rotation())  # offer lost
    device.timeout()
    run_exchange(device, agent, device.start_checkin())  # still under AK v1
    assert device.keystore.ak_version == 1 and agent.devices[DEV1].ak_version == 1


def test_lost_ack_leaves_both_sides_final():
    device, agent = make_device(), make_agent()
    confirm = device.receive(agent.handle(device.start_provisioning())).send
    agent.handle(confirm)  # ack lost
    device.timeout()
    assert device.last_error == LastError.NONE  # keys were already final
    run_exchange(device, agent, device.start_checkin())
    assert agent.devices[DEV1].ak == device.keystore.ak


def test_lost_cloud_confirm_then_checkin_with_new_fingerprint_activates():
    device, agent = provisioned()
    out = device.receive(agent.handle(device.start_cloud_request()))
    device.session_result(SessionResult(out.session.request_id, SessionStatus.CONNECTED))  # confirm lost
    assert agent.devices[DEV1].cloud is None
    device.timeout()
    run_exchange(device, agent, device.start_checkin())
    assert agent.devices[DEV1].cloud == device.keystore.cloud


# --- keys ---------------------------------------------------------------------------------------


def test_fresh_ak_differs_per_device_of_the_same_po():
    agent = make_agent()
    d1, d2 = make_device(DEV1, b"d1"), make_device(DEV2, b"d2")
    run_exchange(d1, agent, d1.start_provisioning())
    run_exchange(d2, agent, d2.start_provisioning())
    assert d1.keystore.ak != d2.keystore.ak
    assert agent.devices[DEV1].ak == d1.keystore.ak and agent.devices[DEV2].ak == d2.keystore.ak


def test_quantity_limit_refuses_extra_device():
    agent = make_agent(quantity=1)
    d1, d2 = make_device(DEV1, b"d1"), make_device(DEV2, b"d2")
    run_exchange(d1, agent, d1.start_provisioning())
    assert error_code(agent.handle(d2.start_provisioning())) == ErrorCode.REFUSED
    assert ("quantity_exceeded", DEV2) in agent.anomalies


def test_recorded_stage2_plus_pk_does_not_give_ak():
    """Forward secrecy against a PK holder: the attacker decrypts HELLO and OFFER with PK, so it
    knows both public keys and both nonces; every derivation from that public material misses
    AK, while the same derivation with one ephemeral private key hits it."""
    device_rng = ScriptedRng(fallback_seed=b"fs-device")
    device = DeviceSession(DEV1, KeystoreState(1, PO_ID, PO_NAME, pk=PK), device_rng)
    agent = make_agent()
    hello, offer, _confirm, _ack = run_exchange(device, agent, device.start_provisioning())
    ak = device.keystore.ak

    h_hello, hello_body = env.open_message(hello, lambda _h: PK)
    h_offer, offer_body = env.open_message(offer, lambda _h: PK)
    dev_pub, agent_pub = Hello.decode(hello_body).eph_pub, Offer.decode(offer_body).eph_pub
    nd, na = h_offer.nonce_d, h_offer.nonce_a
    public_material = [dev_pub, agent_pub, PK, bytes(a ^ b for a, b in zip(dev_pub, agent_pub, strict=True))]
    for ikm in public_material:
        assert env.derive_ak(ikm, nd, na, DEV1, PO_NAME.encode()) != ak
    # PK used as an X25519 scalar against either public key is no better.
    for pub in (dev_pub, agent_pub):
        assert env.derive_ak(env.x25519_shared(PK, pub), nd, na, DEV1, PO_NAME.encode()) != ak
    # The device's ephemeral private key (second RNG draw) is what makes the difference.
    eph_priv = device_rng.draws[1]
    assert env.x25519_public(eph_priv) == dev_pub
    assert env.derive_ak(env.x25519_shared(eph_priv, agent_pub), nd, na, DEV1, PO_NAME.encode()) == ak
    assert h_hello.nonce_d == nd
    # AK itself never crossed the wire.
    assert all(ak not in m for m in (hello, offer, _confirm, _ack))


# --- bad input changes no state -----------------------------------------------------------------


@pytest.mark.parametrize("mutate", [
    lambda m: m[:-1],
    lambda m: m + bytes(16),
    lambda m: m + bytes(4000),
    lambda m: m[:-1] + bytes([m[-1] ^ 1]),
    lambda m: b"\x02" + m[1:],
    lambda m: m[:1] + b"\x66" + m[2:],
    lambda m: bytes(200),
    lambda m: b"",
], ids=["truncated", "extra_block_breaks_mac", "oversized", "wrong_mac", "wrong_version", "unknown_type",
        "garbage", "empty"])
def test_agent_answers_rejected_and_keeps_state_for_bad_input(mutate):
    device, agent = provisioned()
    msg = device.start_checkin()
    before = agent_state(agent)
    answer = agent.handle(mutate(msg))
    assert error_code(answer) == ErrorCode.REJECTED
    assert agent_state(agent) == before


@pytest.mark.parametrize("mutate", [
    lambda m: m[:-1],
    lambda m: m + bytes(4000),
    lambda m: m[:-1] + bytes([m[-1] ^ 1]),
    lambda m: b"\x02" + m[1:],
    lambda m: m[:1] + b"\x66" + m[2:],
    lambda m: bytes(len(m)),
], ids=["truncated", "oversized", "wrong_mac", "wrong_version", "unknown_type", "zeros"])
def test_device_drops_bad_answer_and_keeps_state(mutate):
    device, agent = make_device(), make_agent()
    offer = agent.handle(device.start_provisioning())
    before = device_state(device)
    assert device.receive(mutate(offer)).dropped is not None
    assert device_state(device) == before
    assert device.receive(offer).send is not None  # the real one still works


def test_device_drops_answer_with_foreign_nonce_d():
    device, agent = make_device(), make_agent()
    device.start_provisioning()
    other = make_device(seed=b"other")
    offer_for_other = agent.handle(other.start_provisioning())
    before = device_state(device)
    assert device.receive(offer_for_other).dropped == "nonce_or_state"
    assert device_state(device) == before


def test_device_gives_up_exchange_on_matching_error_only():
    device = make_device()
    hello = device.start_provisioning()
    h = env.Header.unpack(hello)
    stray = env.ErrorMessage(ErrorCode.RETRY, DEV1, bytes([9]) * 16).pack()
    assert device.receive(stray).dropped == "nonce_or_state"
    assert device.state == DeviceState.PROV_WAIT_OFFER
    assert device.receive(env.ErrorMessage(ErrorCode.RETRY, DEV1, h.nonce_d).pack()).done
    assert device.state == DeviceState.IDLE and device.last_error == LastError.AGENT_RETRY


def test_device_rejects_offer_with_low_order_point():
    device = make_device()
    hello = device.start_provisioning()
    h = env.Header.unpack(hello)
    evil = env.seal(env.Header(MsgType.PROV_OFFER, 0, PO_ID, DEV1, h.nonce_d, bytes([1]) * 16), PK,
                    bytes(16), Offer(bytes(32), 1).encode())
    before = device_state(device)
    assert device.receive(evil).dropped == "low_order_point"
    assert device_state(device) == before


def test_agent_rejects_agent_direction_message():
    device, agent = provisioned()
    h = env.Header(MsgType.CHECKIN_REPLY, 1, 1, DEV1, bytes([5]) * 16, bytes([6]) * 16)
    msg = env.seal(h, device.keystore.ak, bytes(16), b"\x00\x00\x00\x00")
    before = agent_state(agent)
    assert error_code(agent.handle(msg)) == ErrorCode.REJECTED
    assert agent_state(agent) == before


def test_device_cannot_start_two_exchanges_at_once():
    device = make_device()
    device.start_provisioning()
    with pytest.raises(ValueError):
        device.start_provisioning()


def test_scripted_rng_refuses_wrong_chunk_size():
    rng = ScriptedRng([bytes(16)])
    with pytest.raises(ValueError):
        rng(32)


def test_envelope_error_never_carries_key_material():
    device, _agent = provisioned()
    with pytest.raises(EnvelopeError) as info:
        env.open_message(device.start_checkin()[:-1] + b"\x00", lambda _h: device.keystore.ak)
    text = repr(info.value) + str(info.value) + repr(vars(info.value))
    assert device.keystore.ak.hex() not in text and device.keystore.ak not in text.encode()
    assert str(info.value) == "message rejected"


_PROVISIONED = provisioned()


@settings(max_examples=200)
@given(st.binary(max_size=600))
def test_agent_answers_random_bytes_with_rejected_and_no_state_change(data):
    _device, agent = _PROVISIONED
    before = agent_state(agent)
    assert error_code(agent.handle(data)) == ErrorCode.REJECTED
    assert agent_state(agent) == before


@settings(max_examples=200)
@given(st.binary(max_size=600))
def test_device_drops_random_bytes_without_state_change(data):
    device = make_device(seed=b"prop")
    device.start_provisioning()
    before = device_state(device)
    assert device.receive(data).dropped is not None
    assert device_state(device) == before
