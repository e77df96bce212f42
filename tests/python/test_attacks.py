"""Attacks as tests, against a real agent process (and, where network noise would hide the signal,
its in-process request handler). docs/security.md names the claim each test proves and the tests
elsewhere that prove the others (duplicate provisioning, replays within the answer TTL, malformed
input, crashed agents, faulty links).

Every attack asserts two things: the attacker gets nothing (no key, no state change, no oracle),
and the honest path still works afterwards — so a test that is broken in a way that lets nothing
through fails too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import random
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentproc import Stack, adevice_state, events, make_stack, run
from otakey.agent.agentlog import EventLog
from otakey.agent.config import AgentConfig, PolicyConfig, Services
from otakey.agent.handlers import Processor
from otakey.agent.policy import Policy
from otakey.agent.product_file import ProductFile
from otakey.errors import EnvelopeError
from otakey.harness.protocol_device import ProtocolDevice, mqtt_opener
from otakey.protocol import envelope as env
from otakey.protocol.envelope import ErrorMessage, Header, error_reply_for, open_message, seal, seal_raw
from otakey.protocol.handshake import DeviceSession
from otakey.protocol.messages import Action, ErrorCode, Hello, KeyKind, MsgType, Offer
from otakey.store import AuditEvent, Product, make_store

# --------------------------------------------------------------------------------------------------- helpers


def encodings(secret: bytes) -> list[bytes]:
    """The forms a key could take in a log line or a database column."""
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
             base64.urlsafe_b64encode(secret), base64.b64encode(secret).rstrip(b"=")]
    return [f for f in forms if len(f) >= 16]


def find_secrets(haystack: bytes, secrets: dict[str, bytes]) -> list[str]:
    return [name for name, secret in secrets.items() for form in encodings(secret) if form in haystack]


def error_code(answer: bytes | None) -> int:
    assert answer is not None and env.is_error_message(answer), f"expected an ERROR, got {answer!r}"
    return ErrorMessage.unpack(answer).code


@pytest.fixture
def fresh(tmp_path: Any, mosquitto: Any) -> Iterator[Stack]:
    """A stack of its own (SQLite, Mosquitto): nothing else writes its database meanwhile."""
    st = make_stack(tmp_path, "sqlite", mosquitto)
    st.create_product("PO-A", 100)
    yield st
    st.stop_all()


async def provisioned(stack: Stack, **kwargs: Any) -> ProtocolDevice:
    d = stack.device(stack.agents[0], **kwargs)
    assert (await d.provision()).ok
    assert all(r.ok for r in await d.run_until_idle()) and d.cloud is not None
    return d


# ------------------------------------------------------------------------------------------------- tampering


def mutations(m: bytes) -> dict[str, bytes]:
    """Every field of an envelope changed, one at a time (protocol §2.1/§2.2)."""
    def at(pos: int, value: int | None = None) -> bytes:
        b = bytearray(m)
        b[pos] = (b[pos] ^ 0x01) if value is None else value
        return bytes(b)

    other_type = MsgType.CHECKIN if m[1] != MsgType.CHECKIN else MsgType.CLOUD_REQUEST
    other_kind = KeyKind.PK if m[2] else KeyKind.AK
    out = {"version": at(0, 2), "type": at(1, other_type), "key_kind": at(2, other_kind),
           "reserved": at(3, 1), "key_ref": at(4), "device_id": at(8), "nonce_d": at(20), "nonce_a": at(36),
           "iv": at(52), "iv_last": at(67), "tag_first": at(len(m) - 32), "tag_last": at(len(m) - 1),
           "truncated_block": m[:-48] + m[-32:], "extra_block": m[:-32] + bytes(16) + m[-32:],
           "tag_dropped": m[:-32]}
    for block in range((len(m) - 100) // 16):
        out[f"ciphertext_block{block}"] = at(68 + 16 * block)
        out[f"ciphertext_block{block}_end"] = at(68 + 16 * block + 15)
    return out


def test_attack_tampered_header_iv_ciphertext_or_mac_of_every_request_rejected_uniformly(
        fresh: Stack) -> None:
    """Each request of every flow, changed in every field before it is ever sent, gets exactly the
    uniform ERROR(REJECTED) for its header and leaves the store byte-for-byte unchanged; then the
    untouched request goes through (so the flow itself was valid)."""
    agent = fresh.agent(name="tamper")

    async def go() -> int:
        d = fresh.device(agent)
        s = d.session
        tried = 0

        async def step(m: bytes) -> bytes:
            nonlocal tried
            before = fresh.snapshot()
            for name, bad in mutations(m).items():
                answer = await d.send_raw(bad)
                assert answer == error_reply_for(bad, ErrorCode.REJECTED), f"{MsgType(m[1]).name}: {name}"
                tried += 1
            assert fresh.snapshot() == before, f"a tampered {MsgType(m[1]).name} changed the store"
            answer = await d.send_raw(m)
            assert answer is not None and not env.is_error_message(answer), \
                f"the real {MsgType(m[1]).name} failed"
            return answer

        async def exchange(first: bytes) -> None:
            out = s.receive(await step(first))
            while True:
                if out.session is not None:
                    out = s.session_result(await mqtt_opener(out.session))
                if out.send is None:
                    assert out.done and out.dropped is None
                    return
                out = s.receive(await step(out.send))

        await exchange(s.start_provisioning())          # PROV_HELLO (PK), PROV_CONFIRM
        await exchange(s.start_cloud_request())         # CLOUD_REQUEST, CLOUD_CONFIRM
        await exchange(s.start_ak_rotation())           # AK_ROTATE_HELLO, AK_ROTATE_CONFIRM
        await exchange(s.start_checkin())               # CHECKIN
        assert s.keystore is not None and s.keystore.ak_version == 2 and s.keystore.cloud is not None
        await d.close()
        return tried

    assert run(go()) > 7 * 15


# -------------------------------------------------------------------------------------------- padding oracle


def test_attack_padding_oracle_probe_gets_the_same_bytes_and_no_timing_signal(tmp_path: Any) -> None:
    """The agent's handler, in-process (no network noise), 10,000 CHECKINs of each kind, interleaved
    at random, one header per trial shared by the three kinds:

    - ``mac_padok``: a ciphertext whose padding would be valid, with a broken MAC;
    - ``mac_padbad``: the same with padding that would be invalid — what a padding-oracle attacker
      (who cannot make a valid MAC) varies;
    - ``padding``: a valid MAC around bad padding — only a key holder can send it.

    All three get the same error bytes. The attacker's two kinds take the same time (medians and
    10 %-trimmed means within a tight bound); the key holder's kind stays within a generous bound
    (it does the AES decryption the MAC check guards, ~10 % here). The same measurement does see the
    extra work of an accepted check-in, so it is sensitive enough to catch a real oracle."""
    trials = 10_000
    logging.getLogger("otakey.attack.timing").disabled = True
    kinds = ("mac_padok", "mac_padbad", "padding")

    async def go() -> dict[str, list[int]]:
        kek = os.urandom(32)
        pf = ProductFile("PO-T", 77, os.urandom(32), 10)
        store = make_store(f"sqlite://{tmp_path / 'timing.db'}", kek)
        await store.open()
        try:
            await store.run(lambda tx: tx.add_product(Product(pf.po_id, pf.po_name, 10, pf.pk)))
            services = Services(AgentConfig(db_url="sqlite://x"), store, {}, None, Policy(PolicyConfig()))
            proc = Processor(services, EventLog(logging.getLogger("otakey.attack.timing")), lambda _p: None)
            dev_id = os.urandom(12)
            s = DeviceSession(dev_id, pf.factory_state())
            out = s.receive(await proc.handle(s.start_provisioning(), "127.0.0.1"))
            assert out.send is not None
            assert s.receive(await proc.handle(out.send, "127.0.0.1")).done
            ak = s.keystore.ak if s.keystore else None
            assert ak is not None

            def broken_tag(m: bytes) -> bytes:
                return m[:-1] + bytes([m[-1] ^ 0x80])

            good_pad, bad_pad = env.pkcs7_pad(bytes(112)), bytes(127) + b"\x00"  # both 128 bytes
            make: dict[str, Callable[[Header], bytes]] = {
                "mac_padok": lambda h: broken_tag(seal_raw(h.pack(), ak, os.urandom(16), good_pad)),
                "mac_padbad": lambda h: broken_tag(seal_raw(h.pack(), ak, os.urandom(16), bad_pad)),
                "padding": lambda h: seal_raw(h.pack(), ak, os.urandom(16), bad_pad),
            }
            headers = [Header(MsgType.CHECKIN, KeyKind.AK, 1, dev_id, os.urandom(16)) for _ in range(trials)]
            msgs = {k: [make[k](h) for h in headers] for k in kinds}
            assert len({len(msgs[k][0]) for k in kinds}) == 1
            plan = [(k, i) for k in kinds for i in range(trials)]
            random.Random(1).shuffle(plan)
            answers: dict[str, list[bytes]] = {k: [b""] * trials for k in kinds}
            times: dict[str, list[int]] = {k: [] for k in (*kinds, "accepted")}
            for i in range(300):  # warm-up: caches, the first transactions
                await proc.handle(msgs[kinds[i % 3]][i], "127.0.0.1")
            for kind, i in plan:
                t0 = time.perf_counter_ns()
                answer = await proc.handle(msgs[kind][i], "127.0.0.1")
                times[kind].append(time.perf_counter_ns() - t0)
                answers[kind][i] = answer
            assert answers["mac_padok"] == answers["mac_padbad"] == answers["padding"], "the answers differ"
            assert all(a == error_reply_for(msgs["padding"][i], ErrorCode.REJECTED)
                       for i, a in enumerate(answers["padding"]))
            for _ in range(300):  # calibration: an accepted check-in does a write and a commit
                t0 = time.perf_counter_ns()
                reply = await proc.handle(s.start_checkin(), "127.0.0.1")
                times["accepted"].append(time.perf_counter_ns() - t0)
                assert s.receive(reply).done
            return times
        finally:
            await store.close()

    times = run(go())

    def trimmed_mean(xs: list[int]) -> float:
        xs = sorted(xs)
        cut = len(xs) // 10
        return statistics.fmean(xs[cut:len(xs) - cut])

    med = {k: statistics.median(v) for k, v in times.items()}
    tmean = {k: trimmed_mean(v) for k, v in times.items()}
    report = {k: f"median {med[k] / 1000:.1f} µs, trimmed mean {tmean[k] / 1000:.1f} µs" for k in med}
    base = min(med["mac_padok"], med["mac_padbad"])
    # What an attacker can vary: the same code path, so a tight bound (10 µs or 5 %).
    tight = max(10_000.0, 0.05 * base)
    for stat in (med, tmean):
        assert abs(stat["mac_padok"] - stat["mac_padbad"]) < tight, f"padding shows through: {report}"
    # Bad MAC against bad padding under a valid MAC: generous (40 µs or 25 %), since an oracle worth
    # having — a database read, a log line, a different answer path — costs far more.
    generous = max(40_000.0, 0.25 * base)
    for stat in (med, tmean):
        assert abs(stat["padding"] - stat["mac_padok"]) < generous, f"bad MAC vs bad padding: {report}"
    assert med["accepted"] - med["padding"] > generous, f"the measurement is too coarse: {report}"


# --------------------------------------------------------------------------------------------------- replays


def test_attack_recorded_answers_replayed_to_the_device_in_every_waiting_state_are_dropped(
        fresh: Stack) -> None:
    """Every answer of every flow, recorded from the real agent, replayed to the device while it
    waits in each state of a new exchange: dropped, nothing committed, the exchange still works."""
    agent = fresh.agent(name="replay-device")

    async def record() -> tuple[ProtocolDevice, list[bytes]]:
        d = await provisioned(fresh)
        assert (await d.rotate_ak()).ok and (await d.request_cloud()).ok and (await d.checkin()).ok
        await d.close()
        return d, list(d.answers)

    d, answers = run(record())
    assert {MsgType(a[1]).name for a in answers} >= {"PROV_OFFER", "ACK", "CLOUD_UPDATE", "AK_ROTATE_OFFER",
                                                     "CHECKIN_REPLY"}
    errors = [ErrorMessage(code, d.device_id, os.urandom(16), os.urandom(16)).pack() for code in ErrorCode]
    s = d.session
    keys, commits = s.keystore, len(s.commits)
    starts: list[Callable[[], bytes]] = [s.start_checkin, s.start_cloud_request, s.start_ak_rotation]
    for start in starts:
        start()
        for answer in answers + errors:
            out = s.receive(answer)
            assert out.dropped is not None and out.send is None and not out.done, MsgType(answer[1]).name
        assert s.keystore == keys and len(s.commits) == commits
        s.timeout()

    async def still_works() -> None:
        d.port = agent.port
        assert (await d.checkin()).ok
        await d.close()

    run(still_works())


def test_attack_requests_replayed_after_the_answers_expired_issue_no_key(fresh: Stack) -> None:
    """Once stored answers are pruned (``--exchange-ttl``), a replayed request is not a duplicate any
    more. PROV_HELLO is refused (one ID, one AK) with an anomaly; every other replay is rejected or
    answered without a new key, and only the device could read an answer. (The limit, in
    docs/security.md: a replayed CHECKIN under the still-current AK refreshes "last seen", and a
    CLOUD_REQUEST under it would start a credential update.)"""
    agent = fresh.agent("--exchange-ttl", "1", name="short-ttl")

    async def go() -> None:
        d = await provisioned(fresh)
        assert (await d.rotate_ak()).ok and (await d.checkin()).ok
        sent = list(d.sent)
        await d.close()
        before = await adevice_state(fresh, d.device_id)
        await asyncio.sleep(2.0)  # the reconciler (every 0.3 s) prunes answers older than 1 s
        attacker = fresh.device(agent)
        outcomes: dict[str, list[str]] = {}
        assert [MsgType(m[1]).name for m in sent if m[4:8] == (2).to_bytes(4, "little")] == \
            ["AK_ROTATE_CONFIRM", "CHECKIN"]  # under the AK that is still current: see the docstring
        for m in sent:
            name = MsgType(m[1]).name
            answer = await attacker.send_raw(m)
            kind = ("error:" + ErrorCode(error_code(answer)).name if env.is_error_message(answer or b"")
                    else "answer:" + MsgType(answer[1]).name if answer else "none")
            outcomes.setdefault(name, []).append(kind)
        after = await adevice_state(fresh, d.device_id)
        assert outcomes["PROV_HELLO"] == ["error:REFUSED"]
        assert all(o.startswith("error:") or o in ("answer:ACK", "answer:CHECKIN_REPLY")
                   for os_ in outcomes.values() for o in os_), outcomes
        assert after["device"].ak == before["device"].ak and after["device"].ak_version == 2
        assert after["device"].ak_pending is None
        for event in (AuditEvent.ISSUED, AuditEvent.CONFIRMED, AuditEvent.ROTATED, AuditEvent.CLOUD_ISSUED):
            assert events(after, event) == events(before, event), event
        anomalies = await fresh.aquery(lambda tx: tx.list_anomalies())
        assert [a.kind for a in anomalies] == ["duplicate_provisioning"]
        # The device itself is unharmed.
        d.port = agent.port
        assert (await d.checkin()).action is Action.NONE
        await d.close()
        await attacker.close()

    run(go())


# ------------------------------------------------------------------------------------------------- PK misuse


def test_attack_pk_of_one_po_cannot_provision_as_another_or_take_its_ids(fresh: Stack) -> None:
    """A holder of PO-A's PK (a leaked firmware image): messages under it naming PO-B are rejected;
    an ID that already provisioned under PO-B is refused as a PO mismatch (anomaly)."""
    assert fresh.product is not None
    pf_a = fresh.product
    pf_b = fresh.create_product("PO-B", 100)
    agent = fresh.agent(name="pk-misuse")

    async def go() -> None:
        victim = fresh.device(agent, product=pf_b)
        assert (await victim.provision()).ok
        pk_a_as_b = ProductFile(pf_b.po_name, pf_b.po_id, pf_a.pk).factory_state()
        forged = ProtocolDevice(os.urandom(12), pk_a_as_b, port=agent.port)
        assert (await forged.provision()).outcome == "rejected"  # PK-A under PO-B's number
        thief = ProtocolDevice(victim.device_id, pf_a.factory_state(), port=agent.port)
        assert (await thief.provision()).outcome == "refused"
        state = await adevice_state(fresh, victim.device_id)
        assert state["device"].po_id == pf_b.po_id and state["device"].ak == victim.keystore.ak
        anomalies = await fresh.aquery(lambda tx: tx.list_anomalies(po_id=pf_a.po_id))
        assert [a.kind for a in anomalies] == ["po_mismatch"]
        assert (await victim.checkin()).ok
        for x in (victim, forged, thief):
            await x.close()

    run(go())


def test_attack_activation_flood_beyond_quantity_freezes_the_po_and_no_key_follows(fresh: Stack) -> None:
    """A leaked PK provisions 30 invented IDs at once against a PO of 5 (``--freeze-on-anomaly``):
    at most 5 AKs, a quantity anomaly, the PO frozen, and no AK offered after the freeze — also not
    to a legitimate new device, while devices provisioned before keep working."""
    pf = fresh.create_product("PO-FLOOD", 5)
    agent = fresh.agent("--freeze-on-anomaly", name="flood")

    async def go() -> None:
        flood = [fresh.device(agent, product=pf) for _ in range(30)]
        first = await asyncio.gather(*(d.provision() for d in flood))
        again = await asyncio.gather(*(d.provision() for d in flood if d.has_pk))  # retries, fresh nonces
        assert all(r.outcome == "refused" for r in again)
        done = [d for d in flood if not d.has_pk]
        assert len(done) == 5 and sum(r.ok for r in first) == 5
        product = await fresh.aquery(lambda tx: tx.get_product(pf.po_id))
        assert product is not None and product.frozen
        anomalies = await fresh.aquery(lambda tx: tx.list_anomalies(po_id=pf.po_id))
        assert "quantity_exceeded" in [a.kind for a in anomalies]
        audit = await fresh.aquery(lambda tx: tx.list_audit(po_id=pf.po_id, limit=10_000))
        frozen_at = min(a.at for a in anomalies if a.kind == "quantity_exceeded")
        issued = [e for e in audit if e.event is AuditEvent.ISSUED]
        assert len(issued) == 5 and all(e.at <= frozen_at for e in issued), \
            "an AK was offered after the freeze"
        newcomer = fresh.device(agent, product=pf)
        assert (await newcomer.provision()).outcome == "refused"
        for d in done:  # keys issued before the freeze keep working
            assert (await d.checkin()).ok
        for x in (*flood, newcomer):
            await x.close()

    run(go())


def test_attack_revoked_device_gets_no_new_ak_and_no_cloud_credential(fresh: Stack) -> None:
    """After ``otakey device revoke``: rotation, cloud request and a clone's PK provisioning of the
    same ID are refused; no credential is registered; the device is told it is revoked."""
    agent = fresh.agent(name="revoked")

    async def setup() -> ProtocolDevice:
        d = await provisioned(fresh)
        await d.close()
        return d

    d = run(setup())
    fresh.cli("device", "revoke", d.device_id.hex())

    async def after() -> None:
        before = await adevice_state(fresh, d.device_id)
        clone = ProtocolDevice(d.device_id, d.keystore, port=agent.port)
        assert (await clone.request_cloud()).outcome == "refused"
        assert (await clone.rotate_ak()).outcome == "refused"
        assert fresh.product is not None
        pk_clone = ProtocolDevice(d.device_id, fresh.product.factory_state(), port=agent.port)
        assert (await pk_clone.provision()).outcome == "refused"
        r = await d.checkin()
        assert r.outcome == "revoked" and d.revoked
        now = await adevice_state(fresh, d.device_id)
        assert [c.version for c in now["all_creds"]] == [c.version for c in before["all_creds"]]
        assert now["device"].ak == before["device"].ak and now["device"].ak_pending is None
        assert events(now, AuditEvent.CLOUD_ISSUED) == events(before, AuditEvent.CLOUD_ISSUED)
        for x in (d, clone, pk_clone):
            await x.close()

    run(after())


def test_attack_forged_error_only_makes_the_device_give_up_and_retry(fresh: Stack) -> None:
    """ERROR is unauthenticated (protocol §3.6): an on-path attacker who copies the device ID and
    nonce_d from the request can make the device drop that exchange — nothing more. Its keys are
    untouched and the retry provisions it."""
    agent = fresh.agent(name="forged-error")

    async def go() -> None:
        d = fresh.device(agent)
        hello = d.session.start_provisioning()
        h = Header.unpack(hello)
        forged = ErrorMessage(ErrorCode.REFUSED, h.device_id, h.nonce_d, h.nonce_a).pack()
        out = d.session.receive(forged)
        assert out.done and d.has_pk and d.session.keystore is not None and d.session.keystore.ak is None
        assert (await d.provision()).ok and not d.has_pk
        await d.close()

    run(go())


# ------------------------------------------------------------------------------------------- forward secrecy


def candidate_keys(root: bytes, dev_pub: bytes, agent_pub: bytes, nd: bytes, na: bytes, dev_id: bytes,
                   po_name: bytes) -> dict[str, bytes]:
    """What an attacker holding ``root`` (PK, or the old AK) and the transcript can compute without
    an ephemeral private key."""
    enc, mac = env.derive_keys(root)
    xor = bytes(a ^ b for a, b in zip(dev_pub, agent_pub, strict=True))
    material = {"root": root, "dev_pub": dev_pub, "agent_pub": agent_pub, "xor_pubs": xor,
                "sha_pubs": hashlib.sha256(dev_pub + agent_pub).digest(),
                "sha_pubs_rev": hashlib.sha256(agent_pub + dev_pub).digest(), "enc_key2": enc + enc,
                "mac_key": mac, "sha_root_nonces": hashlib.sha256(root + nd + na).digest()}
    for a_name, a in (("root", root), ("dev_pub", dev_pub), ("agent_pub", agent_pub)):
        for b_name, b in (("dev_pub", dev_pub), ("agent_pub", agent_pub)):
            if a_name != b_name:
                with_scalar = env.x25519_shared(a, b)  # a public value used as a private scalar
                material[f"x25519({a_name},{b_name})"] = with_scalar
    out = dict(material)
    for name, ikm in material.items():
        out[f"derive_ak({name})"] = env.derive_ak(ikm, nd, na, dev_id, po_name)
        out[f"hkdf({name},AK_INFO)"] = env.hkdf(ikm, env.AK_INFO, 32)
        out[f"hkdf({name},nonces)"] = env.hkdf(ikm, env.AK_INFO + dev_id + po_name, 32, salt=na + nd)
    return out


def opens(message: bytes, key: bytes) -> bool:
    try:
        open_message(message, lambda _h: key)
        return True
    except EnvelopeError:
        return False


def attacker_tries(transcript: list[bytes], root: bytes, dev_id: bytes, po_name: bytes) -> list[str]:
    """The attacker opens HELLO and OFFER with ``root`` and tests every candidate against the
    CONFIRM's MAC (a correct AK verifies it). Returns the candidates that work."""
    hello, offer, confirm = transcript
    _, hello_body = open_message(hello, lambda _h: root)
    h_offer, offer_body = open_message(offer, lambda _h: root)
    dev_pub, agent_pub = Hello.decode(hello_body).eph_pub, Offer.decode(offer_body).eph_pub
    cands = candidate_keys(root, dev_pub, agent_pub, h_offer.nonce_d, h_offer.nonce_a, dev_id, po_name)
    return [name for name, key in cands.items() if opens(confirm, key)]


