"""Real servers on 127.0.0.1 for tests and for ``otakey emu run``: Mosquitto with dynamic security,
a throwaway PostgreSQL 15 cluster, a moto server, and an agent process (``otakey agent serve``).
Each listens on a free port, lives in its own temporary folder, and is stopped with ``stop()``.
Facts they rely on are measured in DESIGN §5.

A missing binary raises :class:`ServerMissing`, whose message says how to install it; test fixtures
turn that into a test failure, never a skip. Mosquitto and the agent start in their own session
(process group), so a Ctrl-C at the terminal reaches only the program that started them, which
then stops them in order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from otakey.errors import Error

SETUP_HINT = "run scripts/setup.sh to install it"
DYNSEC_PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
)
PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin",)


#: The region every local AWS IoT (moto) call uses.
AWS_REGION = "us-east-1"


class ServerError(Error):
    """A server could not be started."""


class ServerMissing(ServerError):
    """A server binary or plugin is not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace") if log and log.exists() else ""
            raise ServerError(f"server exited with {proc.returncode} before listening on {port}:\n{text}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise ServerError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise ServerMissing(f"{binary} is not installed: {SETUP_HINT}")
    return path


def _is_root() -> bool:
    return os.geteuid() == 0


def _chown_tree(folder: Path, user: str) -> None:
    subprocess.run(["chown", "-R", f"{user}:", str(folder)], check=True)


# --------------------------------------------------------------------------------------------- Mosquitto


@dataclass
class MosquittoServer:
    """A running Mosquitto broker with the dynamic-security plugin and one admin client."""

    host: str
    port: int
    admin_username: str
    admin_password: str
    folder: Path
    process: subprocess.Popen[bytes]
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def cloud_url(self) -> str:
        """The agent's ``--cloud`` URL for this broker (its dynsec admin)."""
        return f"mosquitto://{self.admin_username}:{self.admin_password}@{self.host}:{self.port}"

    @property
    def log(self) -> str:
        path = self.folder / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _dynsec_plugin() -> str:
    for path in DYNSEC_PLUGIN_PATHS:
        if os.path.exists(path):
            return path
    raise ServerMissing(f"the Mosquitto dynamic-security plugin is not installed: {SETUP_HINT}")


def start_mosquitto(admin_password: str | None = None,
                    seed: Callable[[Path], None] | None = None) -> MosquittoServer:
    """Start a broker with dynsec on a free port; ``admin`` holds the dynsec admin role.

    ``seed(path)`` may rewrite the fresh dynamic-security.json before the broker reads it (to
    start with many clients without paying dynsec's per-command file rewrite)."""
    mosquitto = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if mosquitto is None:
        raise ServerMissing(f"mosquitto is not installed: {SETUP_HINT}")
    ctrl = _need("mosquitto_ctrl")
    plugin = _dynsec_plugin()
    password = admin_password or secrets.token_hex(12)
    tmp = tempfile.TemporaryDirectory(prefix="otakey-mosquitto-")
    folder = Path(tmp.name)
    dynsec = folder / "dynamic-security.json"
    subprocess.run([ctrl, "dynsec", "init", str(dynsec), "admin", password],
                   check=True, capture_output=True)
    if seed is not None:
        seed(dynsec)
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        "per_listener_settings false\n"
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous false\n"
        f"plugin {plugin}\n"
        f"plugin_opt_config_file {dynsec}\n"
        "persistence false\n"
        # Without it each $CONTROL round trip costs ~45 ms (Nagle + delayed ACK), DESIGN §5.
        "set_tcp_nodelay true\n"
        "max_keepalive 600\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        f"log_dest file {folder / 'mosquitto.log'}\n"
    )
    if _is_root():
        # Started as root the broker drops to `mosquitto`; without write access to its folder
        # dynsec keeps every change in memory only.
        _chown_tree(folder, "mosquitto")
    proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=folder, start_new_session=True)
    server = MosquittoServer("127.0.0.1", port, "admin", password, folder, proc, tmp)
    try:
        wait_for_port(port, proc, 10.0, folder / "mosquitto.log")
    except BaseException:
        server.stop()
        raise
    return server


