"""A device with its gateway: the firmware's link carried to a real agent over TCP, and its cloud
sessions opened by the gateway with exactly the credential the device presents (DESIGN §3).

:class:`LinkedDevice` drives one :class:`~.backend.DeviceBackend` and one
:class:`~otakey.gateway.Gateway` (in-process transport) on the caller's asyncio loop:

- :meth:`LinkedDevice.settle` runs the device until it waits, hands what it sent to the gateway,
  waits until the agent answered and every cloud session was served, and goes on while answers
  arrive — an exchange then takes no device time beyond the instructions it needs;
- :meth:`LinkedDevice.advance` lets device time pass (time-outs, retries, check-ins), stopping
  whenever the device speaks so that its traffic is carried at once;
- :meth:`LinkedDevice.run_until` combines both until a condition holds or a device-time limit.

The device runs on the loop's thread (the emulator is CPU-bound and not thread-safe); the gateway's
network I/O happens between runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from otakey.gateway import Gateway, InProcessTransport
from otakey.gateway.mqtt_session import SessionOpener
from otakey.protocol.cloudsession import SessionStatus

from .backend import DeviceBackend, RunOutcome, RunReason

SLICE_INSTRUCTIONS = 50_000_000  # one run between two looks at the network (~0.1-0.5 s of CPU)
BANNER = re.compile(r"^OTA-Key fw (?P<fw>\d+\.\d+\.\d+) uid=(?P<uid>[0-9a-f]{24}) keys=(?P<keys>\w+) "
                    r"area=(?P<area>A|B|none) gen=(?P<gen>\d+)$")


@dataclass(frozen=True)
class Banner:
    """The boot banner the firmware prints on its console channel (device.c print_banner)."""

    fw_version: str
    uid: bytes
    keys: str
    area: str | None
    generation: int


def parse_banner(line: str) -> Banner | None:
    m = BANNER.match(line.strip())
    if m is None:
        return None
    return Banner(m["fw"], bytes.fromhex(m["uid"]), m["keys"], None if m["area"] == "none" else m["area"],
                  int(m["gen"]))


class LinkedDevice:
    """One device and its gateway to the agent at ``agent_host:agent_port``.

    Lifecycle: ``await start()`` (gateway up; the device is powered on by the caller) → settle /
    advance / run_until → ``await close()`` (gateway closed; the device too when ``owns_device``).
    """

    def __init__(self, device: DeviceBackend, agent_host: str, agent_port: int | None, *,
                 sessions: SessionOpener | None = None, settle_timeout: float = 60.0,
                 owns_device: bool = True, **gateway_options: Any) -> None:
        self.device = device
        self.transport = InProcessTransport(to_device=device.write)
        self.gateway = Gateway(self.transport, agent_host, agent_port, sessions=sessions,
                               name=f"gw-{device.name}", **gateway_options)
        self.settle_timeout = settle_timeout
        self.owns_device = owns_device
        self.last: RunOutcome | None = None

    async def start(self) -> None:
        await self.gateway.start()

    async def close(self) -> None:
        await self.gateway.close()
        if self.owns_device:
            self.device.close()

    async def __aenter__(self) -> LinkedDevice:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- what the gateway saw --------------------------------------------------------------------
    @property
    def console(self) -> list[str]:
        return self.gateway.console_lines

    def banners(self) -> list[Banner]:
        return [b for b in map(parse_banner, self.console) if b is not None]

    def sessions_with(self, status: SessionStatus) -> int:
        return sum(1 for r in self.gateway.session_records if r.status is status)

    # --- driving ---------------------------------------------------------------------------------
    def _forward(self) -> None:
        data = self.device.read()
        if data:
            self.gateway.feed_from_device(data)

    async def settle(self) -> RunOutcome:
        """Run the device and carry its traffic until it waits with nothing in flight.

        Returns the last run's outcome (IDLE normally; FAULT or POWER_CUT end it early).
        """
        while True:
            out = self.device.run_until_idle(SLICE_INSTRUCTIONS)
            self.last = out
            self._forward()
            if out.reason in (RunReason.FAULT, RunReason.POWER_CUT):
                return out
            await self.gateway.settled(self.settle_timeout)
            if self.device.input_pending() or out.reason in (RunReason.BUDGET, RunReason.RESET):
                continue
            return out

    async def advance(self, ms: float) -> RunOutcome:
        """Let ``ms`` of device time pass; whenever the device speaks, carry its traffic first."""
        deadline = self.device.device_ms + ms
        out = RunOutcome(RunReason.BUDGET, 0, 0.0)
        while self.device.device_ms < deadline:
            out = self.device.run_for(deadline - self.device.device_ms, stop_on_output=True)
            self.last = out
            if out.reason in (RunReason.FAULT, RunReason.POWER_CUT):
                self._forward()
                return out
            if out.reason is RunReason.OUTPUT or self.device.input_pending():
                self._forward()
                out = await self.settle()
                if out.reason in (RunReason.FAULT, RunReason.POWER_CUT):
                    return out
                continue
            self._forward()
            break  # BUDGET: the time has passed; IDLE: nothing will happen by time alone
        return out

    async def run_until(self, predicate: Callable[[], bool], max_device_ms: float) -> bool:
        """Settle, then let device time pass until ``predicate()`` holds (checked whenever the
        device waits with nothing in flight) or ``max_device_ms`` of device time went by."""
        deadline = self.device.device_ms + max_device_ms
        out = await self.settle()
        while not predicate():
            if out.reason in (RunReason.FAULT, RunReason.POWER_CUT) or self.device.device_ms >= deadline:
                return False
            out = self.device.run_for(deadline - self.device.device_ms, stop_on_output=True)
            self.last = out
            self._forward()
            if out.reason is RunReason.OUTPUT or self.device.input_pending():
                out = await self.settle()
            elif out.reason is RunReason.IDLE:
                return predicate()
        return True
