"""The story ``otakey demo`` tells, once its servers run and its devices are flashed (see
:mod:`otakey.cli.demo` for the set-up and the output).

:class:`Demo` links every device to the agent through its own gateway, and runs the phases one after
the other — stage 2, cloud credentials, a two-batch gray release of the cloud keys with a power cut,
an AK rotation, a migration to AWS IoT, two attacks — while a subscriber watches the broker. The
devices run in this process, round robin, each given ``STEP_MS`` of device time per round; a gray
release (:func:`otakey.agent.operator.gray_release`) runs as a task on the same loop meanwhile,
exactly as ``otakey fleet rotate`` would against devices in the field. Each phase checks what it
claims against the devices' flash, the agent's store and the broker, and reports through the
:class:`Narrator`; :class:`Timeline` keeps the times for ``otakey report``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

from .demo_parts import (
    CLONE_DEVICE_MS,
    PHASE_TIMEOUT_S,
    STEP_MS,
    Member,
    Monitor,
    Narrator,
    Setup,
    Timeline,
    platform_name,
    raw_exchange,
    tapped_link_class,
)


class PhaseFailed(Exception):
    """A phase did not reach its goal; later phases make no sense without it."""


class Demo:
    """The asynchronous part: devices linked to the agent, phases, checks."""

    def __init__(self, setup: Setup, narr: Narrator, timeline: Timeline, backend_name: str) -> None:
        self.s = setup
        self.narr = narr
        self.tl = timeline
        self.backend_name = backend_name
        self.members = [
            Member(i, f"dev{i + 1}", uid, dev)
            for i, (uid, dev) in enumerate(zip(setup.uids, setup.devices, strict=True))
        ]
        self.store: Any = None
        self.monitor: Monitor | None = None
        self.notes: list[str] = []  # said after the progress bar of a phase is finished
        self.stats: dict[str, int] = {
            "provisioned": 0,
            "pk_erased": 0,
            "cloud_connected": 0,
            "published": 0,
            "power_cuts": 0,
            "power_cuts_recovered": 0,
            "migrated": 0,
            "refused_attacks": 0,
        }
        self.attacks: list[dict[str, Any]] = []

    # --- lifetime --------------------------------------------------------------------------------
    async def main(self) -> dict[str, Any]:
        from otakey.store import open_store

        self.store = await open_store(self.s.db_url, self.s.kek)
        try:
            b = self.s.broker
            self.monitor = Monitor("127.0.0.1", b.port, b.admin_username, b.admin_password)
            await asyncio.to_thread(self.monitor.start)
            await self._link_all()
            try:
                for phase in (
                    self.provision,
                    self.cloud_credentials,
                    self.cloud_rotation,
                    self.ak_rotation,
                    self.migration,
                    self.attacks_phase,
                ):
                    await phase()
            except PhaseFailed as exc:
                self.narr.say(f"stopping here: {exc}")
            fleet = await self.fleet_state()
        finally:
            await self._close()
        return {
            "summary": self.summary(),
            "fleet": fleet,
            "attacks": self.attacks,
            "po_name": self.s.product.po_name,
            "po_id": self.s.product.po_id,
            "backend": self.backend_name,
            "power_cut": next((m.cut for m in self.members if m.cut), None),
        }

    async def _link_all(self) -> None:
        from otakey.gateway.mqtt_session import CloudSessions

        link_cls = tapped_link_class()
        for m in self.members:
            m.link = link_cls(
                m.dev,
                self.s.agent_host,
                self.s.agent_port,
                settle_timeout=30.0,
                sessions=CloudSessions(aws_control=self.s.aws_url),
                on_event=self._gateway_event(m),
            )
            await m.link.start()

    def _gateway_event(self, m: Member) -> Callable[[str, dict[str, Any]], None]:
        def on_event(event: str, _data: dict[str, Any]) -> None:
            # A device opens its test session right after committing a new credential: look at its
            # flash now, so that the timeline has the commit's time rather than the end of the turn.
            if event == "session_result":
                self._observe(m)

        return on_event

    async def _close(self) -> None:
        for m in self.members:
            if m.link is not None:
                with contextlib.suppress(Exception):
                    await m.link.close()
        if self.monitor is not None:
            await asyncio.to_thread(self.monitor.stop)
        if self.store is not None:
            await self.store.close()

    def summary(self) -> dict[str, Any]:
        n = len(self.members)
        return {
            "devices": n,
            **{k: self.stats[k] for k in ("provisioned", "pk_erased", "cloud_connected", "published")},
            "rotated": sum(1 for m in self.members if m.max_ak >= 2 and m.max_cloud >= 2),
            **{
                k: self.stats[k]
                for k in ("power_cuts", "power_cuts_recovered", "migrated", "refused_attacks")
            },
            "seconds": self.tl.now(),
            "ok": self.narr.ok,
            "backend": self.backend_name,
            "po_name": self.s.product.po_name,
        }

    # --- running the fleet -------------------------------------------------------------------------
    def _observe(self, m: Member) -> None:
        state = m.dev.decode_keystore().state
        if state is None:
            return
        cloud = state.cloud
        versions = (
            state.ak_version,
            None if cloud is None else cloud.version,
            None if cloud is None else cloud.platform,
        )
        if versions == m.versions:
            return
        if versions[0] is not None and versions[0] != m.versions[0]:
            self.tl.event("ak", m.name, f"AK v{versions[0]} committed")
        if cloud is not None and versions[1] != m.versions[1]:
            m.creds.setdefault(cloud.version, cloud)
            self.tl.event(
                "cloud", m.name, f"cloud key v{cloud.version} ({platform_name(cloud.platform)}) committed"
            )
            if (
                m.cut is not None
                and "at" in m.cut
                and "recovered_at" not in m.cut
                and cloud.version > m.cut["old_version"]
            ):
                m.cut["recovered_at"] = self.tl.now()
        m.versions = versions
        m.max_ak = max(m.max_ak, versions[0] or 0)
        m.max_cloud = max(m.max_cloud, versions[1] or 0)

    async def _turn(self, m: Member) -> None:
        from otakey.harness.backend import RunReason

        if m.fault:
            return
        if not m.dev.powered:
            if not m.off_after_cut:
                return
            # Its next power-on: SRAM lost, flash as the cut left it.
            m.off_after_cut = False
            m.dev.power_on()
            self.tl.event("power-on", m.name, "power restored after the cut")
        out = await m.link.advance(STEP_MS)
        if out.reason is RunReason.POWER_CUT:
            self._on_cut(m)
        elif out.reason is RunReason.FAULT:
            m.fault = out.detail or "fault"
            self.tl.event("fault", m.name, m.fault)
            self.notes.append(f"{m.name} faulted: {m.fault}")
        self._observe(m)

    async def drive(
        self,
        done: Callable[[], bool],
        tick: Callable[[], None] | None = None,
        members: list[Member] | None = None,
        timeout: float = PHASE_TIMEOUT_S,
    ) -> bool:
        """Give every device ``STEP_MS`` of device time per round (carrying its traffic at once)
        until ``done()`` or ``timeout`` seconds of wall time."""
        deadline = time.monotonic() + timeout
        while True:
            for m in members or self.members:
                if done():
                    return True
                if time.monotonic() > deadline:
                    return False
                await self._turn(m)
                await asyncio.sleep(0)  # the release task and the gateways' I/O run between devices
            if tick is not None:
                tick()

    def _say_notes(self) -> None:
        for n in self.notes:
            self.narr.say(n)
        self.notes.clear()

    async def _release(
        self, spec: Any, phase: dict[str, Any], what: str, order: list[Member]
    ) -> dict[str, Any]:
        """A gray release (``otakey fleet rotate|migrate``) while the fleet runs; its batches go to the
        timeline with their devices and times."""
        from otakey.agent.cliutil import ProgressBar
        from otakey.agent.operator import gray_release

        bar = ProgressBar()
        ends: list[float] = []

        def progress(done: int, total: int, text: str = "", final: bool = False) -> None:
            bar(done, total, f"{what}: {text}", final=final)
            if final:
                ends.append(self.tl.now())  # the release just closed a batch (after its health check)

        task = asyncio.ensure_future(gray_release(self.store, spec, progress))
        try:
            finished = await self.drive(task.done, timeout=spec.timeout * 3 + 10)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        bar.finish()
        if not finished:
            raise PhaseFailed(f"the {what} release did not finish in time")
        report: dict[str, Any] = task.result()
        start = 0
        for i, b in enumerate(report["batches"]):
            names = [m.name for m in order[start : start + b["devices"]]]
            start += b["devices"]
            # The release waited `seconds` for the batch, from marking it to its last device's end.
            end = ends[i] if i < len(ends) else self.tl.now()
            phase["batches"].append(
                {
                    "index": b["index"],
                    "devices": names,
                    "succeeded": b["succeeded"],
                    "failed": b["failed"],
                    "seconds": b["seconds"],
                    "end": end,
                    "start": round(max(phase["start"], end - b["seconds"]), 3),
                }
            )
        self.tl.end(phase)
        return report

    def _span(self, detail: str, phase: dict[str, Any]) -> tuple[float, float]:
        """First and last time an event starting with ``detail`` happened (default: the phase's)."""
        times = [e["t"] for e in self.tl.events if e["detail"].startswith(detail)]
        return (min(times), max(times)) if times else (phase["start"], phase["end"])

    def _last_event_time(self, names: list[str], since: float) -> float:
        times = [e["t"] for e in self.tl.events if e["device"] in names and e["t"] >= since]
        return max(times) if times else self.tl.now()

    # --- phases ----------------------------------------------------------------------------------
    def _provisioned(self, m: Member) -> bool:
        ak, _, _ = m.versions
        return ak is not None and not m.dev.key_state().pk_in_flash

    def _connected(self, m: Member) -> bool:
        from otakey.protocol.cloudsession import SessionStatus

        return m.versions[1] is not None and m.link.sessions_with(SessionStatus.CONNECTED) > 0

    async def provision(self) -> None:
        from otakey.agent.cliutil import ProgressBar

        n = len(self.members)
        self.narr.step(f"Stage 2: {n} devices prove the PK, get their own AK, erase the PK")
        phase = self.tl.phase("provisioning")
        for m in self.members:
            m.dev.power_on()
            self.tl.event("power-on", m.name, "first power-on (factory image)")
        bar = ProgressBar()
        count = lambda: sum(self._provisioned(m) for m in self.members)  # noqa: E731
        ok = await self.drive(lambda: count() == n, tick=lambda: bar(count(), n, "hold their own AK"))
        bar(count(), n, "hold their own AK", final=True)
        bar.finish()
        self.tl.end(phase)
        phase["end"] = self._span("AK v1 committed", phase)[1]
        self._say_notes()
        provisioned = count()
        self.stats["provisioned"] = provisioned
        pk = self.s.product.pk
        erased = [
            m
            for m in self.members
            if pk not in m.dev.read_flash("A")
            and pk not in m.dev.read_flash("B")
            and not m.dev.key_state().pk_in_flash
        ]
        self.stats["pk_erased"] = len(erased)
        aks = {m.dev.decode_keystore().state.ak for m in self.members if m.versions[0] is not None}
        agent_aks = await self._agent_aks()
        agree = all(
            agent_aks.get(m.uid) == m.dev.decode_keystore().state.ak
            for m in self.members
            if m.versions[0] is not None
        )
        self.narr.check(
            "provisioning",
            ok and provisioned == n,
            f"{provisioned}/{n} devices provisioned from the one factory image, "
            f"{len(aks)} distinct AKs; the agent "
            + ("holds the same AK as each device" if agree else "DISAGREES with some devices' AK"),
        )
        self.narr.check(
            "pk-erased",
            len(erased) == n and agree and len(aks) == provisioned,
            f"PK erased on {len(erased)}/{n} devices (searched for in both keystore areas of flash)",
        )
        if provisioned != n:
            raise PhaseFailed("not every device was provisioned")

    async def _agent_aks(self) -> dict[bytes, bytes | None]:
        async def work(tx: Any) -> dict[bytes, bytes | None]:
            out = {}
            for m in self.members:
                d = await tx.get_device(m.uid)
                out[m.uid] = None if d is None else d.ak
            return out

        result: dict[bytes, bytes | None] = await self.store.run(work)
        return result

    async def cloud_credentials(self) -> None:
        from otakey.agent.cliutil import ProgressBar

        n = len(self.members)
        self.narr.step("Cloud credentials: each device commits its own Mosquitto login and publishes with it")
        phase = self.tl.phase("cloud credentials")
        since = time.monotonic() - 3600.0  # the first sessions may have happened during stage 2 already
        bar = ProgressBar()
        count = lambda: sum(self._connected(m) for m in self.members)  # noqa: E731
        ok = await self.drive(
            lambda: count() == n, tick=lambda: bar(count(), n, "connected with their own key")
        )
        bar(count(), n, "connected with their own key", final=True)
        bar.finish()
        self.tl.end(phase)
        # Each device asks for its cloud credentials right after stage 2: the phases overlap.
        phase["start"], phase["end"] = self._span("cloud key v1 ", phase)
        self._say_notes()
        connected = count()
        self.stats["cloud_connected"] = connected
        names = {m.creds[1].client_id for m in self.members if 1 in m.creds}
        assert self.monitor is not None
        deadline = time.monotonic() + 5.0
        while not names <= self.monitor.senders(since) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        seen = names & self.monitor.senders(since)
        self.stats["published"] = len(seen)
        logins = {m.creds[1].username for m in self.members if 1 in m.creds}
        self.narr.check(
            "cloud",
            ok and connected == n,
            f"{connected}/{n} devices committed cloud key v1 and connected with it "
            f"({len(logins)} distinct logins)",
        )
        self.narr.check(
            "publish",
            len(seen) == n,
            f"the subscriber on devices/+/status received the message of {len(seen)}/{n} devices",
        )
        if connected != n:
            raise PhaseFailed("not every device got its cloud credentials")

    def _schedule_cut(self, m: Member) -> None:
        """Cut ``m``'s power in the middle of programming its next keystore record, torn: the update
        erases the spare area first, then programs the record word by word (flash-layout §3)."""
        boot = m.dev.decode_keystore()
        assert boot.active is not None and boot.state is not None and boot.state.cloud is not None
        image = m.dev.read_flash(boot.active)
        payload_len = int.from_bytes(image[0x0E:0x10], "little")
        words = (0x10 + (payload_len + 3) // 4 * 4 + 32 - 4) // 4  # offset 0x04 to the end of the hash
        target = "B" if boot.active == "A" else "A"
        first = len(m.dev.flash_ops) + 1  # the erase of the spare area
        k = first + 1 + words // 2
        m.dev.cut_power_at_flash_op(k, "partial")
        m.cut = {
            "device": m.name,
            "device_id": m.device_id,
            "flash_op": k - first + 1,
            "mode": "torn",
            "target_area": target,
            "record_words": words,
            "old_version": boot.state.cloud.version,
            "scheduled": self.tl.now(),
        }

    def _on_cut(self, m: Member) -> None:
        from otakey.harness.backend import key_state_of

        self.stats["power_cuts"] += 1
        m.off_after_cut = True
        cut = m.cut if m.cut is not None else {"device": m.name}
        m.cut = cut
        op = m.dev.flash_ops[-1]
        area = self.s.firmware.area(cut.get("target_area", "A"))
        offset = op.address - area.address
        words = cut.get("record_words", 0)
        ks = key_state_of((m.dev.read_flash("A"), m.dev.read_flash("B")))
        target_valid = ks.valid[0 if cut.get("target_area") == "A" else 1]
        cut.update(
            {
                "at": self.tl.now(),
                "op_kind": op.kind,
                "offset": offset,
                "in_new_record": op.kind == "program" and 4 <= offset < 4 + 4 * words,
                "boots_into": f"cloud key v{ks.cloud_version}",
                "boot_version": ks.cloud_version,
                "target_valid": target_valid,
            }
        )
        self.tl.event(
            "power-cut",
            m.name,
            f"power cut while programming word +0x{offset:X} of the new "
            f"record in area {cut.get('target_area')} (torn)",
        )
        self.notes.append(
            f"{m.name} lost power while programming word +0x{offset:X} of its new key record "
            f"(area {cut.get('target_area')}, torn); its flash boots into "
            f"cloud key v{ks.cloud_version}, area {cut.get('target_area')} "
            f"{'valid' if target_valid else 'invalid'}"
        )
        m.notes.append("power cut")

    async def _check_refused(self, creds: list[Any]) -> int:
        """How many of ``creds`` the cloud refuses (opened exactly as a gateway would)."""
        from otakey.gateway.mqtt_session import CloudSessions
        from otakey.protocol.cloudsession import SessionOpen, SessionStatus

        sessions = CloudSessions(aws_control=self.s.aws_url)
        results = await asyncio.gather(
            *(sessions(SessionOpen(1, c, f"devices/{c.client_id}/status", b"old key")) for c in creds)
        )
        return sum(r.status is SessionStatus.REFUSED for r in results)

    def _release_order(self) -> list[Member]:
        # The release takes the PO's active devices in device-ID order (operator.all_devices).
        return sorted(self.members, key=lambda m: m.uid)

    async def cloud_rotation(self) -> None:
        from otakey.agent.operator import ReleaseSpec

        n = len(self.members)
        batch = max(1, math.ceil(n / 2))
        order = self._release_order()
        victim = order[batch] if n > 1 else order[0]
        self.narr.step(
            f"Gray release: cloud-key rotation in batches of {batch}; {victim.name} loses power "
            "while writing its new key"
        )
        old = {m.name: m.creds[m.versions[1]] for m in self.members if m.versions[1] is not None}
        can_cut = True
        try:
            self._schedule_cut(victim)
        except NotImplementedError:
            can_cut = False
            self.narr.say(f"the {self.backend_name} backend cannot cut power at a flash operation: no cut")
        phase = self.tl.phase("cloud-key rotation")
        spec = ReleaseSpec(
            kind="cloud", batch_size=batch, max_failures="0", timeout=PHASE_TIMEOUT_S, poll=0.05
        )
        report = await self._release(spec, phase, "cloud keys", order)
        self._say_notes()
        rotated = [m for m in self.members if (m.versions[1] or 0) >= 2]
        self.narr.check(
            "cloud-rotation",
            report["succeeded"] == n and not report["stopped"] and len(rotated) == n,
            f"{report['succeeded']}/{n} devices on cloud key v2 in {len(report['batches'])} batches"
            + (f" (stopped: {report['reason']})" if report["stopped"] else ""),
        )
        if can_cut:
            await self._judge_cut(victim)
        refused = await self._check_refused(list(old.values()))
        self.narr.check(
            "old-cloud-keys",
            refused == len(old),
            f"the broker refuses {refused}/{len(old)} replaced cloud keys (v1)",
        )
        if len(rotated) != n:
            raise PhaseFailed("the cloud-key rotation did not reach every device")

    async def _judge_cut(self, m: Member) -> None:
        from otakey.protocol.cloudsession import SessionStatus

        cut = m.cut or {}
        happened = "at" in cut
        recovered = (
            happened
            and "recovered_at" in cut
            and (m.versions[1] or 0) > cut["old_version"]
            and m.link.sessions_with(SessionStatus.CONNECTED) > 0
        )
        good = (
            happened
            and cut.get("in_new_record")
            and cut.get("boot_version") == cut.get("old_version")
            and not cut.get("target_valid")
            and recovered
        )
        self.stats["power_cuts_recovered"] += bool(good)
        if happened:
            m.notes[-1:] = ["power cut, recovered" if good else "power cut, NOT recovered"]
            self.tl.event(
                "recovered" if good else "not-recovered", m.name, f"cloud key v{m.versions[1]} after the cut"
            )
        self.narr.check(
            "power-cut",
            bool(good),
            f"{m.name}: cut at flash op {cut.get('flash_op')} of its update ({cut.get('op_kind', '-')}"
            f" of the new record, torn) → booted with cloud key v{cut.get('boot_version')}, then "
            f"finished the rotation after its next power-on: cloud key v{m.versions[1]}"
            if happened
            else f"{m.name}: the scheduled power cut never happened",
        )

    async def ak_rotation(self) -> None:
        from otakey.agent.operator import ReleaseSpec

        n = len(self.members)
        self.narr.step("Gray release: AK rotation (a fresh X25519 exchange authenticated by the old AK)")
        before = {m.uid: m.versions[0] for m in self.members}
        phase = self.tl.phase("AK rotation")
        spec = ReleaseSpec(kind="ak", batch_size=n, max_failures="0", timeout=PHASE_TIMEOUT_S, poll=0.05)
        report = await self._release(spec, phase, "AKs", self._release_order())
        self._say_notes()
        moved = [m for m in self.members if (m.versions[0] or 0) > (before[m.uid] or 0)]
        agent_aks = await self._agent_aks()
        agree = sum(agent_aks.get(m.uid) == m.dev.decode_keystore().state.ak for m in self.members)
        self.narr.check(
            "ak-rotation",
            report["succeeded"] == n and len(moved) == n and agree == n,
            f"{len(moved)}/{n} devices on AK v2; the agent holds each device's new AK: {agree}/{n}",
        )
        if len(moved) != n:
            raise PhaseFailed("the AK rotation did not reach every device")

    async def migration(self) -> None:
        from otakey.agent.cliutil import ProgressBar
        from otakey.agent.operator import ReleaseSpec, _mark, _wait
        from otakey.protocol.cloudsession import SessionStatus
        from otakey.protocol.messages import Platform
        from otakey.store import Action

        # Another device than the one that lost power, so that the table shows both stories.
        m = next((x for x in reversed(self.members) if x.cut is None), self.members[-1])
        self.narr.step(f"Migration: {m.name} moves from Mosquitto to AWS IoT with the same atomic update")
        phase = self.tl.phase("migration to AWS IoT")
        old = m.creds.get(m.versions[1] or 0)
        spec = ReleaseSpec(
            kind="cloud", batch_size=1, max_failures="0", timeout=PHASE_TIMEOUT_S, poll=0.05, target="aws-iot"
        )
        bar = ProgressBar()

        # What `otakey fleet migrate` does for each device of a batch, for one device.
        async def go() -> dict[bytes, str]:
            baseline = await self.store.run(lambda tx: _mark(tx, [m.uid], Action.UPDATE_CLOUD, "aws-iot"))
            return await _wait(self.store, baseline, spec, Action.UPDATE_CLOUD, bar, 0, 1, 1)

        task = asyncio.ensure_future(go())
        try:
            await self.drive(task.done, timeout=PHASE_TIMEOUT_S + 10)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        bar(1, 1, "migrated", final=True)
        bar.finish()
        outcome = (
            task.result().get(m.uid, "not finished") if task.done() and not task.cancelled() else "timeout"
        )
        phase["batches"].append(
            {
                "index": 1,
                "devices": [m.name],
                "succeeded": int(outcome == "ok"),
                "failed": int(outcome != "ok"),
                "seconds": round(self.tl.now() - phase["start"], 3),
                "start": phase["start"],
                "end": self._last_event_time([m.name], phase["start"]),
            }
        )
        self.tl.end(phase)
        self._say_notes()
        on_aws = m.versions[2] == Platform.AWS_IOT
        aws_sessions = [
            r
            for r in m.link.gateway.session_records
            if r.platform == Platform.AWS_IOT and r.status is SessionStatus.CONNECTED
        ]
        old_refused = await self._check_refused([old]) if old is not None else 0
        good = outcome == "ok" and on_aws and bool(aws_sessions) and old_refused == 1
        self.stats["migrated"] = int(good)
        if good:
            m.notes.append("migrated to aws-iot")
        self.narr.check(
            "migration",
            good,
            f"{m.name}: cloud key v{m.versions[1]} on {platform_name(m.versions[2])} "
            f"(agent: {outcome}); AWS IoT {'accepted' if aws_sessions else 'did NOT accept'} its "
            f"certificate; Mosquitto {'refuses' if old_refused == 1 else 'still ACCEPTS'} its old login",
        )

    async def attacks_phase(self) -> None:
        self.narr.step("Attacks")
        self.tl.phase("attacks")
        await self._replay()
        await self._clone()
        self.tl.end(self.tl.phases[-1])

    async def _device_record(self, uid: bytes) -> tuple[Any, int]:
        from otakey.store import AuditEvent

        async def work(tx: Any) -> tuple[Any, int]:
            dev = await tx.get_device(uid)
            issued = await tx.list_audit(device_id=uid, event=AuditEvent.ISSUED, limit=100_000)
            return dev, len(issued)

        result: tuple[Any, int] = await self.store.run(work)
        return result

    async def _replay(self) -> None:
        from otakey.protocol.envelope import Header, is_error_message
        from otakey.protocol.messages import MsgType

        victim = next((m for m in self.members if m.link.recorded_hello is not None), None)
        if victim is None:
            self.narr.check("replay", False, "no PROV_HELLO was recorded to replay")
            return
        hello = victim.link.recorded_hello
        header = Header.unpack(hello)
        before, issued_before = await self._device_record(victim.uid)
        answer = await raw_exchange(self.s.agent_host, self.s.agent_port, hello)

        async def stored_answer(tx: Any) -> bytes | None:
            ex = await tx.get_exchange(header.device_id, header.nonce_d, MsgType.PROV_HELLO)
            return None if ex is None else bytes(ex.answer)

        stored = await self.store.run(stored_answer)
        after, issued_after = await self._device_record(victim.uid)
        unchanged = (
            after is not None
            and before is not None
            and after.ak == before.ak
            and after.ak_version == before.ak_version
            and after.ak_pending is None
            and issued_after == issued_before
        )
        if answer is None:
            how = "no answer"
        elif is_error_message(answer):
            how = "an ERROR"
        elif answer == stored:
            how = "only its stored OFFER (the same bytes as the first time)"
        else:
            how = "a NEW answer"
        refused = answer is not None and (is_error_message(answer) or answer == stored) and unchanged
        self.stats["refused_attacks"] += refused
        self.attacks.append(
            {
                "attack": "replayed PROV_HELLO",
                "target": victim.name,
                "refused": refused,
                "detail": f"agent answered with {how}; "
                + ("no new key issued, AK unchanged" if unchanged else "agent state CHANGED"),
            }
        )
        self.tl.event(
            "attack", victim.name, f"replayed PROV_HELLO: {'refused' if refused else 'NOT refused'}"
        )
        self.narr.check(
            "replay",
            refused,
            f"replayed {victim.name}'s recorded PROV_HELLO: the agent answered with {how}; "
            + (
                f"no second AK issued, AK v{after.ak_version if after else '-'} unchanged"
                if unchanged
                else "the agent's state for the device CHANGED"
            ),
        )

    async def _clone(self) -> None:
        from otakey.gateway.mqtt_session import CloudSessions

        genuine = self.members[0]
        before, _ = await self._device_record(genuine.uid)
        dev = self.s.device_cls.create(self.s.elf, uid=genuine.uid, seed=self.s.seed ^ 0x5A5A5A, name="clone")
        clone = Member(len(self.members), "clone", genuine.uid, dev)
        clone.link = tapped_link_class()(
            dev,
            self.s.agent_host,
            self.s.agent_port,
            settle_timeout=30.0,
            sessions=CloudSessions(aws_control=self.s.aws_url),
        )
        found: list[Any] = []

        async def anomaly() -> list[Any]:
            async def work(tx: Any) -> list[Any]:
                return [
                    a
                    for a in await tx.list_anomalies(limit=100_000)
                    if a.kind == "duplicate_provisioning" and a.device_id == genuine.uid
                ]

            result: list[Any] = await self.store.run(work)
            return result

        await clone.link.start()
        try:
            dev.power_on()
            self.tl.event("power-on", "clone", f"a clone with {genuine.name}'s UID boots the factory image")
            device_ms = 0.0
            while not found and device_ms < CLONE_DEVICE_MS:
                await clone.link.advance(STEP_MS)
                device_ms += STEP_MS
                found = await anomaly()
            ks = dev.key_state()
        finally:
            await clone.link.close()
        after, _ = await self._device_record(genuine.uid)
        untouched = (
            before is not None
            and after is not None
            and after.ak == before.ak
            and after.ak_pending is None
            and after.state == before.state
        )
        refused = bool(found) and ks.ak_version is None and untouched
        self.stats["refused_attacks"] += refused
        self.attacks.append(
            {
                "attack": "duplicate ID (clone)",
                "target": genuine.name,
                "refused": refused,
                "detail": f"anomaly {'duplicate_provisioning raised' if found else 'NOT raised'}; "
                f"the clone holds keys={ks.keys}; {genuine.name} "
                f"{'untouched' if untouched else 'CHANGED'} at the agent",
            }
        )
        self.tl.event(
            "attack", "clone", f"duplicate-ID provisioning: {'refused' if refused else 'NOT refused'}"
        )
        self.narr.check(
            "duplicate-id",
            refused,
            f"a clone with {genuine.name}'s UID asked for an AK with the factory PK: refused, "
            f"anomaly {'duplicate_provisioning raised' if found else 'NOT raised'}, the clone "
            f"still holds keys={ks.keys}, {genuine.name} {'untouched' if untouched else 'CHANGED'}",
        )

    async def fleet_state(self) -> list[dict[str, Any]]:
        from otakey.agent.operator import device_dict

        async def work(tx: Any) -> list[dict[str, Any] | None]:
            out: list[dict[str, Any] | None] = []
            for m in self.members:
                d = await tx.get_device(m.uid)
                out.append(None if d is None else await device_dict(tx, d))
            return out

        agent_view = await self.store.run(work)
        rows = []
        for m, a in zip(self.members, agent_view, strict=True):
            ks = m.dev.key_state()
            agent_cloud = (a or {}).get("cloud") or {}
            agrees = (
                a is not None
                and a["ak_version"] == ks.ak_version
                and agent_cloud.get("version") == ks.cloud_version
            )
            rows.append(
                {
                    "device": m.name,
                    "device_id": m.device_id,
                    "ak_version": ks.ak_version,
                    "cloud": platform_name(ks.cloud_platform),
                    "cloud_key_version": ks.cloud_version,
                    "state": (a or {}).get("state", "unknown") + ("" if agrees else " (agent differs)"),
                    "keys": ks.keys,
                    "pk_in_flash": ks.pk_in_flash,
                    "agrees": agrees,
                    "fault": m.fault or None,
                    "notes": ", ".join(m.notes) or "-",
                }
            )
        return rows