# --------------------------------------------------------------------------------------------- PostgreSQL


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster; user ``postgres`` with trust authentication on 127.0.0.1."""

    host: str
    port: int
    folder: Path
    bin_dir: Path
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    _running: bool = True

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{name}"

    def create_database(self, prefix: str = "t") -> str:
        """Create a fresh empty database and return its URL."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        self.psql("postgres", f"CREATE DATABASE {name}")
        return self.database_url(name)

    def psql(self, database: str, sql: str) -> str:
        out = subprocess.run(
            [str(self.bin_dir / "psql"), "-h", self.host, "-p", str(self.port), "-U", "postgres",
             "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            check=True, capture_output=True, text=True)
        return out.stdout

    def dump(self, database: str) -> bytes:
        """pg_dump of one database, in the plain SQL format."""
        out = subprocess.run(
            [str(self.bin_dir / "pg_dump"), "-h", self.host, "-p", str(self.port), "-U", "postgres",
             database], check=True, capture_output=True)
        return out.stdout

    def stop(self) -> None:
        if self._running:
            self._running = False
            subprocess.run(self._as_owner([str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"),
                                           "-m", "immediate", "-w", "stop"]),
                           capture_output=True, check=False)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @staticmethod
    def _as_owner(cmd: list[str]) -> list[str]:
        # initdb refuses root (DESIGN §5): run the cluster as `postgres`.
        return ["runuser", "-u", "postgres", "--", *cmd] if _is_root() else cmd


def _pg_bin() -> Path:
    for d in PG_BIN_DIRS:
        if os.path.exists(os.path.join(d, "initdb")):
            return Path(d)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise ServerMissing(f"PostgreSQL 15 (initdb) is not installed: {SETUP_HINT}")


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start in a temp folder (~0.6 s)."""
    bin_dir = _pg_bin()
    tmp = tempfile.TemporaryDirectory(prefix="otakey-pg-")
    folder = Path(tmp.name)
    data = folder / "data"
    if _is_root():
        _chown_tree(folder, "postgres")
    server = PostgresServer("127.0.0.1", 0, folder, bin_dir, tmp, _running=False)
    try:
        subprocess.run(PostgresServer._as_owner(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
             "-E", "UTF8", "--locale=C"]), check=True, capture_output=True)
        port = free_port()
        server.port = port
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        server._running = True
        subprocess.run(PostgresServer._as_owner(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "pg.log"), "-o", opts,
             "start"]), check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        server.stop()
        raise ServerError(f"PostgreSQL failed to start: {exc.stderr!r}") from exc
    except BaseException:
        server.stop()
        raise
    return server


# --------------------------------------------------------------------------------------------- moto


@dataclass
class MotoServer:
    """moto in server mode (AWS control plane only, DESIGN §5)."""

    host: str
    port: int
    _server: object = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def cloud_url(self, region: str = AWS_REGION) -> str:
        """The agent's ``--cloud`` URL for this control plane (moto takes any credentials)."""
        return f"aws-iot://testing:testing@{self.host}:{self.port}?region={region}"

    def reset(self) -> None:
        """Forget every resource (moto's own reset endpoint)."""
        import urllib.request

        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def stop(self) -> None:
        self._server.stop()  # type: ignore[attr-defined]


def start_moto() -> MotoServer:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise ServerMissing(f"moto[server] is not installed: {SETUP_HINT}") from exc
    # Werkzeug logs every request to stderr; only errors are worth reading.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port(port, None, 10.0, None)
    return MotoServer("127.0.0.1", port, server)


# --------------------------------------------------------------------------------------------- the agent

KEK_ENV = "OTAKEY_KEK"
_LISTENING = re.compile(r"event=listening .*?port=(\d+)")


@dataclass
class AgentServer:
    """An ``otakey agent serve`` process; its log (kv format) is ``log_path``."""

    host: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the agent's graceful shutdown), then SIGKILL after ``timeout``; the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_agent(db_url: str, kek_hex: str, cloud_urls: list[str], log_path: Path,
                extra_args: list[str] | None = None, timeout: float = 30.0,
                launcher: tuple[str, ...] = ("otakey",)) -> AgentServer:
    """Start an agent on a free port of 127.0.0.1 and wait until it listens. ``launcher`` is what
    ``python -m`` runs in front of ``agent serve`` (a profiler wrapper for the benchmarks)."""
    args = [sys.executable, "-m", *launcher, "agent", "serve", "--db", db_url, "--listen", "127.0.0.1:0"]
    for url in cloud_urls:
        args += ["--cloud", url]
    args += extra_args or []
    env = dict(os.environ)
    env[KEK_ENV] = kek_hex
    agent_src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (agent_src, env.get("PYTHONPATH", "")) if p)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log, start_new_session=True)
    server = AgentServer("127.0.0.1", 0, log_path, proc)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            m = _LISTENING.search(server.log)
            if m:
                server.port = int(m.group(1))
                return server
            if proc.poll() is not None:
                tail = "\n".join(server.log.strip().splitlines()[-10:])
                raise ServerError(f"the agent exited with {proc.returncode} before listening:\n{tail}")
            time.sleep(0.02)
        raise ServerError(f"the agent did not listen within {timeout} s")
    except BaseException:
        server.stop()
        raise
