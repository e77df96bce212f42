#!/usr/bin/env python3
"""Seed corpora for the libFuzzer harnesses in fuzz/, from tests/vectors/*.json.

Usage: python3 fuzz/make_corpus.py [--out DIR] [TARGET ...]   (default DIR: build/fuzz/corpus)

Writes DIR/<target>/seed-<name>-<sha1>; never deletes anything, so the inputs libFuzzer added to
the same directory in earlier runs stay. Each target's input layout is the one its harness
documents at the top of fuzz/<target>.c; the builders below follow those layouts byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "vectors"
sys.path.insert(0, str(REPO / "agent"))

from otakey.protocol.envelope import pkcs7_pad  # noqa: E402
from otakey.protocol.framing import encode_frame  # noqa: E402

Seeds = Iterator[tuple[str, bytes]]

AGENT, CLOUD, CONSOLE = 1, 2, 3


def load(name: str) -> dict:
    return json.loads((VECTORS / f"{name}.json").read_text())


def hx(s: str | None) -> bytes:
    return bytes.fromhex(s or "")


# --- fuzz_frame: a raw byte stream (and channel ‖ payload for the encoders) ------------------


def frame_seeds() -> Seeds:
    fr = load("frames")
    every = b""
    for f in fr["frames"]:
        yield f"frame-{f['name']}", hx(f["encoded"])
        every += hx(f["encoded"])
    for f in fr["bad_frames"]:
        yield f"bad-{f['name']}", hx(f["encoded"])
    for s in fr["streams"]:
        yield f"stream-{s['name']}", hx(s["bytes"])
    yield "all-frames", every[:4900]
    env = load("envelopes")
    for m in env["messages"]:
        yield f"agent-{m['name']}", encode_frame(AGENT, hx(m["message"]))
    for m in load("bodies")["session_messages"]:
        yield f"cloud-{m['name']}", encode_frame(CLOUD, hx(m["encoded"]))
    yield "console-line", encode_frame(CONSOLE, b"OTA-Key fw 1.0.0 keys=none\n")
    # Around the size limits: the largest frame, and one byte too long before its delimiter.
    big = encode_frame(AGENT, bytes(range(1, 256)) * 16 + bytes(range(1, 17)))
    yield "max-payload", big
    yield "too-long-then-frame", b"\x01" * 4119 + b"\x00" + hx(fr["frames"][0]["encoded"])
    yield "garbage-flush-frame", b"\xff\x13\x37\x00" + hx(fr["frames"][0]["encoded"])


# --- fuzz_message: mode byte ‖ mode input -------------------------------------------------


def message_seeds() -> Seeds:
    env = load("envelopes")
    for m in env["messages"]:
        yield f"raw-{m['name']}", b"\x00" + hx(m["message"])
    for m in env["bad_messages"]:
        yield f"raw-bad-{m['name']}", b"\x00" + hx(m["message"])
    for m in env["errors"]:
        yield f"raw-error-{m['name']}", b"\x00" + hx(m["message"])
    for i, m in enumerate(env["messages"]):
        msg = hx(m["message"])
        header, iv, body = msg[:52], hx(m["iv"]), hx(m["body"])
        seal = (bytes([m["type"], m["key_kind"]]) + struct.pack("<I", m["key_ref"]) + hx(m["device_id"])
                + hx(m["nonce_d"]) + hx(m["nonce_a"]) + iv)
        # flip position/mask: none for the plain round trip, then one byte of each region.
        yield f"seal-{m['name']}", b"\x01" + seal + struct.pack("<HB", 0, 0) + body
        pos = (5, 60, 80, len(msg) - 1)[i % 4]
        yield f"seal-flip-{m['name']}", b"\x01" + seal + struct.pack("<HB", pos, 1 << (i % 8)) + body
        yield f"plain-{m['name']}", b"\x02" + header + iv + pkcs7_pad(body)
    # Padding edge cases under a valid MAC: a full pad block, a zero pad byte, a pad of 17.
    head = hx(env["messages"][0]["message"])[:52]
    yield "plain-pad16", b"\x02" + head + bytes(16) + bytes(32) + b"\x10" * 16
    yield "plain-pad0", b"\x02" + head + bytes(16) + bytes(47) + b"\x00"
    yield "plain-pad17", b"\x02" + head + bytes(16) + bytes(31) + b"\x11" * 17


# --- fuzz_keystore: mode byte ‖ mode input ------------------------------------------------


def _trim(area: bytes) -> bytes:
    return area.rstrip(b"\xff")  # the harness plants into an erased area


def keystore_seeds() -> Seeds:
    ks = load("keystore")
    for r in ks["records"]:
        img = hx(r["image"])
        yield f"image-{r['name']}", b"\x00" + img
        yield f"rehash-{r['name']}", b"\x02" + img
        plen = struct.unpack_from("<H", img, 14)[0]
        yield f"payload-{r['name']}", b"\x01" + img[8:12] + img[16 : 16 + plen]
    for r in ks["bad_records"]:
        img = hx(r["image"])
        yield f"image-bad-{r['name']}", b"\x00" + img
        yield f"rehash-bad-{r['name']}", b"\x02" + img
    cases = [(c["name"], hx(c["area_a"]), hx(c["area_b"])) for c in ks["boot_cases"]]
    cases += [(c["name"], hx(c["area_a"]), hx(c["area_b"])) for c in ks["commits"]]
    # flags: 0 load only; 0x04 commit; 0x0C commit dropping PK (provisioning); 0x14 with a cloud
    # credential; cut modes 1..3 in bits 5-6 at operation cut_n.
    variants = [(0x00, 0), (0x04, 0), (0x0C, 0), (0x14, 40), (0x04 | 0x20, 3), (0x0C | 0x40, 14),
                (0x14 | 0x60, 0), (0x0C | 0x60, 29)]
    for i, (name, a, b) in enumerate(cases):
        a, b = _trim(a), _trim(b)
        flags, cut_n = variants[i % len(variants)]
        yield f"flash-{name}", b"\x03" + struct.pack("<BHBH", flags, cut_n, i, len(a)) + a + b
        flags, cut_n = variants[(i + 3) % len(variants)]
        yield f"flash2-{name}", b"\x03" + struct.pack("<BHBH", flags, cut_n, i, len(a)) + a + b


# --- fuzz_cloud: one credential -----------------------------------------------------------


def cloud_seeds() -> Seeds:
    bodies = load("bodies")
    for c in bodies["cloud_credentials"]:
        yield f"cred-{c['name']}", hx(c["encoded"])
    for c in bodies["bad_cloud_credentials"]:
        yield f"bad-{c['name']}", hx(c["encoded"])
    for b in bodies["bodies"]:
        if b["type"] == 0x21:
            yield f"body-{b['name']}", hx(b["encoded"])


# --- fuzz_device: ks_kind ‖ rng_seed ‖ commands -------------------------------------------


class Script:
    """Builds a fuzz_device command script (layout at the top of fuzz/fuzz_device.c)."""

    def __init__(self, kind: int, seed: int = 7) -> None:
        self.out = bytearray([kind, seed])
        self.n = 0

    def raw(self, data: bytes) -> Script:
        for i in range(0, len(data), 255):
            chunk = data[i : i + 255]
            self.out += bytes([0, len(chunk)]) + chunk
        return self

    def tick(self, dt: int) -> Script:
        self.out += b"\x01" + struct.pack("<H", dt)
        return self

    def agent(self, mtype: int, body: bytes = b"", *, structured: bool = True, next_version: bool = True,
              flags: int = 0) -> Script:
        f = 0x01 | flags | (0x40 if structured else 0) | (0x80 if next_version else 0)
        self.out += bytes([2, f, mtype])
        if f & 0x04:
            self.out += struct.pack("<I", 99)
        if f & 0x08:
            self.out += bytes(range(12))
        if f & 0x10:
            self.out += bytes(range(16))
        self.n += 1
        self.out += bytes([0xA0 + self.n]) * 16 + bytes([0x30 + self.n]) * 16  # nonce_a, iv
        if structured:
            self.out += body
        else:
            self.out += struct.pack("<H", len(body)) + body
        return self

    def offer(self, mtype: int) -> Script:
        return self.agent(mtype, bytes(range(0x21, 0x41)))  # X25519 scalar

    def cloud_update(self, secret: bytes = b"pw-0123456789", client_id: bytes = b"86f80f160c2883971990566f",
                     next_version: bool = True, version: int = 2) -> Script:
        body = b"" if next_version else struct.pack("<I", version)
        body += b"\x00"  # platform 1
        for field in (b"mqtt://127.0.0.1:1883", client_id, client_id):
            body += bytes([len(field)]) + field
        body += struct.pack("<H", len(secret)) + secret
        return self.agent(0x21, body, next_version=next_version)

    def ack(self) -> Script:
        return self.agent(0x04)

    def reply(self, action: int) -> Script:
        return self.agent(0x31, bytes([action]))

    def error(self, code: int, flags: int = 0) -> Script:
        self.out += bytes([3, flags, code])
        if flags & 0x01:
            self.out += struct.pack("<I", 5)
        if flags & 0x02:
            self.out += bytes(12)
        if flags & 0x04:
            self.out += bytes(16)
        return self

    def session(self, status: int, detail: bytes = b"", flags: int = 0) -> Script:
        self.out += bytes([4, flags, status, len(detail)]) + detail
        return self

    def cut(self, n: int, mode: int) -> Script:
        self.out += b"\x05" + struct.pack("<HB", n - 1, mode - 1)
        return self

    def reboot(self) -> Script:
        self.out += b"\x06"
        return self

    def rng(self, fail: bool) -> Script:
        self.out += bytes([7, int(fail)])
        return self

    def bytes(self) -> bytes:
        return bytes(self.out)


def device_seeds() -> Seeds:
    PROV_OFFER, AKROT_OFFER = 0x02, 0x11
    # The whole life of a device: provisioning, first credentials tested and confirmed, a check-in
    # asking for an AK rotation, another asking for new credentials that the cloud refuses.
    life = (Script(0).tick(0).offer(PROV_OFFER).ack().tick(0).cloud_update().session(0).ack()
            .tick(6000).reply(1).tick(0).offer(AKROT_OFFER).ack().tick(6000).reply(2).tick(0)
            .cloud_update(b"second-secret").session(1, b"refused").ack())
    yield "life", life.bytes()
    yield "provisioning", Script(0).tick(0).offer(PROV_OFFER).ack().bytes()
    yield "prov-cut-in-commit", Script(0).tick(0).cut(20, 2).offer(PROV_OFFER).tick(3000).bytes()
    yield "prov-cut-scrub", Script(0).tick(0).cut(29, 3).offer(PROV_OFFER).tick(0).offer(PROV_OFFER).bytes()
    yield "prov-cut-commit-word", Script(0).tick(0).cut(28, 2).offer(PROV_OFFER).tick(0).bytes()
    yield "prov-timeout-retry", Script(0).tick(0).tick(1000).tick(1000).offer(PROV_OFFER).bytes()
    yield "prov-error", Script(0).tick(0).error(2).tick(500).tick(1000).bytes()
    yield "prov-rng-fails", Script(0).rng(True).tick(0).rng(False).tick(2000).offer(PROV_OFFER).bytes()
    yield "cloud-first", Script(1).tick(0).cloud_update().session(0).ack().bytes()
    yield "cloud-session-timeouts", (Script(1).tick(0).cloud_update().tick(1000).tick(1000).tick(1000)
                                     .tick(1000).ack().bytes())
    yield "cloud-cut-invalidate", Script(1).tick(0).cloud_update().cut(1, 2).session(1).bytes()
    yield "cloud-cut-commit", Script(1).tick(0).cut(300, 1).cloud_update(b"s" * 1200).reboot().bytes()
    yield "cloud-long-client-id", Script(1).tick(0).cloud_update(client_id=b"c" * 120).session(0).bytes()
    yield "cloud-old-version", Script(2).tick(0).tick(6000).reply(2).tick(0).cloud_update(
        next_version=False, version=1).bytes()
    yield "checkin-revoked", Script(2).tick(0).reply(3).tick(6000).bytes()
    yield "checkin-bad-key", Script(2).tick(0).agent(0x31, bytes([0]), flags=0x02).bytes()
    yield "checkin-foreign-nonce", Script(2).tick(0).agent(0x31, bytes([0]), flags=0x10).bytes()
    yield "rotate-cut", (Script(2).tick(0).reply(1).tick(0).cut(10, 2).offer(AKROT_OFFER).reboot()
                         .tick(0).bytes())
    yield "raw-body", Script(2).tick(0).agent(0x31, bytes(5), structured=False).bytes()
    # The recorded agent messages of every flow as raw link bytes (their MACs are under other keys).
    for fl in load("flows")["flows"]:
        s = Script(0 if fl["name"] == "provisioning" else 2).tick(0)
        for m in fl["messages"]:
            if m["dir"] == "a2d":
                s.raw(encode_frame(AGENT, hx(m["message"])))
        yield f"flow-{fl['name']}", s.bytes()


TARGETS: dict[str, Callable[[], Seeds]] = {
    "fuzz_frame": frame_seeds,
    "fuzz_message": message_seeds,
    "fuzz_keystore": keystore_seeds,
    "fuzz_cloud": cloud_seeds,
    "fuzz_device": device_seeds,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "build" / "fuzz" / "corpus")
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=", ".join(TARGETS))
    args = ap.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    for target in args.targets or list(TARGETS):
        d = args.out / target
        d.mkdir(parents=True, exist_ok=True)
        n = 0
        for name, data in TARGETS[target]():
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]
            (d / f"seed-{safe}-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)
            n += 1
        print(f"{target}: {n} seeds in {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
