"""The agent-crash campaign (``otakey campaign agent-crash``) at its CI size: ``kill -9`` of the
agent (from outside, and at named crash points inside its transactions) while a fleet rotates its
AK and cloud credential; after the restarts every device converges, with no key lost or issued
twice and an audit log that accounts for every key — on SQLite with one agent and on PostgreSQL
with three replicas."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agentproc import base_env
from otakey.harness.crash_campaign import CrashCampaignSpec, run_crash_campaign


def test_crash_campaign_quick_sqlite_kills_during_rotation_every_device_converges() -> None:
    r = subprocess.run([sys.executable, "-m", "otakey", "campaign", "agent-crash", "--quick",
                        "--seed", "4", "--json"], env=base_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["devices"] == 150 and out["db"] == "sqlite" and out["agents"] == 1
    assert out["kills"] >= 4 and out["kills_during_rotation"] >= 4 and out["restarts"] >= out["kills"]
    assert out["inconsistent"] == 0 and out["converged"] == 150, out["failures"]


def test_crash_campaign_quick_postgres_three_replicas_every_device_converges() -> None:
    summary = run_crash_campaign(CrashCampaignSpec(devices=150, db="postgres", agents=3, kills=6, seed=9))
    detail = summary.text()
    assert summary.kills >= 6 and summary.kills_during_rotation > 0, detail
    assert summary.inconsistent == 0 and summary.converged == 150, detail


def test_crash_campaign_ak_rotation_with_every_restart_armed_dies_at_crash_points_and_converges() -> None:
    spec = CrashCampaignSpec(devices=60, kills=5, seed=2, rotate="ak", pause=(1.0, 2.0), armed=1.0)
    summary = run_crash_campaign(spec)
    detail = summary.text()
    assert summary.kills_by["crash_point"] >= 1, detail  # an armed agent dies inside a transaction
    assert summary.inconsistent == 0 and summary.converged == 60, detail


def test_crash_campaign_refuses_replicas_on_sqlite_in_one_sentence() -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        CrashCampaignSpec(agents=3, db="sqlite")
    r = subprocess.run([sys.executable, "-m", "otakey", "campaign", "agent-crash", "--agents", "3"],
                       env=base_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "PostgreSQL" in r.stderr and "Traceback" not in r.stderr
