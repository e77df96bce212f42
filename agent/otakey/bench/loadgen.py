"""The load generator: protocol-level simulated devices (:class:`~otakey.harness.protocol_device.
ProtocolDevice`), thousands per process, spread over worker processes, each device on its own TCP
connection to a real agent process.

The parent drives the workers phase by phase over a pipe (``connect``, ``op``, ``close``), so the
devices — their keystores, nonces and connections — live on between phases, like real devices
between two key updates. Every phase answers with what it measured: per-device latency, bytes on
the wire both ways (whole frames: COBS, channel byte, CRC and delimiter included), outcomes, and
the worker's own CPU time.

A device works towards a goal and repeats what it must after a failure, as the firmware does:

- ``prov``: stage 2 (PK → AK v1);
- ``ak``: one AK rotation (version + 1);
- ``cloud``: one cloud credential more (the first one, or a rotation), tested by a real session
  with the cloud before the confirm;
- ``checkin``: one check-in (proves agent and device agree on the keys).

When the goal's key is already committed but the last answer was lost (the agent may have died
after answering), a check-in settles it instead of starting over, so a retry never asks for a second
new key. With several agents, a device whose agent stopped answering goes to the next one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import resource
import signal
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from otakey.harness.protocol_device import ProtocolDevice, SessionOpener, mqtt_opener
from otakey.protocol.cloudsession import SessionOpen, SessionResult, SessionStatus
from otakey.protocol.framing import Channel, encode_frame
from otakey.protocol.keystore import KeystoreState

OPS = ("prov", "ak", "cloud", "checkin")
RETRY_PAUSE = 0.05  # seconds before a device repeats after ERROR(RETRY)


@dataclass(frozen=True)
class FleetKeys:
    """How a benchmark's devices are made. IDs (and the AK v1 of devices seeded straight into the
    store) derive from ``seed``, so every process rebuilds the same devices without keys being
    passed around."""

    seed: bytes = field(repr=False)
    po_id: int
    po_name: str
    pk: bytes = field(repr=False)

    def device_id(self, index: int) -> bytes:
        return hmac.new(self.seed, b"id" + index.to_bytes(8, "big"), hashlib.sha256).digest()[:12]

    def ak(self, index: int) -> bytes:
        return hmac.new(self.seed, b"ak" + index.to_bytes(8, "big"), hashlib.sha256).digest()

    def state(self, index: int, seeded: bool) -> KeystoreState:
        """The device's first keystore record: the factory one (PK), or AK v1 when the benchmark
        seeded the device into the store as provisioned."""
        if seeded:
            return KeystoreState(generation=2, po_id=self.po_id, po_name=self.po_name, ak_version=1,
                                 ak=self.ak(index))
        return KeystoreState(generation=1, po_id=self.po_id, po_name=self.po_name, pk=self.pk)


@dataclass(frozen=True)
class WorkerSpec:
    keys: FleetKeys
    indices: tuple[int, ...]
    host: str
    ports: tuple[int, ...]          # agents; device i starts on ports[i % len(ports)]
    seeded: bool                    # devices start with AK v1 (else with the factory PK)
    cloud: str = "none"             # how test sessions are opened: none, mosquitto, aws-iot
    aws_endpoint: str = ""          # the moto server, for aws-iot sessions
    timeout: float = 15.0           # seconds a device waits for one answer
    nofile: int = 0                 # raise the open-files limit to this


def frame_size(message: bytes) -> int:
    return len(encode_frame(Channel.AGENT, message))


# --------------------------------------------------------------------------------- cloud sessions


def aws_thing_opener(endpoint_url: str, region: str = "us-east-1") -> SessionOpener:
    """A test session against a control plane without MQTT (moto): it "connects" when the
    certificate the device holds is ACTIVE and attached to the device's thing. Looks at the
    thing's principals only (``aws_control_opener`` lists every certificate, which grows with the
    fleet)."""
    local = threading.local()

    def client() -> Any:
        iot = getattr(local, "iot", None)
        if iot is None:
            import boto3

            iot = local.iot = boto3.client("iot", region_name=region, endpoint_url=endpoint_url,
                                           aws_access_key_id="testing", aws_secret_access_key="testing")
        return iot

    def check(request: SessionOpen) -> SessionResult:
        cred = request.credential
        iot = client()
        pem = cred.secret.decode(errors="replace")
        for arn in iot.list_thing_principals(thingName=cred.client_id).get("principals", []):
            cert_id = arn.rsplit("/", 1)[-1]
            desc = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
            if desc["certificatePem"].strip() in pem:
                ok = desc["status"] == "ACTIVE"
                return SessionResult(request.request_id,
                                     SessionStatus.CONNECTED if ok else SessionStatus.REFUSED, desc["status"])
        return SessionResult(request.request_id, SessionStatus.REFUSED, "unknown certificate")

    async def opener(request: SessionOpen) -> SessionResult:
        return await asyncio.to_thread(check, request)

    return opener


async def _no_cloud(request: SessionOpen) -> SessionResult:
    return SessionResult(request.request_id, SessionStatus.UNREACHABLE, "no cloud in this benchmark")


# --------------------------------------------------------------------------------- one device


class BenchDevice:
    """A ProtocolDevice with what the benchmark keeps about it."""

    __slots__ = ("dev", "index", "port_slot", "session_s")

    def __init__(self, spec: WorkerSpec, index: int, opener: SessionOpener) -> None:
        self.index = index
        self.port_slot = index % len(spec.ports)
        self.session_s = 0.0

        async def timed(request: SessionOpen) -> SessionResult:
            t = time.perf_counter()
            try:
                return await opener(request)
            finally:
                self.session_s += time.perf_counter() - t

        self.dev = ProtocolDevice(spec.keys.device_id(index), spec.keys.state(index, spec.seeded),
                                  host=spec.host, port=spec.ports[self.port_slot], opener=timed,
                                  timeout=spec.timeout)

    async def next_agent(self, ports: tuple[int, ...]) -> None:
        if len(ports) > 1:
            await self.dev.close()
            self.port_slot = (self.port_slot + 1) % len(ports)
            self.dev.port = ports[self.port_slot]

    def reached(self, op: str, target: int) -> bool:
        d = self.dev
        if op == "prov":
            return not d.has_pk and (d.ak_version or 0) >= 1
        if op == "ak":
            return (d.ak_version or 0) >= target
        if op == "cloud":
            return d.cloud is not None and d.cloud.version >= target
        return False

    def target(self, op: str) -> int:
        d = self.dev
        if op == "ak":
            return (d.ak_version or 0) + 1
        if op == "cloud":
            return (d.cloud.version if d.cloud is not None else 0) + 1
        return 1


async def run_goal(bd: BenchDevice, op: str, ports: tuple[int, ...], max_attempts: int,
                   outcomes: Counter[str]) -> tuple[bool, int]:
    """Work towards ``op``'s goal; (reached, attempts)."""
    d = bd.dev
    target = bd.target(op)
    for attempt in range(1, max_attempts + 1):
        if op == "checkin":
            r = await d.checkin()
        elif bd.reached(op, target):
            # The new key is committed but the agent's last answer was lost: a check-in settles it
            # (the agent activates what the device proves it holds); no second new key.
            r = await d.checkin()
        elif op == "prov":
            r = await d.provision()
        elif op == "ak":
            r = await d.rotate_ak()
        else:
            r = await d.request_cloud()
        outcomes[r.outcome] += 1
        if r.ok and (op == "checkin" or bd.reached(op, target)):
            return True, attempt
        if r.outcome == "timeout":
            await bd.next_agent(ports)
        elif r.outcome == "retry":
            await asyncio.sleep(RETRY_PAUSE)
        elif r.outcome in ("rejected", "refused", "revoked"):
            return False, attempt
    return False, max_attempts


