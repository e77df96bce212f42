"""``otakey report``: one self-contained HTML page of the fleet (from ``otakey demo``) and of the last
power-cut campaign (from ``otakey campaign power-cut --json``), figures embedded as PNG.

Parts: :mod:`.load` reads the output folder, :mod:`.plots` draws the figures with matplotlib,
:mod:`.html` lays out the page.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .load import Campaign, Inputs, ReportError, load_campaign, load_inputs

__all__ = [
    "Campaign",
    "Inputs",
    "ReportError",
    "ReportResult",
    "build_report",
    "load_campaign",
    "load_inputs",
]


@dataclass(frozen=True)
class ReportResult:
    path: Path
    size: int
    has_demo: bool
    has_campaign: bool
    ok: bool


def build_report(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    campaign: str | os.PathLike[str] | None = None,
) -> ReportResult:
    """Write the report of ``folder`` to ``out`` (default ``folder/report.html``)."""
    try:
        from .html import render
    except ImportError as exc:  # matplotlib is a dependency, but a partial install happens
        raise ReportError(f"the report needs matplotlib ({exc}): pip install 'matplotlib>=3.7'") from None
    inputs = load_inputs(folder, campaign)
    page = render(inputs)
    target = Path(out) if out is not None else Path(folder) / "report.html"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        raise ReportError(f"cannot write {target}: {exc.strerror}") from None
    demo_ok = inputs.demo is None or bool(inputs.demo["summary"].get("ok"))
    camp_ok = inputs.campaign is None or inputs.campaign.failed == 0
    return ReportResult(
        target, len(page.encode()), inputs.demo is not None, inputs.campaign is not None, demo_ok and camp_ok
    )
