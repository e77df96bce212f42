"""The README's first command ends in `otakey demo`: it must finish with every device provisioned,
connected and rotated, and the attacks refused."""

import json
import subprocess
import sys


def test_demo_json_reports_every_device_provisioned_rotated_and_attacks_refused() -> None:
    run = subprocess.run([sys.executable, "-m", "otakey", "demo", "--devices", "5", "--json"],
                         capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["devices"] == 5
    assert summary["provisioned"] == summary["cloud_connected"] == summary["rotated"] == 5
    assert summary["refused_attacks"] == 2


def test_demo_rejects_zero_devices_with_one_clear_sentence() -> None:
    run = subprocess.run([sys.executable, "-m", "otakey", "demo", "--devices", "0"],
                         capture_output=True, text=True, check=False, timeout=60)
    assert run.returncode == 2
    assert "--devices must be at least 1" in run.stderr
    assert "Traceback" not in run.stderr