# --------------------------------------------------------------------------------- the worker


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        if spec.cloud == "mosquitto":
            opener: SessionOpener = mqtt_opener
        elif spec.cloud == "aws-iot":
            opener = aws_thing_opener(spec.aws_endpoint)
        else:
            opener = _no_cloud
        self.devices = [BenchDevice(spec, i, opener) for i in spec.indices]

    async def connect(self, concurrency: int) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)
        failed = 0
        t0 = time.perf_counter()

        async def one(bd: BenchDevice) -> None:
            nonlocal failed
            async with gate:
                for _ in range(3):
                    try:
                        await bd.dev.connect()
                        return
                    except (OSError, TimeoutError):
                        await asyncio.sleep(0.2)
                failed += 1

        await asyncio.gather(*(one(bd) for bd in self.devices))
        return {"connected": len(self.devices) - failed, "failed": failed,
                "seconds": time.perf_counter() - t0}

    async def op(self, op: str, inflight: int, max_attempts: int) -> dict[str, Any]:
        if op not in OPS:
            raise ValueError(f"op is one of {OPS}")
        gate = asyncio.Semaphore(inflight)
        marks = [(len(bd.dev.sent), len(bd.dev.answers)) for bd in self.devices]
        for bd in self.devices:
            bd.session_s = 0.0
        outcomes: Counter[str] = Counter()
        latencies: list[float] = []
        attempts: Counter[int] = Counter()
        failed: list[int] = []
        cpu0 = _cpu()
        t0 = time.perf_counter()

        async def one(bd: BenchDevice) -> None:
            async with gate:
                t = time.perf_counter()
                ok, n = await run_goal(bd, op, self.spec.ports, max_attempts, outcomes)
                attempts[n] += 1
                if ok:
                    latencies.append((time.perf_counter() - t) * 1000.0)
                else:
                    failed.append(bd.index)

        await asyncio.gather(*(one(bd) for bd in self.devices))
        seconds = time.perf_counter() - t0
        cpu = _cpu() - cpu0
        # Frame sizes are counted after the timed phase, from what each device sent and received.
        up = down = msgs_up = msgs_down = 0
        for bd, (s0, a0) in zip(self.devices, marks, strict=True):
            sent, answers = bd.dev.sent[s0:], bd.dev.answers[a0:]
            up += sum(frame_size(m) for m in sent)
            down += sum(frame_size(m) for m in answers)
            msgs_up += len(sent)
            msgs_down += len(answers)
        return {"devices": len(self.devices), "ok": len(latencies), "failed": failed,
                "latencies_ms": latencies, "seconds": seconds, "cpu_s": cpu,
                "bytes_up": up, "bytes_down": down, "messages_up": msgs_up, "messages_down": msgs_down,
                "session_s": sum(bd.session_s for bd in self.devices),
                "outcomes": dict(outcomes), "attempts": {str(k): v for k, v in attempts.items()}}

    async def close(self) -> dict[str, Any]:
        for bd in self.devices:
            await bd.dev.close()
        return {"closed": len(self.devices)}

    def states(self) -> dict[str, Any]:
        """Each device's key versions (the parent checks them against the store)."""
        return {bd.dev.device_id.hex(): [bd.dev.ak_version, bd.dev.cloud.version if bd.dev.cloud else None]
                for bd in self.devices}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker_main(conn: Any, spec: WorkerSpec) -> None:
    """Entry of a worker process: answers the parent's commands until ``close``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C and stops us in order
    if spec.nofile:
        from .common import raise_nofile

        raise_nofile(spec.nofile)
    try:
        asyncio.run(_serve(conn, spec))
    except BaseException:
        conn.send(("crash", traceback.format_exc()))
        raise


async def _serve(conn: Any, spec: WorkerSpec) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(spec)
    conn.send(("ready", {"devices": len(worker.devices), "pid": os.getpid()}))
    while True:
        cmd, args = await loop.run_in_executor(None, conn.recv)
        if cmd == "connect":
            conn.send(("done", await worker.connect(int(args.get("concurrency", 100)))))
        elif cmd == "op":
            conn.send(("done", await worker.op(args["op"], int(args["inflight"]), int(args["max_attempts"]))))
        elif cmd == "states":
            conn.send(("done", worker.states()))
        elif cmd == "close":
            conn.send(("done", await worker.close()))
            return
        else:
            conn.send(("crash", f"unknown command {cmd!r}"))
            return


# --------------------------------------------------------------------------------- the parent's side


class Pool:
    """Worker processes holding the devices ``0..devices-1`` (round robin), driven phase by phase.

    ``with Pool(...) as pool: pool.connect(); r = pool.op("ak", inflight=256)``.
    """

    def __init__(self, keys: FleetKeys, devices: int, workers: int, host: str, ports: list[int], *,
                 seeded: bool, cloud: str = "none", aws_endpoint: str = "", timeout: float = 15.0,
                 nofile: int = 0, first: int = 0) -> None:
        import multiprocessing

        if devices < 1 or workers < 1:
            raise ValueError("devices and workers are at least 1")
        self.workers = min(workers, devices)
        ctx = multiprocessing.get_context("spawn")
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        for w in range(self.workers):
            indices = tuple(range(first + w, first + devices, self.workers))
            spec = WorkerSpec(keys, indices, host, tuple(ports), seeded, cloud, aws_endpoint, timeout, nofile)
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, spec), name=f"otakey-bench-{w}", daemon=True)
            self._conns.append(parent)
            self._procs.append(proc)
        self.pids: list[int] = []

    def __enter__(self) -> Pool:
        for p in self._procs:
            p.start()
        for conn in self._conns:
            self.pids.append(int(self._answer(conn, 120.0)["pid"]))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for conn, proc in zip(self._conns, self._procs, strict=True):
            if proc.is_alive():
                try:
                    conn.send(("close", {}))
                except (OSError, BrokenPipeError):
                    pass
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()

    @staticmethod
    def _answer(conn: Any, timeout: float) -> dict[str, Any]:
        from .common import BenchError

        if not conn.poll(timeout):
            raise BenchError(f"a load-generator worker did not answer within {timeout:.0f} s")
        kind, payload = conn.recv()
        if kind == "crash":
            raise BenchError(f"a load-generator worker crashed:\n{payload}")
        return payload  # type: ignore[no-any-return]

    def _all(self, cmd: str, args: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        for conn in self._conns:
            conn.send((cmd, args))
        return [self._answer(conn, timeout) for conn in self._conns]

    def connect(self, concurrency: int = 100, timeout: float = 600.0) -> dict[str, Any]:
        parts = self._all("connect", {"concurrency": concurrency}, timeout)
        return {"connected": sum(p["connected"] for p in parts), "failed": sum(p["failed"] for p in parts),
                "seconds": max(p["seconds"] for p in parts)}

    def op(self, op: str, inflight: int, max_attempts: int = 8, timeout: float = 3600.0) -> dict[str, Any]:
        """Every device works towards ``op``; ``inflight`` devices at once over all workers."""
        per = max(1, inflight // self.workers)
        parts = self._all("op", {"op": op, "inflight": per, "max_attempts": max_attempts}, timeout)
        merged: dict[str, Any] = {"devices": 0, "ok": 0, "failed": [], "latencies_ms": [], "cpu_s": 0.0,
                                  "bytes_up": 0, "bytes_down": 0, "messages_up": 0, "messages_down": 0,
                                  "session_s": 0.0, "outcomes": Counter(), "attempts": Counter()}
        for p in parts:
            for k in ("devices", "ok", "cpu_s", "bytes_up", "bytes_down", "messages_up", "messages_down",
                      "session_s"):
                merged[k] += p[k]
            merged["failed"] += p["failed"]
            merged["latencies_ms"] += p["latencies_ms"]
            merged["outcomes"].update(p["outcomes"])
            merged["attempts"].update(p["attempts"])
        merged["outcomes"] = dict(merged["outcomes"])
        merged["attempts"] = dict(merged["attempts"])
        return merged

    def states(self, timeout: float = 120.0) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in self._all("states", {}, timeout):
            out.update(part)
        return out