def test_attack_pk_holder_with_recorded_stage2_and_old_ak_holder_with_recorded_rotation_get_no_ak(
        fresh: Stack) -> None:
    """Forward secrecy (DESIGN §2.3) on real agent traffic: PK plus the recorded stage-2 exchange,
    or an extracted AK v1 plus the recorded rotation, yield no key that opens the device's confirm —
    while the device's real AK does, and the paper's scheme (AK sent under PK) falls to the same
    attacker at once."""
    agent = fresh.agent(name="forward-secrecy")
    assert fresh.product is not None
    pf = fresh.product

    async def go() -> ProtocolDevice:
        d = fresh.device(agent)
        assert (await d.provision()).ok
        assert (await d.rotate_ak()).ok
        await d.close()
        return d

    d = run(go())
    sent, answers = d.sent, d.answers
    stage2 = [sent[0], answers[0], sent[1]]
    rotation = [sent[2], answers[2], sent[3]]
    assert [m[1] for m in stage2] == [MsgType.PROV_HELLO, MsgType.PROV_OFFER, MsgType.PROV_CONFIRM]
    assert [m[1] for m in rotation] == [MsgType.AK_ROTATE_HELLO, MsgType.AK_ROTATE_OFFER,
                                        MsgType.AK_ROTATE_CONFIRM]
    ak1 = d.session.commits[0].ak
    ak2 = d.keystore.ak
    assert ak1 is not None and ak2 is not None
    assert opens(stage2[2], ak1) and opens(rotation[2], ak2)  # the oracle works with the right key
    assert attacker_tries(stage2, pf.pk, d.device_id, pf.po_name.encode()) == []
    assert attacker_tries(rotation, ak1, d.device_id, pf.po_name.encode()) == []
    assert all(ak not in m for m in sent + answers for ak in (ak1, ak2))

    # The paper's stage 2: the agent sends Enc(PK, AK). The same attacker decrypts it.
    h = Header.unpack(stage2[1])
    paper_ak = os.urandom(32)
    paper_offer = seal(Header(MsgType.PROV_OFFER, KeyKind.PK, pf.po_id, d.device_id, h.nonce_d, h.nonce_a),
                       pf.pk, os.urandom(16), paper_ak + bytes(4))
    paper_confirm = seal(Header(MsgType.PROV_CONFIRM, KeyKind.AK, 1, d.device_id, h.nonce_d, h.nonce_a),
                         paper_ak, os.urandom(16), b"")
    _, body = open_message(paper_offer, lambda _h: pf.pk)
    assert opens(paper_confirm, body[:32])


