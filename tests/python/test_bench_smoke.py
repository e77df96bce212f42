"""Every ``otakey bench`` benchmark at a tiny size, through the real command line: it runs end to
end against its real servers, prints JSON with the documented keys, and the values are sane (the
fleet converged, counts add up, sizes are positive). No timing is asserted: these are benchmarks,
and the machine is shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str, timeout: float = 600.0) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "agent"), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-m", "otakey", "bench", *args, "--json"], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"otakey bench {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


ROTATE_KEYS = ("devices", "updates_per_s", "p50_ms", "p99_ms", "bytes_up_per_update", "bytes_down_per_update",
               "agent_peak_rss_mb", "seconds")


def test_bench_rotate_ak_small_fleet_converges_and_reports_every_key() -> None:
    d = bench("rotate", "--kind", "ak", "--devices", "20", "--inflight", "8")
    for key in ROTATE_KEYS:
        assert d[key] is not None, key
    assert d["devices"] == 20 and d["ak"]["ok"] == 20 and d["ak"]["failed"] == 0
    assert d["updates_per_s"] > 0 and 0 < d["p50_ms"] <= d["p99_ms"]
    # One rotation is a HELLO and a CONFIRM up, an OFFER and an ACK down, each one frame.
    assert d["ak"]["messages_up_per_update"] == 2.0 and d["ak"]["messages_down_per_update"] == 2.0
    assert 100 < d["bytes_up_per_update"] < 1000 and 100 < d["bytes_down_per_update"] < 1000
    assert d["agent_peak_rss_mb"] > 10 and d["ak"]["cpu_s"]["agent"] > 0
    v = d["verify"]
    assert v["ok"] and v["not_converged"] == 0 and v["ak_rotated"] == 20 and v["devices_in_store"] == 20


def test_bench_rotate_prov_on_postgres_provisions_every_device() -> None:
    d = bench("rotate", "--kind", "prov", "--devices", "12", "--db", "postgres")
    assert d["db"] == "postgres" and d["prov"]["ok"] == 12
    assert d["verify"]["ak_confirmed"] == 12 and d["verify"]["not_converged"] == 0


def test_bench_rotate_cloud_over_two_mosquitto_shards_rotates_every_credential() -> None:
    d = bench("rotate", "--kind", "cloud", "--devices", "16", "--shards", "2")
    for key in ROTATE_KEYS:
        assert d[key] is not None, key
    assert d["issue"]["ok"] == 16 and d["rotate"]["ok"] == 16
    v = d["verify"]
    # v1 then v2 activated per device; the brokers hold exactly the one live client per device.
    assert v["cloud_activated"] == 32 and v["broker_clients"] == 16 and v["active_cloud_credentials"] == 16
    # The brokers' CPU is read in 10 ms clock ticks: 16 devices may well cost them less than one.
    assert d["rotate"]["session_ms_per_update"] > 0 and d["rotate"]["cpu_s"]["brokers"] >= 0


def test_bench_rotate_cloud_on_aws_moto_rotates_certificates() -> None:
    d = bench("rotate", "--kind", "cloud", "--cloud", "aws-iot", "--devices", "4", "--no-checkin")
    assert d["rotate"]["ok"] == 4 and d["verify"]["cloud_activated"] == 8
    # A certificate and its private key in PEM travel down: far more than an AK rotation.
    assert d["bytes_down_per_update"] > 1500


def test_bench_connections_holds_every_device_and_reports_memory() -> None:
    d = bench("connections", "--devices", "40", "--hold", "0")
    assert d["connections"] == 40
    assert 10 < d["agent_rss_before_mb"] <= d["agent_peak_rss_mb"]
    assert d["agent_rss_idle_mb"] <= d["agent_peak_rss_mb"]


def test_bench_replicas_survive_a_killed_agent_without_double_keys() -> None:
    d = bench("replicas", "--devices", "90", "--agents", "3", "--inflight", "16")
    assert d["one_agent"]["ok"] == 90 and d["replicas"]["ok"] == 90
    assert d["replicas"]["killed"]["after_rotations"] >= 30
    v = d["verify"]
    assert v["ok"] and v["not_converged"] == 0 and v["rotated_not_once"] == 0
    assert v["issued_without_own_hello"] == 0 and d["final_checkin_failed"] == 0


def test_bench_emu_small_fleet_provisions_connects_and_rotates() -> None:
    d = bench("emu", "--devices", "4", "--concurrency", "2", "--shards", "1", timeout=900)
    assert d["ok"] == 4 and d["failed"] == 0 and d["verify"]["not_converged"] == 0
    ip = d["instr_per_provisioning"]
    assert 1_000_000 < ip["mean"] <= ip["max"] < 100_000_000
    assert d["instr_per_rotation"]["mean"] > 100_000 and d["devices_per_s"] > 0


def test_bench_paper_model_reproduces_the_paper_and_plots(tmp_path: Path) -> None:
    ak = tmp_path / "ak.json"
    ak.write_text(json.dumps({"devices": 1000, "updates_per_s": 500.0, "p50_ms": 100.0, "p99_ms": 200.0,
                              "bytes_up_per_update": 278.0, "bytes_down_per_update": 278.0,
                              "agent_peak_rss_mb": 50.0}))
    png = tmp_path / "paper.png"
    d = bench("paper", "--ak", str(ak), "--plot", str(png))
    s = d["seconds"]
    # The model gives the paper's own figures back: OTA-Key 1,026 s at 1,000 devices, BL1 > 5,000 s,
    # BL2 about 2,000 s; BL3 close to BL1 and BL4 close to BL2.
    assert round(s["OTA-Key (paper)"][0]) == 1026 and s["BL1"][0] > 5000 and 1800 < s["BL2"][0] < 2200
    assert abs(s["BL3"][0] - s["BL1"][0]) / s["BL1"][0] < 0.1
    assert abs(s["BL4"][0] - s["BL2"][0]) / s["BL2"][0] < 0.1
    # Ours at the given rate: 1.05 x 1,000 / 500 per s.
    assert abs(s["OTA-Key here: AK rotation"][0] - 2.1) < 1e-6
    assert d["ratios_at_1000"]["OTA-Key (paper)"] == round(1026 / 2.1, 1)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert d["single_update_ms"]["p50_ms"] > 0


def test_bench_dynsec_measures_an_empty_broker() -> None:
    d = bench("dynsec", "--sizes", "0", "--count", "5")
    row = d["rows"][0]
    assert row["devices_before"] == 0 and row["operations"] == 5
    assert all(row[m] > 0 for m in ("create/s 1by1", "create/s batched", "devices/s register_pending",
                                    "devices/s register_many"))
