"""The README's commands, run as a user runs them (the test command itself is .ci/run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_readme_first_command_sets_up_and_runs_the_demo_to_a_clean_summary(tmp_path: Path) -> None:
    # scripts/demo.sh passes its arguments to `otakey demo`; setup finds everything installed here.
    run = _run(["bash", str(REPO / "scripts" / "demo.sh"), "--devices", "2", "--json",
                "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["devices"] == 2
    assert summary["provisioned"] == summary["cloud_connected"] == summary["rotated"] == 2
    assert summary["power_cuts_recovered"] >= 1 and summary["migrated"] == 1
    assert summary["refused_attacks"] == 2


@pytest.fixture
def kek_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OTAKEY_KEK"] = os.urandom(32).hex()
    return env


def test_readme_board_section_builds_the_image_a_board_would_be_flashed_with(
        tmp_path: Path, kek_env: dict[str, str]) -> None:
    otakey = [sys.executable, "-m", "otakey"]
    run = _run([*otakey, "product", "create", "--po", "PO-1", "--quantity", "1000", "--db", "otakey.db",
                "--out", "po1.product.json"], cwd=tmp_path, env=kek_env)
    assert run.returncode == 0, run.stderr
    run = _run([*otakey, "firmware", "build", "--product", "po1.product.json", "--out", "build/po1"],
               cwd=tmp_path, env=kek_env)
    assert run.returncode == 0, run.stderr
    elf = tmp_path / "build" / "po1" / "otakey-fw.elf"
    assert elf.is_file()
    info = _run([*otakey, "firmware", "info", str(elf), "--json"], cwd=tmp_path, env=kek_env)
    assert info.returncode == 0, info.stderr
    assert "PO-1" in info.stdout
