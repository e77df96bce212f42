"""``otakey emu run``: the whole system started from one command — broker, agent, a fresh product
order and its factory image — and N emulated devices that provision and connect to the cloud."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentproc import alive, children
from otakey.firmware.build import CACHE_ENV

ROOT = Path(__file__).resolve().parents[2]


def environment(cache: Path, tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "agent")
    env[CACHE_ENV] = str(cache)
    env["TMPDIR"] = str(tmp)  # its work folder and the broker's land here
    return env


def otakey(*args: str, cache: Path, tmp: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otakey", *args], capture_output=True, text=True,
                          env=environment(cache, tmp), timeout=timeout)


@pytest.fixture
def work_tmp() -> Iterator[Path]:
    """A TMPDIR for the command: the broker drops to the `mosquitto` user, which must be able to
    reach its folder (pytest's own temporary folders are private to their owner)."""
    folder = Path(tempfile.mkdtemp(prefix="otakey-emu-run-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.getbasetemp()) / "otakey-cache"


def test_emu_run_three_devices_all_provision_and_connect(cache: Path, work_tmp: Path):
    r = otakey("emu", "run", "--devices", "3", "--json", "--keep", cache=cache, tmp=work_tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert (out["devices"], out["provisioned"], out["cloud_connected"], out["failed"]) == (3, 3, 3, 0)
    assert out["seconds"] > 0
    results = out["results"]
    assert len({d["uid"] for d in results}) == 3  # one image, distinct UIDs
    for d in results:
        assert (d["keys"], d["ak_version"], d["cloud_version"], d["sessions_ok"], d["error"]) == (
            "cloud", 1, 1, 1, "")
        assert d["instructions"] > 0 and d["reports"] == []
    # The agent it started saw each device complete stage 2 and activate its credential.
    work = Path(out["work_dir"])
    log = (work / "agent.log").read_text()
    for d in results:
        assert f"event=ak_active device={d['uid']}" in log
        assert f"event=cloud_active device={d['uid']}" in log
    assert "event=stopped" in log  # and it was shut down gracefully at the end


def test_emu_run_with_agent_but_no_product_is_refused_before_starting_anything(cache: Path, work_tmp: Path):
    r = otakey("emu", "run", "--devices", "2", "--agent", "127.0.0.1:1", cache=cache, tmp=work_tmp,
               timeout=60)
    assert r.returncode == 2
    assert "--product" in r.stderr and "Traceback" not in r.stderr


def test_emu_run_interrupted_stops_every_process_it_started_and_removes_its_files(
        cache: Path, work_tmp: Path):
    proc = subprocess.Popen([sys.executable, "-m", "otakey", "emu", "run", "--devices", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=environment(cache, work_tmp))
    try:
        # Interrupt once the broker, the agent and both fleet workers run.
        deadline = time.monotonic() + 120
        started: dict[int, str] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            for pid in children(proc.pid):
                # Read again each time: right after fork a child still shows its parent's command.
                with contextlib.suppress(OSError):
                    started[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            kinds = [next((k for k in ("spawn_main", "agent serve", "mosquitto -c") if k in c), "")
                     for c in started.values()]
            if kinds.count("spawn_main") >= 2 and "mosquitto -c" in kinds and "agent serve" in kinds:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"broker, agent and two workers did not all start: {sorted(started.values())}")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "otakey: interrupted" in err and "Traceback" not in err
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in started):
        time.sleep(0.1)
    assert [pid for pid in started if alive(pid)] == []
    left = [p.name for p in work_tmp.iterdir() if p.name.startswith(("otakey-emu-run-", "otakey-mosquitto-"))]
    assert left == []


class _Worker:
    """A stand-in for one fleet worker process; the second one's start is cut by Ctrl-C."""

    def __init__(self, log: list[str], interrupt_start: bool, name: str) -> None:
        self.log, self.interrupt_start, self.name = log, interrupt_start, name
        self.pid: int | None = None
        self.exitcode: int | None = None

    def start(self) -> None:
        if self.interrupt_start:
            raise KeyboardInterrupt  # inside start(): the Process never got its child
        self.pid = 4242

    def is_alive(self) -> bool:
        return self.pid is not None and self.exitcode is None

    def terminate(self) -> None:
        self.log.append(f"terminate {self.name}")
        self.exitcode = -15

    def join(self, timeout: float | None = None) -> None:
        assert self.pid is not None, "can only join a started process"
        self.log.append(f"join {self.name}")


def test_fleet_ctrl_c_during_the_second_worker_start_stops_the_first_and_reraises(monkeypatch) -> None:
    from otakey.harness import fleet

    log: list[str] = []

    class Context:
        def Queue(self) -> object:
            return object()

        def Process(self, target: object, args: tuple, name: str, daemon: bool) -> _Worker:
            return _Worker(log, interrupt_start=name.endswith("-1"), name=name)

    monkeypatch.setattr(fleet.multiprocessing, "get_context", lambda method: Context())
    spec = fleet.FleetSpec(elf="unused.elf", agent_host="127.0.0.1", agent_port=1, devices=4, workers=2)
    with pytest.raises(KeyboardInterrupt):
        fleet.run_fleet(spec)
    assert log == ["terminate otakey-fleet-0", "join otakey-fleet-0"]