# ---------------------------------------------------------------------------------------------- keys at rest


async def every_flow(stack: Stack, agent: Any) -> tuple[list[ProtocolDevice], dict[str, bytes]]:
    """Provision, credentials, rotation, cloud update, a refused credential, a revocation, and
    rejected and duplicated messages; returns the devices and every key they saw."""
    from otakey.protocol.cloudsession import SessionOpen, SessionResult, SessionStatus

    async def refuse(request: SessionOpen) -> SessionResult:
        if request.credential.version == 3:
            return SessionResult(request.request_id, SessionStatus.REFUSED, "test: refused")
        return await mqtt_opener(request)

    keys: dict[str, bytes] = {}

    async def note(d: ProtocolDevice, tag: str) -> None:
        state = await adevice_state(stack, d.device_id)
        dev = state["device"]
        for name in ("ak", "ak_pending"):
            value = getattr(dev, name)
            if value is not None:
                keys[f"{tag}:{name}:{getattr(dev, name + '_version')}"] = value
        for c in state["all_creds"]:
            keys[f"{tag}:cloud:v{c.version}"] = c.credential.secret

    devices = []
    for i in range(3):
        d = stack.device(agent, opener=refuse)
        d.faults.add("drop", "recv:AK_ROTATE_OFFER")   # leaves a pending AK that is replaced later
        d.faults.add("dup", "send:CLOUD_REQUEST")
        assert (await d.provision()).ok
        await note(d, f"d{i}")
        assert all(r.ok for r in await d.run_until_idle())
        await note(d, f"d{i}")
        await d.rotate_ak()
        await note(d, f"d{i}")
        assert (await d.rotate_ak()).ok
        await note(d, f"d{i}")
        for _ in range(2):
            assert (await d.request_cloud()).ok
            await note(d, f"d{i}")
        bad = bytearray(d.session.start_checkin())
        bad[-1] ^= 1
        assert error_code(await d.send_raw(bytes(bad))) == ErrorCode.REJECTED
        d.session.timeout()
        for n, ks in enumerate(d.session.commits):
            if ks.ak is not None:
                keys[f"d{i}:device_ak:{n}"] = ks.ak
            if ks.cloud is not None:
                keys[f"d{i}:device_cloud:{n}"] = ks.cloud.secret
        await d.close()
        devices.append(d)
    stack.cli("device", "revoke", devices[0].device_id.hex())
    async with asyncio.timeout(20):
        while (await devices[0].checkin()).outcome != "revoked":
            await asyncio.sleep(0.1)
    await devices[0].close()
    await asyncio.sleep(1.0)  # the reconciler disables the revoked device's credentials
    assert stack.product is not None
    keys["pk"] = stack.product.pk
    keys["kek"] = bytes.fromhex(stack.kek_hex)
    for name, root in list(keys.items()):
        if len(root) == 32:
            enc, mac = env.derive_keys(root)
            keys[f"{name}:enc"], keys[f"{name}:mac"] = enc, mac
    if stack.mosquitto is not None:
        keys["mosquitto_admin"] = stack.mosquitto.admin_password.encode()
    return devices, keys


