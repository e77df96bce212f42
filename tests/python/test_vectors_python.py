"""tests/vectors/*.json: regenerating gives identical files, and every vector checks out in Python."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otakey.errors import EnvelopeError, FrameError, KeystoreError, ProtocolError
from otakey.protocol import envelope as env
from otakey.protocol import framing, keystore, vectors
from otakey.protocol.cloudsession import decode_session_message
from otakey.protocol.messages import Checkin, CloudCredential, MsgType, Offer, decode_body

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def test_regenerated_vectors_are_byte_identical(tmp_path):
    vectors.write_all(tmp_path)
    for name in vectors.GENERATORS:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), name


def test_vector_files_use_sorted_keys_two_space_indent_lowercase_hex():
    for name in vectors.GENERATORS:
        text = (VECTORS / name).read_text()
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
        for entry in load(name).get("messages", []):
            assert entry["message"] == entry["message"].lower()


def test_frame_vectors_encode_and_decode():
    data = load("frames.json")
    channels = set()
    for v in data["frames"]:
        assert framing.encode_frame(v["channel"], h(v["payload"])).hex() == v["encoded"], v["name"]
        assert framing.FrameDecoder().feed(h(v["encoded"])) == [framing.Frame(v["channel"], h(v["payload"]))]
        channels.add(v["channel"])
    assert channels == {1, 2, 3}
    assert any(len(h(v["payload"])) == 4096 for v in data["frames"])


def test_bad_frame_vectors_give_their_documented_error():
    for v in load("frames.json")["bad_frames"]:
        events = framing.FrameDecoder().feed(h(v["encoded"]))
        assert len(events) == 1 and isinstance(events[0], FrameError), v["name"]
        assert events[0].code == v["error"], v["name"]


def test_stream_vectors_give_their_events():
    for v in load("frames.json")["streams"]:
        got = [{"error": e.code} if isinstance(e, FrameError)
               else {"channel": e.channel, "payload": e.payload.hex()}
               for e in framing.FrameDecoder().feed(h(v["bytes"]))]
        assert got == v["events"], v["name"]


def test_envelope_vectors_seal_and_open():
    data = load("envelopes.json")
    types = set()
    for v in data["messages"]:
        header = env.Header(v["type"], v["key_kind"], v["key_ref"], h(v["device_id"]), h(v["nonce_d"]),
                            h(v["nonce_a"]))
        assert env.seal(header, h(v["root"]), h(v["iv"]), h(v["body"])).hex() == v["message"], v["name"]
        root = h(v["root"])
        got_header, body = env.open_message(h(v["message"]), lambda _h, r=root: r)
        assert got_header == header and body.hex() == v["body"]
        decode_body(v["type"], body)
        types.add(v["type"])
    assert types == {int(t) for t in MsgType if t != MsgType.ERROR}
    assert {len(h(v["body"])) for v in data["messages"]} >= {0, 15, 16, 17}
    assert max(len(h(v["body"])) for v in data["messages"]) > 2800


def test_bad_envelope_vectors_are_rejected():
    for v in load("envelopes.json")["bad_messages"]:
        root = h(v["root"])
        with pytest.raises(EnvelopeError) as info:
            env.open_message(h(v["message"]), lambda _h, r=root: r)
        assert v["error"] == "rejected" and info.value.reason == v["reason"], v["name"]


def test_error_vectors_unpack():
    for v in load("envelopes.json")["errors"]:
        e = env.ErrorMessage.unpack(h(v["message"]))
        assert (e.code, e.device_id.hex(), e.nonce_d.hex(), e.nonce_a.hex()) == (
            v["code"], v["device_id"], v["nonce_d"], v["nonce_a"])
        assert h(v["message"])[1] == v["type"] == 0x7F


def test_flow_vectors_verify_with_their_inputs():
    flows = {f["name"]: f for f in load("flows.json")["flows"]}
    assert set(flows) == {"provisioning", "ak_rotation", "cloud_update", "checkin"}
    prov = flows["provisioning"]
    i = prov["inputs"]
    shared = env.x25519_shared(h(i["device_eph_priv"]), env.x25519_public(h(i["agent_eph_priv"])))
    ak = env.derive_ak(shared, h(i["nonce_d"]), h(i["nonce_a"]), h(i["device_id"]), i["po_name"].encode())
    assert ak.hex() == prov["derived"]["ak"] == prov["keystore_after"]["ak"]
    assert env.fingerprint(ak).hex() == prov["derived"]["ak_fp"]
    keys = {0: h(i["pk"]), 1: ak}
    ivs = []
    for m in prov["messages"]:
        header, _ = env.open_message(h(m["message"]), lambda hd: keys[hd.key_kind])
        ivs.append(h(m["message"])[52:68].hex())
        assert header.device_id.hex() == i["device_id"]
    assert ivs == i["ivs"]
    draws = prov["device_rng_draws"]
    assert [d["what"] for d in draws] == ["nonce_d", "eph_priv", "iv", "iv"]
    assert draws[0]["hex"] == i["nonce_d"] and draws[1]["hex"] == i["device_eph_priv"]

    rot = flows["ak_rotation"]
    r = rot["inputs"]
    offer_hdr, offer_body = env.open_message(h(rot["messages"][1]["message"]), lambda _h: h(r["ak"]))
    shared = env.x25519_shared(h(r["device_eph_priv"]), Offer.decode(offer_body).eph_pub)
    ak2 = env.derive_ak(shared, h(r["nonce_d"]), offer_hdr.nonce_a, h(r["device_id"]), r["po_name"].encode())
    assert ak2.hex() == rot["derived"]["ak"]
    for m in rot["messages"][2:]:
        assert env.open_message(h(m["message"]), lambda _h: ak2)[0].key_ref == 2

    cloud = flows["cloud_update"]
    _, body = env.open_message(h(cloud["messages"][1]["message"]), lambda _h: h(cloud["inputs"]["ak"]))
    assert body.hex() == cloud["inputs"]["new_credential"]
    assert env.fingerprint(CloudCredential.decode(body).secret).hex() == cloud["derived"]["cloud_fp"]

    chk = flows["checkin"]
    _, body = env.open_message(h(chk["messages"][0]["message"]), lambda _h: h(chk["inputs"]["ak"]))
    assert body.hex() == chk["derived"]["checkin_body"]
    assert Checkin.decode(body).app_hash.hex() == chk["inputs"]["app_hash"]


def _state(d: dict) -> keystore.KeystoreState:
    cloud = None
    if d["cloud"] is not None:
        c = d["cloud"]
        cloud = CloudCredential(c["version"], c["platform"], c["endpoint"], c["client_id"], c["username"],
                                h(c["secret"]))
    return keystore.KeystoreState(d["generation"], d["po_id"], d["po_name"],
                                  h(d["pk"]) if d["pk"] else None, d["ak_version"],
                                  h(d["ak"]) if d["ak"] else None, cloud)


def test_keystore_vectors_decode_encode_and_boot():
    data = load("keystore.json")
    size = data["area_size"]
    for v in data["records"]:
        state = _state(v["state"])
        assert keystore.encode_record(state).hex() == v["image"], v["name"]
        assert keystore.decode_record(h(v["image"]).ljust(size, b"\xff")) == state
    for v in data["bad_records"]:
        with pytest.raises(KeystoreError) as info:
            keystore.decode_record(h(v["image"]).ljust(size, b"\xff"))
        assert info.value.why == v["why"], v["name"]
    for v in data["boot_cases"]:
        r = keystore.boot(h(v["area_a"]).ljust(size, b"\xff"), h(v["area_b"]).ljust(size, b"\xff"))
        assert (r.active, r.scrub) == (v["active"], v["scrub"]), v["name"]
    for v in data["commits"]:
        areas = (h(v["area_a"]).ljust(size, b"\xff"), h(v["area_b"]).ljust(size, b"\xff"))
        plan = keystore.commit(areas, _state(v["state"]))
        got = [{"op": o.op, "area": o.area, "offset": o.offset, "data": o.data.hex()} for o in plan.ops]
        assert got == v["ops"], v["name"]


def test_body_vectors_decode():
    data = load("bodies.json")
    for v in data["cloud_credentials"]:
        assert CloudCredential.decode(h(v["encoded"])).encode().hex() == v["encoded"]
    for v in data["bad_cloud_credentials"]:
        with pytest.raises(EnvelopeError):
            CloudCredential.decode(h(v["encoded"]))
    for v in data["checkins"]:
        c = Checkin.decode(h(v["encoded"]))
        assert c.ak_fp.hex() == v["fields"]["ak_fp"] and c.last_error == v["fields"]["last_error"]
    for v in data["bad_checkins"]:
        with pytest.raises(EnvelopeError):
            Checkin.decode(h(v["encoded"]))
    for v in data["bodies"]:
        assert decode_body(v["type"], h(v["encoded"])) is not None
    for v in data["session_messages"]:
        assert decode_session_message(h(v["encoded"])).encode().hex() == v["encoded"]
    for v in data["bad_session_messages"]:
        with pytest.raises(ProtocolError):
            decode_session_message(h(v["encoded"]))
