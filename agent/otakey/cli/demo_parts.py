"""The pieces ``otakey demo`` is built from: its narrator and timeline, the set-up handed to the
story, a fleet member, a device link that records what an eavesdropper would, and an MQTT
subscriber that watches the broker."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from otakey.errors import Error

STEP_MS = 2_000.0  # device time each device gets per round while the fleet runs
PHASE_TIMEOUT_S = 90.0  # wall time one phase may take
CLONE_DEVICE_MS = 30_000.0  # device time the clone may try before the attack counts as not refused


class DemoError(Error):
    """The demo cannot start or go on; the message says why in one sentence, and the fix."""


# --------------------------------------------------------------------------------------------- output


class Narrator:
    """The story on ``stream``; results of checks are kept for the exit status and the JSON."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.checks: list[dict[str, Any]] = []

    def step(self, title: str) -> None:
        self.stream.write(f"\n== {title}\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        self.stream.write(f"   {text}\n")
        self.stream.flush()

    def check(self, name: str, ok: bool, text: str) -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": text})
        self.say(f"[{'ok' if ok else 'FAILED'}] {text}")
        return bool(ok)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks)


class Timeline:
    """Seconds since the demo started, phases with their batches, and what happened to devices."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.phases: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def phase(self, name: str) -> dict[str, Any]:
        p: dict[str, Any] = {"phase": name, "start": self.now(), "end": None, "batches": []}
        self.phases.append(p)
        return p

    def end(self, phase: dict[str, Any]) -> None:
        phase["end"] = self.now()

    def event(self, kind: str, device: str, detail: str) -> None:
        self.events.append({"t": self.now(), "kind": kind, "device": device, "detail": detail})


# --------------------------------------------------------------------------------------------- set-up


@dataclass
class Setup:
    """What the synchronous set-up started, for the asynchronous part."""

    product: Any  # ProductFile
    elf: Path
    firmware: Any  # FirmwareElf
    device_cls: Any  # type[DeviceBackend]
    devices: list[Any]  # DeviceBackend, powered off
    uids: list[bytes]
    seed: int
    db_url: str
    kek: bytes
    agent_host: str
    agent_port: int
    broker: Any  # MosquittoServer
    aws_url: str


# --------------------------------------------------------------------------------------------- devices


@dataclass
class Member:
    """One device of the demo fleet, with what the demo saw of it."""

    index: int
    name: str
    uid: bytes
    dev: Any  # DeviceBackend
    link: Any = None  # LinkedDevice
    versions: tuple[int | None, int | None, int | None] = (None, None, None)  # ak, cloud, platform
    creds: dict[int, Any] = field(default_factory=dict)  # every cloud credential seen in its flash
    max_ak: int = 0
    max_cloud: int = 0
    cut: dict[str, Any] | None = None
    off_after_cut: bool = False
    fault: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def device_id(self) -> str:
        return self.uid.hex()


def tapped_link_class() -> Any:
    from otakey.harness.linked import LinkedDevice
    from otakey.protocol.framing import Channel, Frame, FrameDecoder
    from otakey.protocol.messages import MsgType

    class TappedLink(LinkedDevice):
        """A device link that also keeps the first PROV_HELLO the device sends: what an eavesdropper
        on the network would record for the replay attack."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._tap = FrameDecoder()
            self.recorded_hello: bytes | None = None

        def _forward(self) -> None:
            data = self.device.read()
            if not data:
                return
            if self.recorded_hello is None:
                for ev in self._tap.feed(data):
                    if (
                        isinstance(ev, Frame)
                        and ev.channel == Channel.AGENT
                        and len(ev.payload) > 1
                        and ev.payload[1] == MsgType.PROV_HELLO
                    ):
                        self.recorded_hello = ev.payload
                        break
            self.gateway.feed_from_device(data)

    return TappedLink


class Monitor:
    """An MQTT subscriber on ``devices/+/status`` as the broker's dynsec admin (whose role may read
    every topic): it sees what each device publishes through its gateway with its own login."""

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        self.host, self.port, self.username, self.password = host, port, username, password
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.messages: list[tuple[float, str, bytes]] = []
        self._client: Any = None

    def start(self, timeout: float = 10.0) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"otakey-demo-{secrets.token_hex(3)}",
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(self.username, self.password)

        def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if not reason.is_failure:
                c.subscribe("devices/+/status", qos=1)

        def on_subscribe(_c: Any, _u: Any, _mid: Any, _reasons: Any, _p: Any) -> None:
            self._subscribed.set()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            with self._lock:
                self.messages.append((time.monotonic(), msg.topic, bytes(msg.payload)))

        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        client.connect(self.host, self.port, keepalive=60)
        client.loop_start()
        self._client = client
        if not self._subscribed.wait(timeout):
            self.stop()
            raise DemoError("the MQTT subscriber could not subscribe to devices/+/status on the broker")

    def senders(self, since: float = 0.0) -> set[str]:
        """Device names (the topic level after ``devices/``) that published since ``since``."""
        with self._lock:
            return {t.split("/")[1] for at, t, _ in self.messages if at >= since and t.count("/") == 2}

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            with contextlib.suppress(Exception):
                self._client.disconnect()
            self._client = None


async def raw_exchange(host: str, port: int, message: bytes, timeout: float = 5.0) -> bytes | None:
    """Send one AGENT message over a fresh TCP connection, as anyone on the network can, and return
    the answer (None when none came)."""
    from otakey.protocol.framing import Channel, Frame, FrameDecoder, encode_frame

    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(encode_frame(Channel.AGENT, message))
        await writer.drain()
        decoder = FrameDecoder()
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    return None
                for ev in decoder.feed(data):
                    if isinstance(ev, Frame) and ev.channel == Channel.AGENT:
                        return ev.payload
    except TimeoutError:
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def platform_name(code: int | None) -> str:
    from otakey.protocol.messages import Platform

    if code is None:
        return "-"
    try:
        return {Platform.MOSQUITTO: "mosquitto", Platform.AWS_IOT: "aws-iot"}.get(Platform(code), str(code))
    except ValueError:
        return str(code)


# --------------------------------------------------------------------------------------------- the story