def test_attack_keys_never_reach_the_agent_log_in_any_encoding(fresh: Stack) -> None:
    """Every flow, with failures and refusals, under ``--verbose``: neither the PK, the KEK, any AK
    (current, retired, pending, replaced), any cloud secret, the keys derived from them nor the
    broker's admin password appear in the log — raw, hex, HEX or base64 — nor in the operator CLI's
    JSON about the devices."""
    agent = fresh.agent("--verbose", name="verbose")
    devices, keys = run(every_flow(fresh, agent))
    fresh.stop_all()
    log = agent.log_path.read_bytes()
    assert b"event=answered" in log and b"event=rejected" in log and b"level=debug" in log
    assert any(d.device_id.hex().encode() in log for d in devices)  # the scan does see the log's content
    assert len(keys) > 40
    assert find_secrets(log, keys) == []
    shown = b"".join(fresh.cli("device", "show", d.device_id.hex(), json_out=False).stdout.encode()
                     for d in devices)
    assert devices[1].device_id.hex().encode() in shown
    assert find_secrets(shown, keys) == []


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_attack_keys_never_in_clear_in_the_database_file_or_dump(
        tmp_path: Any, mosquitto: Any, request: pytest.FixtureRequest, db: str) -> None:
    """The same flows on SQLite (the file, its WAL and a SQL dump) and PostgreSQL (pg_dump): no key
    in any encoding — the agent's own records are sealed with the KEK."""
    pg = request.getfixturevalue("postgres") if db == "postgresql" else None
    stack = make_stack(tmp_path, db, mosquitto, pg)
    stack.create_product("PO-REST", 100)
    agent = stack.agent(name="at-rest")
    try:
        devices, keys = run(every_flow(stack, agent))
    finally:
        stack.stop_all()
    if db == "sqlite":
        assert stack.sqlite_path is not None
        image = b"".join(p.read_bytes() for p in stack.sqlite_path.parent.glob(stack.sqlite_path.name + "*"))
        conn = sqlite3.connect(stack.sqlite_path)
        try:
            image += "\n".join(conn.iterdump()).encode()
        finally:
            conn.close()
    else:
        image = pg.dump(stack.db_url.rsplit("/", 1)[1])
    assert any(d.device_id in image or d.device_id.hex().encode() in image for d in devices)
    assert find_secrets(image, keys) == []
