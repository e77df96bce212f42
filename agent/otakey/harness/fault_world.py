"""The world of the reliability campaigns, and their verdict.

:class:`World` starts and owns what a campaign runs against — an ``otakey agent serve`` process
(restartable, several replicas on PostgreSQL), its store, Mosquitto with dynamic security and, for
migrations, moto — on 127.0.0.1. :class:`Checker` is the verdict after a session: device, agent
store, audit log and cloud agree, and no key was issued twice. Used by
:mod:`otakey.harness.fault_campaign` and :mod:`otakey.harness.crash_campaign`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otakey.agent.handlers import CLOUD_TARGET_PREFIX, to_wire
from otakey.agent.product_file import ProductFile
from otakey.cloud.base import CloudCredential as StoredCredential
from otakey.cloud.base import parse_mqtt_url
from otakey.cloud.mosquitto import try_connect
from otakey.errors import Error
from otakey.gateway.mqtt_session import CloudSessions
from otakey.protocol.cloudsession import SessionOpen, SessionStatus
from otakey.protocol.keystore import KeystoreState
from otakey.protocol.messages import Action, CloudCredential, Platform
from otakey.store import AuditEvent, CredentialState, DeviceState, Kek, Product, Store, make_store

from .servers import (
    AWS_REGION,
    AgentServer,
    MosquittoServer,
    MotoServer,
    PostgresServer,
    start_agent,
    start_mosquitto,
    start_moto,
    start_postgres,
)

log = logging.getLogger("otakey.campaign.faults")

CRASH_ENV = "OTAKEY_CRASH_AT"  # the agent's test-only fault injection (otakey.agent.service)


class CampaignError(Error):
    """A campaign could not run (a server, the agent, the firmware build)."""


def _db_dir() -> str:
    # RAM-backed when possible: the agent fsyncs every answer before it leaves (persist-then-answer).
    shm = Path("/dev/shm")
    return tempfile.mkdtemp(prefix="otakey-faults-",
                            dir=str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None)


def _moto_real_certificate_ids() -> None:
    """Make moto name certificates as AWS does (SHA-256 of the DER). By default it hashes the PEM
    text, and the gateway's session check, which looks a certificate up by its AWS id, then falls
    back to scanning every certificate: a campaign's thousands of sessions became quadratic. The
    switch is moto's user configuration, which only its own process can change (start_moto runs
    the server in this one)."""
    from moto.core.config import default_user_config

    default_user_config["iot"] = {"use_valid_cert": True}


def device_uid(tag: str, seed: int, index: int) -> bytes:
    return hashlib.sha256(f"otakey-{tag}:{seed}:{index}".encode()).digest()[:12]


# --------------------------------------------------------------------------------------------- the world


class World:
    """Mosquitto (+ moto, + PostgreSQL), the database, agent processes and the campaign's own store
    connection. ``await start()`` → ``start_agent()`` any number of times → ``await close()``."""

    def __init__(self, *, db: str = "sqlite", aws: bool = False, workdir: str | None = None,
                 agent_args: tuple[str, ...] = ()) -> None:
        if db not in ("sqlite", "postgres"):
            raise ValueError("db is sqlite or postgres")
        self.db, self.aws = db, aws
        self.workdir = Path(workdir or _db_dir())
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kek_hex = os.urandom(32).hex()
        self.kek = Kek(bytes.fromhex(self.kek_hex))
        self.agent_args = agent_args
        self.mosquitto: MosquittoServer | None = None
        self.moto: MotoServer | None = None
        self.postgres: PostgresServer | None = None
        self.db_url = ""
        self.store: Store | None = None
        self.agents: list[AgentServer] = []
        self._starts = 0

    @property
    def cloud_urls(self) -> list[str]:
        assert self.mosquitto is not None
        return [self.mosquitto.cloud_url] + ([self.moto.cloud_url()] if self.moto is not None else [])

    def sessions(self) -> CloudSessions:
        """The cloud oracle: the same session a gateway opens for a device (moto answers for AWS)."""
        aws = self.moto.cloud_url() if self.moto is not None else None
        return CloudSessions(timeout=10.0, aws_control=aws)

    async def start(self) -> None:
        try:
            self.mosquitto = start_mosquitto()
            if self.aws:
                os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
                os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
                self.moto = start_moto()
                _moto_real_certificate_ids()
            if self.db == "postgres":
                self.postgres = start_postgres()
                self.db_url = self.postgres.create_database("faults")
            else:
                self.db_url = f"sqlite://{self.workdir / 'agent.db'}"
        except Error as exc:
            raise CampaignError(f"cannot start the servers: {exc}") from exc
        self.store = make_store(self.db_url, self.kek)
        await self.store.open()

    async def add_product(self, pf: ProductFile) -> None:
        assert self.store is not None

        async def work(tx: Any) -> None:
            await tx.add_product(Product(po_id=pf.po_id, name=pf.po_name, quantity=max(1, pf.quantity),
                                         pk=pf.pk))

        await self.store.run(work)

    def start_agent(self, name: str = "agent", port: int = 0, extra: tuple[str, ...] = (),
                    crash_at: str | None = None) -> AgentServer:
        """An agent process; ``port`` 0 picks a free one. Each start logs to its own file.
        ``crash_at``: the agent SIGKILLs itself at that named point (``OTAKEY_CRASH_AT``)."""
        self._starts += 1
        args = ["--reconcile-interval", "1", "--shutdown-timeout", "2", *self.agent_args, *extra]
        if port:
            args += ["--listen", f"127.0.0.1:{port}"]
        path = self.workdir / f"{name}.{self._starts}.log"
        # start_agent hands the agent a copy of this process's environment.
        saved = os.environ.pop(CRASH_ENV, None)
        if crash_at:
            os.environ[CRASH_ENV] = crash_at
        try:
            agent = start_agent(self.db_url, self.kek_hex, self.cloud_urls, path, args)
        except Error as exc:
            raise CampaignError(f"cannot start the agent: {exc}") from exc
        finally:
            os.environ.pop(CRASH_ENV, None)
            if saved is not None:
                os.environ[CRASH_ENV] = saved
        self.agents.append(agent)
        return agent

    async def close(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.stop()
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()
            self.store = None
        for server in (self.moto, self.mosquitto, self.postgres):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        self.moto = self.mosquitto = self.postgres = None

    def remove_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def direct(self, uid: bytes, action: Action, target: str | None = None) -> None:
        """An operator's gray release for one device: mark it (and name a migration's target)."""
        assert self.store is not None

        async def work(tx: Any) -> None:
            if target is not None:
                await tx.audit(AuditEvent.OPERATOR, device_id=uid, detail=f"{CLOUD_TARGET_PREFIX}{target}")
            await tx.set_pending_action([uid], action)

        await self.store.run(work)


# --------------------------------------------------------------------------------------------- the verdict


@dataclass
class DeviceView:
    """What a device holds, whichever kind of device it is."""

    uid: bytes
    ak_version: int | None
    ak: bytes | None
    has_pk: bool
    cloud: CloudCredential | None

    @classmethod
    def of_keystore(cls, uid: bytes, ks: KeystoreState | None) -> DeviceView:
        if ks is None:
            return cls(uid, None, None, False, None)
        return cls(uid, ks.ak_version, ks.ak, ks.has_pk, ks.cloud)


class Checker:
    """Device ⇄ store ⇄ cloud agreement, and no key twice, across a whole campaign."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.oracle = world.sessions()
        self._aks: dict[bytes, tuple[bytes, int]] = {}
        self._secrets: dict[bytes, tuple[bytes, int]] = {}
        self._refused: set[tuple[bytes, int]] = set()  # old credentials already seen refused
        self._gate = asyncio.Semaphore(16)

    async def cloud_status(self, cred: CloudCredential) -> SessionStatus:
        """What the cloud says to the credential: Mosquitto a real MQTT CONNECT (the broker's
        own verdict), AWS the gateway's control-plane session check (moto has no data plane)."""
        async with self._gate:
            if cred.platform == Platform.MOSQUITTO:
                try:
                    _, host, port = parse_mqtt_url(cred.endpoint)
                except ValueError:
                    return SessionStatus.MALFORMED
                try:
                    reason = await asyncio.to_thread(try_connect, host, port, cred.client_id, cred.username,
                                                     cred.secret.decode(errors="replace"), 10.0)
                except OSError:
                    return SessionStatus.UNREACHABLE
                if reason is None:
                    return SessionStatus.UNREACHABLE
                return SessionStatus.REFUSED if reason.is_failure else SessionStatus.CONNECTED
            result = await self.oracle(SessionOpen(1, cred, f"devices/{cred.client_id}/status", b"check"))
        return SessionStatus(result.status)

    async def old_status(self, cred: StoredCredential) -> SessionStatus:
        """What the cloud says to a credential the device no longer holds. On AWS the certificate
        the store names (``ref``) must be gone or not ACTIVE — the same verdict as a session, but
        one lookup instead of the session check's scan of every certificate for a deleted one."""
        if cred.platform != "aws-iot" or not cred.ref or self.world.moto is None:
            return await self.cloud_status(to_wire(cred))
        url = self.world.moto.url

        def describe() -> SessionStatus:
            import boto3

            iot = boto3.client("iot", region_name=AWS_REGION, endpoint_url=url,
                               aws_access_key_id="testing", aws_secret_access_key="testing")
            try:
                desc = iot.describe_certificate(certificateId=cred.ref)["certificateDescription"]
            except iot.exceptions.ResourceNotFoundException:
                return SessionStatus.REFUSED
            finally:
                iot.close()
            return SessionStatus.CONNECTED if desc["status"] == "ACTIVE" else SessionStatus.REFUSED

        async with self._gate:
            return await asyncio.to_thread(describe)

    async def check(self, view: DeviceView, want_platform: str | None = None,
                    final: bool = False) -> list[str]:
        """Every disagreement, as sentences (empty: consistent). ``final`` re-checks every old
        credential of the device against the cloud, not only those not seen refused yet."""
        store = self.world.store
        assert store is not None
        uid = view.uid

        async def work(tx: Any) -> tuple[Any, Any, Any, Any]:
            return (await tx.get_device(uid), await tx.get_credentials(uid), await tx.list_credentials(uid),
                    await tx.list_audit(device_id=uid, limit=100_000))

        dev, creds, all_creds, audit = await store.run(work)
        problems: list[str] = []
        if view.has_pk or view.ak is None:
            problems.append("the device holds no AK (still PK)" if view.has_pk else "the device holds no key")
        if dev is None:
            return [*problems, "the agent has no record of the device"]
        if dev.state is not DeviceState.ACTIVE:
            problems.append(f"agent state {dev.state.value}")
        if dev.ak_version != view.ak_version or dev.ak != view.ak:
            problems.append(f"AK differs: device v{view.ak_version}, agent v{dev.ak_version}"
                            + ("" if dev.ak_version != view.ak_version else " (same version, other key)"))
        if dev.ak_pending is not None:
            problems.append(f"agent still holds a pending AK v{dev.ak_pending_version}")
        if creds.pending is not None:
            problems.append(f"agent still holds a pending cloud credential v{creds.pending.version}")
        cur = creds.current
        if view.cloud is None:
            problems.append("the device holds no cloud credential")
        elif cur is None:
            problems.append("the agent has no active cloud credential")
        else:
            if cur.version != view.cloud.version or cur.credential.secret != view.cloud.secret:
                problems.append(f"cloud credential differs: device v{view.cloud.version}, "
                                f"agent v{cur.version}")
            if cur.credential.platform_code != view.cloud.platform:
                problems.append("cloud platform differs between device and agent")
            if want_platform is not None and cur.credential.platform != want_platform:
                problems.append(f"on {cur.credential.platform}, the operator asked for {want_platform}")
        counts = Counter(e.event for e in audit)
        if counts[AuditEvent.ISSUED] < dev.ak_version:
            problems.append(f"{counts[AuditEvent.ISSUED]} ISSUED entries for AK v{dev.ak_version}")
        if counts[AuditEvent.CONFIRMED] != 1:
            problems.append(f"{counts[AuditEvent.CONFIRMED]} CONFIRMED entries (stage 2 once)")
        if dev.ak_version and counts[AuditEvent.ROTATED] != dev.ak_version - 1:
            problems.append(f"{counts[AuditEvent.ROTATED]} ROTATED entries for AK v{dev.ak_version}")
        ever_active = [c for c in all_creds if c.state in (CredentialState.ACTIVE, CredentialState.RETIRED)]
        if counts[AuditEvent.CLOUD_ACTIVATED] != len(ever_active):
            problems.append(f"{counts[AuditEvent.CLOUD_ACTIVATED]} CLOUD_ACTIVATED entries for "
                            f"{len(ever_active)} credentials ever active")
        if counts[AuditEvent.CLOUD_ISSUED] != len(all_creds):
            problems.append(f"{counts[AuditEvent.CLOUD_ISSUED]} CLOUD_ISSUED entries for "
                            f"{len(all_creds)} credentials")
        # No key twice: an AK or a secret belongs to one (device, version) for the whole campaign.
        if dev.ak is not None:
            owner = self._aks.setdefault(dev.ak, (uid, dev.ak_version))
            if owner != (uid, dev.ak_version):
                problems.append(f"AK v{dev.ak_version} was issued before to {owner[0].hex()} v{owner[1]}")
        for c in all_creds:
            owner = self._secrets.setdefault(c.credential.secret, (uid, c.version))
            if owner != (uid, c.version):
                problems.append(f"cloud secret v{c.version} was issued before to "
                                f"{owner[0].hex()} v{owner[1]}")
        if problems:
            return problems
        # The cloud: the device's credential works, every other one of the device is refused.
        assert view.cloud is not None and cur is not None
        status = await self.cloud_status(view.cloud)
        if status is not SessionStatus.CONNECTED:
            problems.append(f"the cloud does not accept the device's credential v{view.cloud.version} "
                            f"({status.name})")
        for c in all_creds:
            if c.version == cur.version or (not final and (uid, c.version) in self._refused):
                continue
            status = await self.old_status(c.credential)
            if status is SessionStatus.REFUSED:
                self._refused.add((uid, c.version))
            else:
                problems.append(f"the cloud still answers {status.name} to old credential v{c.version} "
                                f"({c.state.value})")
        return problems


# --------------------------------------------------------------------------------------------- the campaign
