"""Robot Framework keyword library: devices running the real firmware, a real agent and real clouds.

Import it as ``Library    otakey.harness.robot_keywords.OtaKeyLibrary`` (``robot --pythonpath
agent``); the device backend comes from the Robot variable ``${BACKEND}`` (``emu`` by default,
``renode`` or ``board``). ``robot_tests/resources/common.resource`` owns setup and teardown.

Keywords with Renode's names behave as Renode users expect — ``Create Terminal Tester``, ``Wait For
Line On Uart``, ``Write Line To Uart``, ``Start Emulation``, ``Reset Emulation``, ``Execute
Command`` — with ``machine=`` and ``testerId=`` to pick a device. The "UART" a tester reads is the
firmware's console (the boot banner and keystore events it prints in CONSOLE frames).

All waiting is in device time (``Run Emulator For    10 s``, ``timeout=`` of the waits): on the
emulator ten seconds of firmware time cost milliseconds, and a test never sleeps.

Domain keywords drive the flows of docs/protocol.md §6 through the agent, like an operator would
(``Rotate Agent Key`` marks the device and lets it check in), and assert with ``... Should ...``.
A cut scheduled with ``Cut Power At Flash Operation`` hits whatever keyword runs the device next;
that keyword then returns with the device off, and ``Power On Device`` brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from robot.api.deco import not_keyword

from otakey.agent.operator import ReleaseSpec, gray_release
from otakey.agent.product_file import ProductFile
from otakey.errors import Error
from otakey.protocol.cloudsession import SessionStatus
from otakey.protocol.messages import CloudCredential, Platform
from otakey.store import Action

from .backend import BACKENDS, DeviceBackend, backend
from .campaign import MODES, OpInfo, campaign_product, chip_torn, describe_ops
from .linked import LinkedDevice
from .stack import Stack, converge, disagreement, product_firmware

T = TypeVar("T")

PLATFORMS = {"mosquitto": int(Platform.MOSQUITTO), "aws-iot": int(Platform.AWS_IOT)}
SLICE_MS = 1000.0  # device time each device runs before the next one gets its turn
DEFAULT_TIMEOUT = "120 s"


class RobotKeywordError(Error):
    """A keyword could not do what it says (the message says why)."""


def _secs(value: str | float | int) -> float:
    from robot.utils import timestr_to_secs

    return float(timestr_to_secs(value))


def _builtin() -> Any:
    from robot.libraries.BuiltIn import BuiltIn

    return BuiltIn()


@dataclass
class _Device:
    name: str
    dev: DeviceBackend
    link: LinkedDevice
    product: str
    uid: bytes
    seen: list[CloudCredential] = field(default_factory=list)  # credentials it held, oldest first
    off_ms: float | None = None  # how long it has been off (others' device time), None while on
    ever_on: bool = False

    def note_credential(self) -> None:
        state = self.dev.decode_keystore().state
        cred = None if state is None else state.cloud
        if cred is not None and (not self.seen or self.seen[-1].secret != cred.secret):
            self.seen.append(cred)


@dataclass
class _Tester:
    device: str
    timeout: float
    seen: int = 0  # console lines already matched past


class OtaKeyLibrary:
    """Devices, agent and clouds for Robot suites. One instance for the whole run (GLOBAL).

    It is also its own listener, so that a suite run on its own (``robot robot_tests/x.robot``, or
    through ``renode-test``, without ``robot_tests/__init__.robot``) still gets what
    ``common.resource`` arranges: the stack starts at the first keyword that needs it, a test's
    devices are removed (and saved when it failed) when it ends, and the stack stops at the end.
    """

    ROBOT_LIBRARY_SCOPE = "GLOBAL"
    ROBOT_LISTENER_API_VERSION = 3

    def __init__(self, backend: str | None = None) -> None:
        self.ROBOT_LIBRARY_LISTENER = self
        self._backend_name = backend
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stack: Stack | None = None
        self._devices: dict[str, _Device] = {}
        self._products: dict[str, tuple[ProductFile, Path]] = {}
        self._testers: list[_Tester] = []
        self._ops: list[OpInfo] = []
        self._power_returns_ms: float | None = None
        self._last_release: dict[str, Any] | None = None
        self._run_id = os.urandom(8).hex()

    # --- plumbing --------------------------------------------------------------------------------
    def _run(self, coro: Awaitable[T]) -> T:
        if self._loop is None:
            raise RobotKeywordError("the test stack is not started (Start Test Stack)")
        return self._loop.run_until_complete(coro)  # type: ignore[arg-type]

    @property
    def stack(self) -> Stack:
        if self._stack is None:
            self.start_test_stack()
        assert self._stack is not None
        return self._stack

    @property
    def backend_name(self) -> str:
        if self._backend_name is None:
            self._backend_name = str(_builtin().get_variable_value("${BACKEND}", "emu"))
        return self._backend_name

    def _device(self, name: str) -> _Device:
        try:
            return self._devices[name]
        except KeyError:
            raise RobotKeywordError(f"no device {name!r} (Create Device first)") from None

    def _pick(self, machine: str = "") -> _Device:
        if machine:
            return self._device(machine)
        if len(self._devices) == 1:
            return next(iter(self._devices.values()))
        raise RobotKeywordError("several devices exist: name one with machine=")

    # --- the stack -------------------------------------------------------------------------------
    def start_test_stack(self, aws: bool = True, quantity: int = 1000) -> None:
        """Start Mosquitto (dynamic security), moto for AWS IoT (``aws``), and an agent serving the
        default PO (``quantity`` devices). Builds (or reuses) the PO's factory image."""
        if self._stack is not None:
            return
        if self.backend_name not in BACKENDS:
            raise RobotKeywordError(
                f"BACKEND must be one of {', '.join(BACKENDS)}, not {self.backend_name!r}"
            )
        self._loop = asyncio.new_event_loop()
        pf = campaign_product()
        pf = ProductFile(pf.po_name, pf.po_id, pf.pk, int(quantity))
        self._products[pf.po_name] = (pf, product_firmware(pf))
        stack = Stack(pf, aws=bool(aws), name="robot")
        self._run(stack.start())
        self._stack = stack

    def stop_test_stack(self) -> None:
        self.reset_emulation()
        if self._stack is not None:
            self._run(self._stack.close())
            self._stack = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def start_device_test(self) -> None:
        """Each test starts without devices, testers, recorded operations or power policy."""
        self.reset_emulation()
        self._ops = []
        self._power_returns_ms = None

    def finish_device_test(self) -> None:
        """Save the artifacts of a failed test into ``${OUTPUT DIR}/<suite>.<test>/``, then remove
        its devices."""
        bi = _builtin()
        if bi.get_variable_value("${TEST STATUS}", "PASS") == "FAIL":
            suite = bi.get_variable_value("${SUITE NAME}", "suite")
            test = bi.get_variable_value("${TEST NAME}", "test")
            self.save_test_artifacts(
                str(Path(bi.get_variable_value("${OUTPUT DIR}", ".")) / _safe(f"{suite}.{test}"))
            )
        self.reset_emulation()

    # --- listener (see the class docstring) ------------------------------------------------------
    @not_keyword
    def end_test(self, data: Any, result: Any) -> None:
        if self._devices:  # the suite's teardown did not run Finish Device Test
            if not result.passed:
                out = Path(_builtin().get_variable_value("${OUTPUT DIR}", "."))
                self.save_test_artifacts(str(out / _safe(f"{result.parent.name}.{result.name}")))
            self.reset_emulation()

    @not_keyword
    def close(self) -> None:
        if self._stack is not None or self._loop is not None:
            self.stop_test_stack()

    def save_test_artifacts(self, folder: str) -> str:
        """Write each device's flash (the whole 2 MB on the emulator, the keystore areas otherwise),
        its console and key state, and the agent's log into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for d in self._devices.values():
            chip = getattr(d.dev, "chip", None)
            if chip is not None:
                (out / f"{d.name}.flash.bin").write_bytes(chip.flash_image())
            else:
                try:
                    (out / f"{d.name}.keystore.bin").write_bytes(
                        d.dev.read_flash("A") + d.dev.read_flash("B")
                    )
                except (Error, NotImplementedError) as exc:
                    (out / f"{d.name}.keystore.txt").write_text(f"could not read the keystore: {exc}\n")
            (out / f"{d.name}.uart.log").write_text("".join(line + "\n" for line in d.link.console))
            info: dict[str, Any] = {
                "uid": d.uid.hex(),
                "backend": self.backend_name,
                "powered": d.dev.powered,
                "device_ms": d.dev.device_ms,
            }
            with contextlib.suppress(Exception):
                info["key_state"] = d.dev.key_state().to_dict()
            if chip is not None:
                info["chip"] = chip.describe()
            (out / f"{d.name}.state.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        if self._stack is not None and self._stack.agent_log.exists():
            shutil.copyfile(self._stack.agent_log, out / "agent.log")
        return str(out)

    # --- products and devices --------------------------------------------------------------------
    def create_product_order(self, name: str, quantity: int = 1000) -> str:
        """A further PO (its own PK, derived from ``name``: a test PO) with its factory image."""
        if name in self._products:
            return name
        po_id = 100 + len(self._products)
        pf = ProductFile(
            name, po_id, hashlib.sha256(f"otakey robot PO {name}".encode()).digest(), int(quantity)
        )
        elf = product_firmware(pf)
        self._run(self.stack.add_product(pf))
        self._products[name] = (pf, elf)
        return name

    def create_device(self, name: str, product: str = "", same_uid_as: str = "", seed: str = "") -> str:
        """A device flashed with a PO's factory image, powered off. Its UID and its RNG seed derive
        from ``name`` (``same_uid_as``: a clone of another device's UID, as an attacker's copy would
        have; its RNG still differs, as two chips' would)."""
        stack = self.stack  # started on first use when no suite setup did
        if name in self._devices:
            raise RobotKeywordError(f"device {name!r} exists already")
        po = product or campaign_product().po_name
        if po not in self._products:
            raise RobotKeywordError(f"no product order {po!r} (Create Product Order)")
        if same_uid_as:
            uid = self._device(same_uid_as).uid
        else:
            # Distinct per run, suite, test and name: the agent remembers every UID it provisioned.
            bi = _builtin()
            where = (
                f"{bi.get_variable_value('${SUITE NAME}', '')}/{bi.get_variable_value('${TEST NAME}', '')}"
            )
            uid = hashlib.sha256(f"otakey-robot:{self._run_id}:{where}:{name}".encode()).digest()[:12]
        rng_seed = (
            int(seed)
            if seed != ""
            else int.from_bytes(hashlib.sha256(f"seed:{self._run_id}:{name}".encode()).digest()[:4], "little")
        )
        elf = self._products[po][1]
        cls = backend(self.backend_name)
        options: dict[str, Any] = {}
        if self.backend_name == "board":
            uid = b""  # a board has the UID it has
            options = {
                "port": os.environ.get("OTAKEY_BOARD_PORT") or None,
                "probe": os.environ.get("OTAKEY_BOARD_PROBE", "openocd"),
            }
        dev = cls.create(elf, uid=uid, seed=rng_seed, name=name, **options)
        link = stack.link(dev)
        self._run(link.start())
        self._devices[name] = _Device(name, dev, link, po, dev.uid)
        return name

    def create_devices(self, count: int, prefix: str = "dev", product: str = "") -> list[str]:
        """``count`` devices named ``<prefix>-1`` .. ``<prefix>-N`` (UIDs distinct)."""
        return [self.create_device(f"{prefix}-{i}", product=product) for i in range(1, int(count) + 1)]

    def power_on_device(self, name: str) -> None:
        """Apply power: the firmware boots from flash as the cut left it (SRAM is lost)."""
        d = self._device(name)
        d.dev.power_on()
        d.ever_on = True
        d.off_ms = None
        self._run(d.link.settle())

    def cut_power(self, name: str) -> None:
        """Remove the device's power now."""
        d = self._device(name)
        d.dev.cut_power()
        d.off_ms = 0.0

    def cut_power_at_flash_operation(self, name: str, op: int, torn: str = "none") -> None:
        """Cut when the device reaches its ``op``-th flash operation from now (1 = the next one),
        cleanly before it (``none``), torn in it (``partial``) or just after it (``done``)."""
        if torn not in MODES:
            raise RobotKeywordError(f"torn is one of {', '.join(MODES)}")
        d = self._device(name)
        done = len(d.dev.flash_ops)
        try:
            d.dev.cut_power_at_flash_op(done + int(op), chip_torn(torn))
        except NotImplementedError:
            raise RobotKeywordError(
                f"the {self.backend_name} backend cannot cut at a flash operation"
            ) from None

    def cut_power_at_instruction(self, name: str, count: int) -> None:
        """Cut when the device has executed ``count`` more instructions."""
        d = self._device(name)
        try:
            d.dev.cut_power_at_instruction(d.dev.instructions + int(count))
        except NotImplementedError:
            raise RobotKeywordError(f"the {self.backend_name} backend cannot cut at an instruction") from None

    def power_returns_after(self, delay: str) -> None:
        """From now on a device that lost power gets it back after ``delay`` of device time
        (while ``Run Emulator For`` or a gray release runs)."""
        self._power_returns_ms = _secs(delay) * 1000.0

    # --- Renode's names --------------------------------------------------------------------------
    def start_emulation(self) -> None:
        """Power on every device that never ran, and let each settle."""
        for d in self._devices.values():
            if not d.ever_on:
                self.power_on_device(d.name)

    def reset_emulation(self) -> None:
        """Remove every device and tester (as Renode's keyword clears the emulation)."""
        for d in list(self._devices.values()):
            with contextlib.suppress(Exception):
                self._run(d.link.close())
            with contextlib.suppress(Exception):
                d.dev.close()
        self._devices.clear()
        self._testers.clear()

    def execute_command(self, command: str, machine: str = "") -> str:
        """A Renode monitor command. On ``renode`` it goes to Renode's monitor; elsewhere only
        ``emulation RunFor "SECONDS"`` is understood (device time for every device)."""
        if self.backend_name == "renode":
            # All machines share one Renode monitor: any device's session reaches it.
            devices = [self._device(machine)] if machine else list(self._devices.values())
            session = getattr(devices[0].dev, "session", None) if devices else None
            if session is None:
                raise RobotKeywordError("no Renode device exists yet (Create Device)")
            if machine:
                session.execute(f'mach set "{machine}"')
            return str(session.execute(command))
        m = re.fullmatch(r'\s*emulation\s+RunFor\s+"?([0-9.:]+)"?\s*', command)
        if not m:
            raise RobotKeywordError(
                f"the {self.backend_name} backend understands only `emulation RunFor`, not {command!r}"
            )
        value = m.group(1)
        seconds = sum(float(p) * 60**i for i, p in enumerate(reversed(value.split(":"))))
        self.run_emulator_for(f"{seconds} s")
        return ""

    def create_terminal_tester(
        self, uart: str = "sysbus.usart1", machine: str = "", timeout: str = "10 s"
    ) -> int:
        """A tester on the device's console; returns its ``testerId``. Lines already printed count:
        the first wait also sees the boot banner."""
        d = self._pick(machine)
        self._testers.append(_Tester(d.name, _secs(timeout)))
        return len(self._testers) - 1

    def _tester(self, tester_id: str | int = "") -> _Tester:
        if not self._testers:
            raise RobotKeywordError("no terminal tester (Create Terminal Tester)")
        return self._testers[-1 if tester_id in ("", None) else int(tester_id)]

    def wait_for_line_on_uart(
        self,
        content: str,
        timeout: str = "",
        testerId: str = "",
        treatAsRegex: bool = False,
        machine: str = "",
    ) -> str:
        """Run the device (device time) until its console prints a line containing ``content``
        (a regular expression with ``treatAsRegex``); fail after ``timeout``. Returns the line."""
        tester = self._tester(testerId)
        d = self._device(machine or tester.device)
        limit = _secs(timeout) if timeout else tester.timeout
        pattern = re.compile(content if treatAsRegex else re.escape(content))

        def hit() -> bool:
            return any(pattern.search(line) for line in d.link.console[tester.seen :])

        if not hit() and d.dev.powered:
            self._run(d.link.run_until(hit, limit * 1000.0))
        for i, line in enumerate(d.link.console[tester.seen :], tester.seen):
            if pattern.search(line):
                tester.seen = i + 1
                return line
        raise AssertionError(
            f"{d.name}: no console line {'matching' if treatAsRegex else 'containing'} "
            f"{content!r} within {limit:g} s of device time; last lines: {d.link.console[-3:]}"
        )

    def write_line_to_uart(self, content: str, testerId: str = "", machine: str = "") -> None:
        """Bytes to the device's USART1 (the firmware drops what is not a valid frame)."""
        d = (
            self._device(machine or self._tester(testerId).device)
            if (testerId or self._testers)
            else self._pick(machine)
        )
        d.dev.write(content.encode() + b"\n")
        self._run(d.link.settle())

    # --- time ------------------------------------------------------------------------------------
    def run_emulator_for(self, duration: str, machine: str = "") -> None:
        """Let ``duration`` of device time pass for every powered device (or one), carrying their
        traffic; devices take turns in one-second slices."""
        total = _secs(duration) * 1000.0
        devices = [self._device(machine)] if machine else list(self._devices.values())
        passed = 0.0
        while passed < total:
            step = min(SLICE_MS, total - passed)
            self._run(self._advance_all(devices, step))
            passed += step

    async def _advance_all(self, devices: list[_Device], ms: float) -> None:
        for d in devices:
            if not d.dev.powered:
                if d.ever_on and self._power_returns_ms is not None:
                    # An off device has no clock of its own: its wait is counted in the others' time.
                    d.off_ms = (d.off_ms or 0.0) + ms
                    if d.off_ms >= self._power_returns_ms:
                        d.dev.power_on()
                        d.off_ms = None
                        await d.link.settle()
                continue
            await d.link.advance(ms)
            d.note_credential()

    # --- flows -----------------------------------------------------------------------------------
    def _drive(self, d: _Device, goal: Callable[[], bool], timeout: str) -> bool:
        """Power the device if it never ran, then run until ``goal`` and agreement, or a cut."""
        if not d.ever_on:
            self.power_on_device(d.name)
        elif not d.dev.powered:
            raise RobotKeywordError(f"{d.name} is off (Power On Device)")
        ok = d.dev.powered and self._run(converge(self.stack, d.link, d.uid, goal, _secs(timeout) * 1000.0))
        d.note_credential()
        if not d.dev.powered:
            d.off_ms = 0.0
            _builtin().log(
                f"{d.name}: power cut ({d.link.last.detail if d.link.last else ''}); the device is off"
            )
            return False
        if not ok:
            why = self._run(disagreement(self.stack, d.uid, d.dev))
            raise AssertionError(
                f"{d.name}: did not get there within {timeout} of device time: holds "
                f"{d.dev.key_state().to_dict()} ({why or 'agent agrees'})"
            )
        return True

    def provision_device(self, name: str, timeout: str = DEFAULT_TIMEOUT) -> bool:
        """Stage 2 and the first cloud credentials: run until the device holds AK v1 and a cloud
        credential, has erased its PK, and the agent agrees. False when a scheduled cut hit."""
        d = self._device(name)

        def goal() -> bool:
            k = d.dev.key_state()
            return k.keys == "cloud" and not k.pk_in_flash

        return self._drive(d, goal, timeout)

    def provision_all_devices(self, timeout: str = DEFAULT_TIMEOUT) -> None:
        for name in list(self._devices):
            self.provision_device(name, timeout)

    def _versions(self, d: _Device) -> tuple[int, int, int]:
        k = d.dev.key_state()
        return k.ak_version or 0, k.cloud_version or 0, k.cloud_platform or 0

    def rotate_agent_key(self, name: str, timeout: str = DEFAULT_TIMEOUT) -> bool:
        """Ask the agent to rotate the device's AK (as a gray release does for one device) and run
        until the device holds the next AK version and the agent agrees."""
        d = self._device(name)
        ak, _, _ = self._versions(d)
        self._run(self.stack.request(d.uid, Action.ROTATE_AK))
        return self._drive(d, lambda: (d.dev.key_state().ak_version or 0) > ak, timeout)

    def rotate_cloud_key(self, name: str, timeout: str = DEFAULT_TIMEOUT) -> bool:
        """A new cloud credential on the same platform; until the device holds it and the agent agrees."""
        d = self._device(name)
        _, cloud, _ = self._versions(d)
        self._run(self.stack.request(d.uid, Action.UPDATE_CLOUD))
        return self._drive(d, lambda: (d.dev.key_state().cloud_version or 0) > cloud, timeout)

    def migrate_device_to_cloud(
        self, name: str, platform: str = "aws-iot", timeout: str = DEFAULT_TIMEOUT
    ) -> bool:
        """Move the device to ``platform`` (mosquitto or aws-iot) with the atomic cloud update."""
        if platform not in PLATFORMS:
            raise RobotKeywordError(f"platform is one of {', '.join(PLATFORMS)}")
        d = self._device(name)
        self._run(self.stack.request(d.uid, Action.UPDATE_CLOUD, platform))
        return self._drive(d, lambda: d.dev.key_state().cloud_platform == PLATFORMS[platform], timeout)

    # --- recorded operations -------------------------------------------------------------------
    def record_flash_operations_of(self, flow: str) -> int:
        """Run ``flow`` (provision, ak-rotate, cloud-update) on a scratch device and remember its
        flash operations, for ``Flash Operation Index``. Returns how many there were."""
        scratch = f"scratch-{flow}-{len(self._ops)}"
        self.create_device(scratch)
        d = self._device(scratch)
        try:
            if flow != "provision":
                self.provision_device(scratch)
            start = len(d.dev.flash_ops)
            action = {
                "provision": None,
                "ak-rotate": self.rotate_agent_key,
                "cloud-update": self.rotate_cloud_key,
            }.get(flow, "?")
            if action == "?":
                raise RobotKeywordError("flow is provision, ak-rotate or cloud-update")
            if action is None:
                self.provision_device(scratch)
            else:
                action(scratch)  # type: ignore[operator]
            firmware = getattr(d.dev, "firmware")  # noqa: B009 - every backend keeps its FirmwareElf
            self._ops = describe_ops(d.dev.flash_ops[start:], firmware)
            self._ops = [
                OpInfo(i + 1, o.kind, o.area, o.offset, o.instruction, o.what)
                for i, o in enumerate(self._ops)
            ]
        finally:
            self._run(d.link.close())
            del self._devices[scratch]
        return len(self._ops)

    def flash_operation_index(self, what: str, occurrence: str = "first") -> int:
        """The number (1 = the flow's first) of a recorded operation whose description contains
        ``what`` ("erase of area", "record word", "commit word", "PK scrub erase"); ``occurrence``
        is first, middle, last or a 1-based count."""
        hits = [o for o in self._ops if what in o.what]
        if not hits:
            raise RobotKeywordError(
                f"no recorded flash operation like {what!r} "
                f"(Record Flash Operations Of FLOW first); have: {sorted({o.what for o in self._ops})}"
            )
        pick = {"first": 0, "middle": len(hits) // 2, "last": len(hits) - 1}.get(occurrence)
        return hits[pick if pick is not None else int(occurrence) - 1].index

    # --- fleet -----------------------------------------------------------------------------------
    def gray_release(
        self,
        kind: str = "ak",
        batch_size: int = 5,
        max_failures: str = "0",
        timeout: str = "60 s",
        target: str = "",
        po: str = "",
    ) -> dict[str, Any]:
        """``otakey fleet rotate|migrate`` against the running devices (of PO ``po``): batches
        marked one after the other, each waited for (``timeout`` of wall time), health-checked.
        Devices run meanwhile (with ``Power Returns After`` a cut device comes back). Returns the
        release's report."""
        spec = ReleaseSpec(
            kind=kind,
            batch_size=int(batch_size),
            max_failures=str(max_failures),
            timeout=_secs(timeout),
            poll=0.05,
            target=target or None,
            po=po or None,
        )
        devices = list(self._devices.values())

        async def go() -> dict[str, Any]:
            task = asyncio.ensure_future(gray_release(self.stack.store, spec))
            while not task.done():
                await self._advance_all(devices, SLICE_MS)
                await asyncio.sleep(0)
            return task.result()

        self._last_release = self._run(go())
        _builtin().log(json.dumps(self._last_release, indent=1, default=str))
        return self._last_release

    # --- assertions ------------------------------------------------------------------------------
    def device_should_hold_key_version(
        self, name: str, ak: str = "", cloud: str = "", platform: str = ""
    ) -> None:
        """The device's flash (by the boot rule) holds AK version ``ak``, cloud credential version
        ``cloud`` on ``platform``; empty arguments are not checked."""
        k = self._device(name).dev.key_state()
        want = {"ak": (ak, k.ak_version), "cloud": (cloud, k.cloud_version)}
        for what, (expected, actual) in want.items():
            if expected != "" and int(expected) != (actual or 0):
                raise AssertionError(f"{name}: {what} version is {actual}, not {expected} ({k.to_dict()})")
        if platform and k.cloud_platform != PLATFORMS[platform]:
            raise AssertionError(f"{name}: cloud platform is {k.cloud_platform}, not {platform}")

    def device_should_hold_product_key(self, name: str) -> None:
        k = self._device(name).dev.key_state()
        if not k.pk_in_flash or k.keys != "factory":
            raise AssertionError(f"{name}: holds {k.keys}, PK in flash: {k.pk_in_flash}")

    def device_should_not_hold_product_key(self, name: str) -> None:
        k = self._device(name).dev.key_state()
        if k.pk_in_flash:
            raise AssertionError(f"{name}: a keystore area still holds the PK ({k.to_dict()})")

    def keystore_area_should_be_valid(self, name: str, area: str) -> None:
        k = self._device(name).dev.key_state()
        if not k.valid[0 if area.upper() == "A" else 1]:
            raise AssertionError(f"{name}: keystore area {area} is not valid ({k.to_dict()})")

    def device_should_be_powered_off(self, name: str) -> None:
        if self._device(name).dev.powered:
            raise AssertionError(f"{name} is still powered")

    def last_boot_should_report(self, name: str, keys: str) -> None:
        """The last boot banner on the console says ``keys=<keys>``."""
        banners = self._device(name).link.banners()
        if not banners or banners[-1].keys != keys:
            raise AssertionError(f"{name}: last banner {banners[-1] if banners else None}, not keys={keys}")

    def agent_should_agree_with_device(self, name: str) -> None:
        """The agent's store holds the device's AK and cloud credential, with nothing pending."""
        d = self._device(name)
        why = self._run(disagreement(self.stack, d.uid, d.dev))
        if why:
            raise AssertionError(f"{name}: {why}")

    def cloud_should_accept_device(self, name: str) -> None:
        """The credential in the device's flash connects (through the gateway's session opener)."""
        d = self._device(name)
        state = d.dev.decode_keystore().state
        if state is None or state.cloud is None:
            raise AssertionError(f"{name} holds no cloud credential")
        status = self._run(self.stack.check_credential(state.cloud))
        if status is not SessionStatus.CONNECTED:
            raise AssertionError(
                f"{name}: the cloud refused credential v{state.cloud.version} ({status.name})"
            )

    def cloud_should_refuse_old_key(self, name: str) -> None:
        """Every cloud credential the device held before its current one is refused."""
        d = self._device(name)
        d.note_credential()
        if len(d.seen) < 2:
            raise RobotKeywordError(f"{name} has held one cloud credential so far: nothing old to check")
        for old in d.seen[:-1]:
            status = self._run(self.stack.check_credential(old))
            if status is SessionStatus.CONNECTED:
                raise AssertionError(f"{name}: the old credential v{old.version} is still accepted")

    def anomaly_should_be_raised(self, kind: str, device: str = "") -> None:
        """The agent raised an anomaly of ``kind`` (for ``device``'s UID, if given)."""
        uid = self._device(device).uid if device else None
        found = [
            a
            for a in self._run(self.stack.anomalies())
            if a.kind == kind and (uid is None or a.device_id == uid)
        ]
        if not found:
            raise AssertionError(f"no {kind} anomaly{f' for {device}' if device else ''}")

    def device_should_be_refused(self, name: str, timeout: str = "30 s") -> None:
        """The device keeps asking for an AK and the agent keeps refusing: after ``timeout`` of
        device time it still holds only its PK."""
        d = self._device(name)
        if not d.ever_on:
            self.power_on_device(name)
        self._run(d.link.advance(_secs(timeout) * 1000.0))
        self.device_should_hold_product_key(name)

    def every_device_should_hold_key_version(self, ak: str = "", cloud: str = "") -> None:
        for name in self._devices:
            self.device_should_hold_key_version(name, ak=ak, cloud=cloud)
            self.agent_should_agree_with_device(name)

    def release_should_have_succeeded_for(self, count: int) -> None:
        r = self._last_release
        if r is None:
            raise RobotKeywordError("no gray release ran")
        if r["succeeded"] != int(count) or r["stopped"]:
            raise AssertionError(
                f"release: {r['succeeded']}/{r['devices']} succeeded, stopped={r['stopped']} "
                f"({r['reason']}); failed: {r['failed']}"
            )


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "test"
