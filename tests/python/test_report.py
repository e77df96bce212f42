"""``otakey report``: one self-contained HTML file from a real demo run and a real power-cut campaign
(quick, torn) — figures embedded as PNGs — that renders in headless Chromium; a failed cut turns the
verdict and the grid red."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from otakey.firmware.build import CACHE_ENV
from otakey.report import build_report, load_campaign

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = ("chromium", "chromium-browser")
# What `otakey campaign power-cut --flow cloud-update --torn --quick --json` prints: the campaign's
# Summary.to_dict(), through the harness API the command itself calls.
CAMPAIGN = (
    "import json, sys\n"
    "from otakey.harness.campaign import CampaignSpec, run_campaign\n"
    "if __name__ == '__main__':\n"
    "    s = run_campaign(CampaignSpec(flow='cloud-update', torn=True, quick=True, jobs=2))\n"
    "    json.dump(s.to_dict(), sys.stdout, indent=2)\n"
)
PNG_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def environment(cache: Path, tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "agent")
    env[CACHE_ENV] = str(cache)
    env["TMPDIR"] = str(tmp)
    return env


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An output folder as CI leaves it: `otakey demo --out DIR` and a campaign summary beside it."""
    cache = Path(tmp_path_factory.getbasetemp()) / "otakey-cache"  # shared with the other e2e tests
    out = tmp_path_factory.mktemp("otakey-out")
    work = Path(tempfile.mkdtemp(prefix="otakey-report-test-"))
    work.chmod(0o755)  # the broker drops to `mosquitto` and must reach its folder
    try:
        env = environment(cache, work)
        demo = subprocess.run(
            [sys.executable, "-m", "otakey", "demo", "--devices", "3", "--out", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        camp = subprocess.run(
            [sys.executable, "-c", CAMPAIGN], capture_output=True, text=True, env=env, timeout=600
        )
        assert camp.returncode == 0, camp.stderr[-3000:]
        (out / "campaign-cloud-update.json").write_text(camp.stdout)
        yield out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "agent")
    return subprocess.run(
        [sys.executable, "-m", "otakey", "report", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def distinct_colours(image: Image.Image) -> int:
    colours = image.convert("RGB").getcolors(maxcolors=1 << 22)
    assert colours is not None
    return len(colours)


def test_report_of_demo_and_campaign_is_one_file_with_embedded_figures(outputs: Path, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    r = report("--from", str(outputs), "--out", str(target), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["demo"], info["campaign"], info["ok"]) == (True, True, True)
    page = target.read_text()
    assert list(tmp_path.iterdir()) == [target]  # one file, nothing beside it
    # Self-contained: no script, no stylesheet or image fetched from anywhere.
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    figures = [Image.open(io.BytesIO(base64.b64decode(m))) for m in PNG_URI.findall(page)]
    assert len(figures) == 3  # key versions, timeline, campaign grid
    for fig in figures:
        assert fig.format == "PNG" and fig.width >= 600 and fig.height >= 200
        assert distinct_colours(fig) > 20
    demo = json.loads((outputs / "demo.json").read_text())
    for row in demo["fleet"]:
        assert row["device_id"] in page
    campaign = json.loads((outputs / "campaign-cloud-update.json").read_text())
    assert f"<b>0/{campaign['cut_points']}</b> cuts failed" in page
    assert "PASS" in page and "power cut" in page and "duplicate ID (clone)" in page


def test_report_grid_counts_every_cut_the_campaign_ran(outputs: Path) -> None:
    c = load_campaign(outputs / "campaign-cloud-update.json")
    cells = [cell.result for row in c.rows for cell in row.cells.values()]
    assert c.modes == ("none", "partial", "done")
    assert len(c.rows) == c.data["flash_ops"]
    assert cells.count("pass") == c.data["cut_points"] and "fail" not in cells
    # --quick cuts every erase and commit word in each mode.
    for row in c.rows:
        if row.kind == "erase" or "commit word" in row.what:
            assert {cell.result for cell in row.cells.values()} == {"pass"}, row


def test_report_renders_in_headless_chromium(outputs: Path, tmp_path: Path) -> None:
    browser = next((b for b in map(shutil.which, CHROMIUM) if b), None)
    assert browser, "chromium is not installed: apt-get install chromium (scripts/setup.sh)"
    page = tmp_path / "report.html"
    build_report(outputs, page)
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), run.stderr[-2000:]
    assert shot.stat().st_size > 50_000
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    assert distinct_colours(image) > 500  # text, tables and figures, not a blank page
    # The header band is the dark gradient of the stylesheet, the page below it the light background.
    r, g, b = image.getpixel((10, 10))
    assert r < 90 and b > g > r, (r, g, b)
    assert image.getpixel((10, 1900)) == (0xF5, 0xF7, 0xFA)
    # The figures are there: the key-version bars (AK blue) appear somewhere on the first screen.
    colours = image.crop((0, 0, 1280, 1400)).getcolors(maxcolors=1 << 22) or []
    blues = sum(n for n, px in colours if px == (0x2F, 0x6F, 0xDE))
    assert blues > 1000


def test_report_with_a_failed_cut_shows_fail_and_the_replay_command(outputs: Path, tmp_path: Path) -> None:
    data = json.loads((outputs / "campaign-cloud-update.json").read_text())
    commit = next(o for o in data["ops"] if "commit word" in o["what"])
    data["inconsistent"] = 1
    data["failures"] = [
        {
            "cut": f"op {commit['index']} partial",
            "op": commit["what"],
            "outcome": "inconsistent",
            "detail": "the agent still has cloud v2 pending",
            "boot": "cloud(ak=1, cloud=1@1)",
            "replay": f"otakey campaign power-cut --flow cloud-update --seed 0 --cut-op "
            f"{commit['index']} --torn partial",
        }
    ]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "campaign.json").write_text(json.dumps(data))
    c = load_campaign(folder / "campaign.json")
    row = next(r for r in c.rows if r.index == commit["index"])
    assert row.cells["partial"].result == "fail"
    assert {row.cells["none"].result, row.cells["done"].result} == {"pass"}
    result = build_report(folder)
    page = result.path.read_text()
    assert result.ok is False and result.has_demo is False
    assert '<span class="pill fail">FAIL</span>' in page
    assert f"--cut-op {commit['index']} --torn partial" in page
    assert "No <code>demo.json</code> in this folder" in page


def test_report_with_nothing_to_show_says_what_to_run(tmp_path: Path) -> None:
    r = report("--from", str(tmp_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "otakey demo" in r.stderr and "otakey campaign power-cut" in r.stderr
    assert list(tmp_path.iterdir()) == []
