"""Reading what ``otakey demo`` and ``otakey campaign power-cut --json`` left in an output folder.

- ``demo.json`` (format ``otakey-demo/1``, written by :mod:`otakey.cli.demo`): summary, fleet table,
  phases with their batches and times, device events, the power cut, attacks, checks.
- A campaign summary: the JSON object ``otakey campaign power-cut --json`` prints
  (:meth:`otakey.harness.campaign.Summary.to_dict`): ``flow``, ``seed``, ``cut_points``, ``ops``
  (every flash operation of the golden run), ``failures`` (cut label, outcome, replay command) and
  counts. Saved by redirecting stdout, e.g. ``> otakey-out/campaign-cloud-update.json``. The newest
  such file of the folder is "the last campaign".

The summary lists the failing cuts, not every cut: the pass/fail grid is rebuilt from the
campaign's own plan (:func:`otakey.harness.campaign.plan` over the recorded operations, with the
same torn/quick/seed choices), every planned cut not among the failures being a pass. A summary
that carries per-cut ``results`` (``point`` label and ``outcome``) is used as it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otakey.errors import Error

DEMO_FILE = "demo.json"
DEMO_FORMAT = "otakey-demo/1"
MODE_LABELS = {"none": "before", "partial": "torn", "done": "after"}
_CUT_LABEL = re.compile(r"^op (\d+) (none|partial|done)\b")


class ReportError(Error):
    """The report has nothing to show, or an input file is unreadable."""


@dataclass
class CutCell:
    mode: str  # none | partial | done
    result: str  # pass | fail | not reached | not cut
    detail: str = ""


@dataclass
class OpRow:
    index: int
    kind: str
    what: str
    area: str
    offset: int
    cells: dict[str, CutCell] = field(default_factory=dict)


@dataclass
class Campaign:
    path: Path
    data: dict[str, Any]
    modes: tuple[str, ...]
    rows: list[OpRow]
    reconstructed: bool  # the grid comes from the plan (the summary had no per-cut results)

    @property
    def failed(self) -> int:
        return int(self.data.get("bricked", 0)) + int(self.data.get("inconsistent", 0))

    @property
    def total(self) -> int:
        return int(self.data.get("cut_points", 0)) + int(self.data.get("second_cuts", 0))


@dataclass
class Inputs:
    folder: Path
    demo: dict[str, Any] | None
    demo_path: Path | None
    campaign: Campaign | None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path} is not JSON ({exc}); was it written by otakey ... --json?") from None


def is_campaign(data: Any) -> bool:
    return isinstance(data, dict) and "flow" in data and "cut_points" in data and "ops" in data


def find_campaign(folder: Path) -> Path | None:
    """The newest campaign summary in ``folder`` (``campaign*.json`` first, then any JSON that is one)."""
    named = sorted(folder.glob("campaign*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in named:
        try:
            if is_campaign(json.loads(path.read_text())):
                return path
        except (OSError, ValueError):
            continue
    others = sorted(
        (p for p in folder.glob("*.json") if p not in named and p.name != DEMO_FILE),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in others:
        try:
            if is_campaign(json.loads(path.read_text())):
                return path
        except (OSError, ValueError):
            continue
    return None


def _planned(data: dict[str, Any], torn: bool) -> set[tuple[int, str]]:
    """The cut points the campaign ran, from its own planner (same ops, torn, quick, seed)."""
    ops = data.get("ops") or []
    modes = ("none", "partial", "done") if torn else ("none", "done")
    try:
        from otakey.harness.campaign import OpInfo, plan

        infos = [
            OpInfo(
                int(o["index"]),
                str(o["kind"]),
                str(o["area"]),
                int(o["offset"]),
                int(o.get("instruction", 0)),
                str(o["what"]),
            )
            for o in ops
        ]
        return {
            (p.op, p.mode)
            for p in plan(infos, torn, bool(data.get("quick")), int(data.get("seed", 0)))
            if p.op is not None
        }
    except (ImportError, KeyError, TypeError, ValueError):
        # Without the planner: every operation in every mode (a full sweep, as without --quick).
        return {(int(o["index"]), m) for o in ops for m in modes}


def load_campaign(path: Path) -> Campaign:
    data = _read_json(path)
    if not is_campaign(data):
        raise ReportError(f"{path} is not a power-cut campaign summary (otakey campaign power-cut --json)")
    results = data.get("results")
    torn = int(data.get("torn_states", 0)) > 0 or any(
        (r.get("point") or "").split(" ")[2:3] == ["partial"] for r in results or [] if isinstance(r, dict)
    )
    modes = ("none", "partial", "done") if torn else ("none", "done")
    rows = [
        OpRow(int(o["index"]), str(o["kind"]), str(o["what"]), str(o["area"]), int(o["offset"]))
        for o in data.get("ops") or []
    ]
    by_index = {r.index: r for r in rows}
    reconstructed = not isinstance(results, list)
    if not reconstructed:
        for r in results:
            m = _CUT_LABEL.match(str(r.get("point", "")))
            if m is None or int(m.group(1)) not in by_index:
                continue
            outcome = str(r.get("outcome", ""))
            result = {"ok": "pass", "not-reached": "not reached"}.get(outcome, "fail")
            by_index[int(m.group(1))].cells[m.group(2)] = CutCell(
                m.group(2), result, str(r.get("detail", ""))
            )
    else:
        failed: dict[tuple[int, str], str] = {}
        for f in data.get("failures") or []:
            m = _CUT_LABEL.match(str(f.get("cut", "")))
            if m is not None:
                failed[(int(m.group(1)), m.group(2))] = f"{f.get('outcome')}: {f.get('detail')}"
        planned = _planned(data, torn)
        for row in rows:
            for mode in modes:
                if (row.index, mode) in failed:
                    row.cells[mode] = CutCell(mode, "fail", failed[(row.index, mode)])
                elif (row.index, mode) in planned:
                    row.cells[mode] = CutCell(mode, "pass")
    for row in rows:
        for mode in modes:
            row.cells.setdefault(mode, CutCell(mode, "not cut"))
    return Campaign(path, data, modes, rows, reconstructed)


def load_inputs(folder: str | Path, campaign: str | Path | None = None) -> Inputs:
    """The demo run and the last campaign of ``folder``; ReportError when there is neither."""
    root = Path(folder)
    if not root.is_dir():
        raise ReportError(
            f"{root} is not a folder: run `otakey demo` (it writes ./otakey-out/) or pass --from DIR"
        )
    demo_path = root / DEMO_FILE
    demo = None
    if demo_path.exists():
        demo = _read_json(demo_path)
        if not isinstance(demo, dict) or demo.get("format") != DEMO_FORMAT:
            raise ReportError(f"{demo_path} is not an `otakey demo` result (format {DEMO_FORMAT!r} expected)")
    camp_path = Path(campaign) if campaign is not None else find_campaign(root)
    camp = load_campaign(camp_path) if camp_path is not None else None
    if demo is None and camp is None:
        raise ReportError(
            f"{root} holds neither {DEMO_FILE} nor a campaign summary: run `otakey demo --out {root}` "
            f"or `otakey campaign power-cut --flow cloud-update --json > {root}/campaign.json`"
        )
    return Inputs(root, demo, demo_path if demo is not None else None, camp)
