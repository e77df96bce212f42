"""``otakey demo``: the scheme end to end on emulated devices — every device provisioned (PK gone from
flash), connected with its own key, rotated in a gray release during which one device loses power
mid-write and recovers, one migrated to AWS IoT, two attacks refused — and every process it started
stopped, also on Ctrl-C. Errors a new user can hit end in one sentence with the fix."""

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


def environment(cache: Path, tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "agent")
    env[CACHE_ENV] = str(cache)
    env["TMPDIR"] = str(tmp)  # its work folder and the broker's land here
    env.update(extra)
    return env


def otakey(
    *args: str, cache: Path, tmp: Path, timeout: float = 300, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otakey", *args],
        capture_output=True,
        text=True,
        env=environment(cache, tmp, **extra),
        timeout=timeout,
    )


@pytest.fixture
def work_tmp() -> Iterator[Path]:
    """A TMPDIR for the command that the broker (which drops to `mosquitto`) can reach."""
    folder = Path(tempfile.mkdtemp(prefix="otakey-demo-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The same folder as the other end-to-end tests: the firmware tree is compiled once per session.
    return Path(tmp_path_factory.getbasetemp()) / "otakey-cache"


def test_demo_three_devices_provision_rotate_recover_migrate_and_refuse_attacks(
    cache: Path, work_tmp: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    r = otakey("demo", "--devices", "3", "--json", "--out", str(out), cache=cache, tmp=work_tmp)
    assert r.returncode == 0, r.stderr[-4000:]
    s = json.loads(r.stdout)
    assert s["devices"] == 3
    for key in ("provisioned", "pk_erased", "cloud_connected", "published", "rotated"):
        assert s[key] == 3, (key, s)
    assert (s["power_cuts"], s["power_cuts_recovered"], s["migrated"], s["refused_attacks"]) == (1, 1, 1, 2)
    assert s["ok"] is True and 0 < s["seconds"] < 300
    # The narration went to stderr; the checks it made are in the saved state.
    assert "[FAILED]" not in r.stderr and "Traceback" not in r.stderr

    saved = json.loads((out / "demo.json").read_text())
    fleet = {row["device"]: row for row in saved["fleet"]}
    assert len(fleet) == 3 and len({row["device_id"] for row in fleet.values()}) == 3
    assert all(row["ak_version"] == 2 and row["agrees"] and not row["pk_in_flash"] for row in fleet.values())
    assert sorted((row["cloud"], row["cloud_key_version"]) for row in fleet.values()) == [
        ("aws-iot", 3),
        ("mosquitto", 2),
        ("mosquitto", 2),
    ]
    cut = saved["power_cut"]
    # Cut while programming a word of the new record (never its commit word), torn; booted on the old key.
    assert (
        cut["op_kind"] == "program" and cut["in_new_record"] and 4 <= cut["offset"] < 4 * cut["record_words"]
    )
    assert (cut["boot_version"], cut["target_valid"]) == (1, False)
    assert cut["at"] < cut["recovered_at"]
    assert fleet[cut["device"]]["notes"].startswith("power cut, recovered")
    rotation = next(p for p in saved["phases"] if p["phase"] == "cloud-key rotation")
    assert [len(b["devices"]) for b in rotation["batches"]] == [2, 1]
    assert sorted(d for b in rotation["batches"] for d in b["devices"]) == sorted(fleet)
    assert cut["device"] in rotation["batches"][1]["devices"]
    first, second = rotation["batches"]
    assert first["start"] <= first["end"] <= second["start"] <= second["end"]
    assert first["start"] <= cut["at"] <= second["end"] + 0.5 and second["failed"] == 0
    assert [a["refused"] for a in saved["attacks"]] == [True, True]
    assert (out / "agent.log").read_text().count("event=stopped") == 1
    # Everything it started was stopped and its temporary folders removed.
    left = [p.name for p in work_tmp.iterdir() if p.name.startswith(("otakey-demo-", "otakey-mosquitto-"))]
    assert left == []


def test_demo_interrupted_stops_the_broker_and_the_agent_it_started(
    cache: Path, work_tmp: Path, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "otakey", "demo", "--devices", "2", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(cache, work_tmp),
    )
    started: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            for pid in children(proc.pid):
                with contextlib.suppress(OSError):
                    started[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if any("mosquitto -c" in c for c in started.values()) and any(
                "agent serve" in c for c in started.values()
            ):
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"the broker and the agent did not both start: {sorted(started.values())}")
        time.sleep(0.5)  # into the devices' run
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
    assert [started[pid] for pid in started if alive(pid)] == []
    left = [p.name for p in work_tmp.iterdir() if p.name.startswith(("otakey-demo-", "otakey-mosquitto-"))]
    assert left == []


def test_demo_without_arm_toolchain_says_what_to_install_before_starting_anything(
    cache: Path, work_tmp: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("cmake", "mosquitto", "mosquitto_ctrl"):
        found = shutil.which(tool) or f"/usr/sbin/{tool}"
        (bare / tool).symlink_to(found)
    r = otakey(
        "demo",
        "--devices",
        "1",
        "--out",
        str(tmp_path / "out"),
        cache=cache,
        tmp=work_tmp,
        timeout=120,
        PATH=str(bare),
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("otakey: error:")]
    assert "arm-none-eabi-gcc" in line and "apt-get install" in line and "gcc-arm-none-eabi" in line
    assert "Servers" not in r.stdout and list(work_tmp.iterdir()) == []


def test_demo_bad_product_file_is_one_clear_sentence(cache: Path, work_tmp: Path, tmp_path: Path) -> None:
    bad = tmp_path / "po.product.json"
    bad.write_text("{ not json")
    r = otakey(
        "demo",
        "--devices",
        "1",
        "--product",
        str(bad),
        "--out",
        str(tmp_path / "out"),
        cache=cache,
        tmp=work_tmp,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"otakey: error: the product file {bad} is not valid JSON" in r.stderr
    assert "Servers" not in r.stdout


def test_demo_renode_backend_without_renode_fails_clearly_before_any_server(
    cache: Path, work_tmp: Path, tmp_path: Path
) -> None:
    env = {v: "" for v in ("PYRENODE_PKG", "PYRENODE_BUILD_DIR", "PYRENODE_BIN")}
    r = otakey(
        "demo",
        "--devices",
        "1",
        "--backend",
        "renode",
        "--out",
        str(tmp_path / "out"),
        cache=cache,
        tmp=work_tmp,
        timeout=240,
        **env,
    )
    assert r.returncode == 1, r.stdout[-2000:]
    assert "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("otakey: error:")]
    assert "renode" in line.lower()
    assert "Servers on 127.0.0.1" not in r.stdout
