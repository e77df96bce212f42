"""The report as one self-contained HTML page: inline CSS, figures as base64 PNG data URIs, no
script and nothing fetched. Every value from the input files is escaped."""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Iterable
from typing import Any

from . import plots
from .load import MODE_LABELS, Campaign, Inputs

CSS = """
:root { --ink:#1f2933; --muted:#7b8794; --line:#e4e7eb; --bg:#f5f7fa; --card:#fff; --blue:#2f6fde;
        --green:#2e9e5b; --red:#d64545; --orange:#e8871e; --teal:#1f9d8b; --purple:#7c5cc4; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif; }
header { background:linear-gradient(120deg,#16324f,#2f6fde); color:#fff; padding:28px 0 24px; }
.wrap { max-width:1120px; margin:0 auto; padding:0 24px; }
header h1 { margin:0 0 4px; font-size:26px; font-weight:650; letter-spacing:.2px; }
header p { margin:0; opacity:.85; }
.pill { display:inline-block; padding:2px 12px; border-radius:999px; font-weight:700; font-size:13px;
        margin-left:10px; vertical-align:middle; }
.pill.pass { background:#d7f2e1; color:#17663a; } .pill.fail { background:#fde0e0; color:#9b1c1c; }
main { padding:8px 0 40px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:18px 22px;
          margin:18px 0; box-shadow:0 1px 2px rgba(16,24,40,.04); }
h2 { font-size:18px; margin:0 0 12px; } h3 { font-size:15px; margin:18px 0 8px; }
.kpis { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:12px; margin-top:18px; }
.kpi { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 14px; }
.kpi .v { font-size:24px; font-weight:700; } .kpi .l { color:var(--muted); font-size:12px; }
.kpi.good .v { color:var(--green); } .kpi.bad .v { color:var(--red); }
table { border-collapse:collapse; width:100%; font-size:13px; }
th { text-align:left; font-weight:600; color:var(--muted); border-bottom:2px solid var(--line);
     padding:7px 10px;
     white-space:nowrap; font-size:12px; text-transform:uppercase; letter-spacing:.3px; }
td { border-bottom:1px solid var(--line); padding:7px 10px; vertical-align:top; }
tbody tr:nth-child(even) td { background:#fafbfc; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px; }
.tag { display:inline-block; padding:1px 8px; border-radius:6px; font-size:12px; font-weight:600; }
.tag.ok { background:#d7f2e1; color:#17663a; } .tag.bad { background:#fde0e0; color:#9b1c1c; }
.tag.mosquitto { background:#d3f1ec; color:#0f6156; } .tag.aws-iot { background:#fdebd3; color:#8a4a06; }
.tag.grey { background:#eef0f3; color:#52606d; }
img.fig { display:block; max-width:100%; height:auto; margin:6px 0 10px; }
.note { color:var(--muted); font-size:13px; }
details summary { cursor:pointer; color:var(--blue); margin:8px 0; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:10px 0 30px; }
"""


def esc(value: Any) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="fig" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def tag(text: str, kind: str) -> str:
    return f'<span class="tag {esc(kind)}">{esc(text)}</span>'


def ok_tag(ok: bool, yes: str = "ok", no: str = "failed") -> str:
    return tag(yes, "ok") if ok else tag(no, "bad")


def table(head: Iterable[str], rows: Iterable[Iterable[str]], numeric: Iterable[int] = ()) -> str:
    """Cells are HTML already (escape values with :func:`esc`)."""
    nums = set(numeric)
    out = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append(
            "<tr>"
            + "".join(
                f'<td class="num">{c}</td>' if i in nums else f"<td>{c}</td>" for i, c in enumerate(row)
            )
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def kpi(value: Any, label: str, good: bool | None = None) -> str:
    cls = "" if good is None else (" good" if good else " bad")
    return f'<div class="kpi{cls}"><div class="v">{esc(value)}</div><div class="l">{esc(label)}</div></div>'


# --------------------------------------------------------------------------------------------- sections


def demo_kpis(demo: dict[str, Any]) -> str:
    s = demo["summary"]
    n = s["devices"]
    cards = [
        kpi(n, "devices, one factory image"),
        kpi(f"{s['provisioned']}/{n}", "provisioned (stage 2)", s["provisioned"] == n),
        kpi(f"{s.get('pk_erased', 0)}/{n}", "PK erased from flash", s.get("pk_erased", 0) == n),
        kpi(f"{s['cloud_connected']}/{n}", "connected with own cloud key", s["cloud_connected"] == n),
        kpi(f"{s['rotated']}/{n}", "rotated (cloud key + AK)", s["rotated"] == n),
        kpi(
            f"{s['power_cuts_recovered']}/{s.get('power_cuts', 0)}",
            "power cuts recovered",
            s["power_cuts_recovered"] == s.get("power_cuts", 0),
        ),
        kpi(s["migrated"], "migrated to AWS IoT", s["migrated"] >= 1),
        kpi(f"{s['refused_attacks']}/2", "attacks refused", s["refused_attacks"] == 2),
        kpi(f"{s['seconds']:.1f} s", "demo run time"),
    ]
    return f'<div class="kpis">{"".join(cards)}</div>'


def fleet_section(demo: dict[str, Any]) -> str:
    fleet = demo.get("fleet") or []
    rows = []
    for r in fleet:
        cloud = str(r.get("cloud") or "-")
        agrees = r.get("agrees")
        rows.append(
            [
                esc(r["device"]),
                f'<span class="mono">{esc(r["device_id"])}</span>',
                esc(r.get("ak_version")),
                tag(cloud, cloud if cloud in ("mosquitto", "aws-iot") else "grey"),
                esc(r.get("cloud_key_version")),
                ok_tag(bool(agrees), esc(r.get("state")), esc(r.get("state"))),
                esc(r.get("notes")),
            ]
        )
    body = table(
        ["device", "device ID (UID)", "AK", "cloud", "cloud key", "agent state", "notes"],
        rows,
        numeric=(2, 4),
    )
    fig = img(plots.key_versions(fleet), "key versions per device") if fleet else ""
    return (
        f'<section><h2>Fleet</h2>{fig}{body}<p class="note">Versions are read from each device\'s '
        "keystore (flash-layout §2 boot rule); the agent state is green when the agent's store holds "
        "the same "
        "versions.</p></section>"
    )


def timeline_section(demo: dict[str, Any]) -> str:
    phases = demo.get("phases") or []
    events = demo.get("events") or []
    cut = demo.get("power_cut")
    rows = []
    for p in phases:
        batches = p.get("batches") or []
        if not batches:
            rows.append(
                [
                    esc(p["phase"]),
                    "-",
                    "-",
                    esc(f"{p['start']:.2f}"),
                    esc(f"{(p['end'] or p['start']):.2f}"),
                    "-",
                ]
            )
        for b in batches:
            rows.append(
                [
                    esc(p["phase"]),
                    esc(b["index"]),
                    esc(", ".join(b["devices"])),
                    esc(f"{b['start']:.2f}"),
                    esc(f"{b['end']:.2f}"),
                    ok_tag(b["failed"] == 0, f"{b['succeeded']} ok", f"{b['failed']} failed"),
                ]
            )
    fig = img(plots.timeline(phases, events, cut), "timeline of the rotation batches") if phases else ""
    body = table(["phase", "batch", "devices", "start (s)", "end (s)", "result"], rows, numeric=(3, 4))
    ev_rows = [[esc(f"{e['t']:.3f}"), esc(e["device"]), esc(e["kind"]), esc(e["detail"])] for e in events]
    ev = (
        f"<details><summary>All {len(events)} device events</summary>"
        f"{table(['t (s)', 'device', 'kind', 'what'], ev_rows, numeric=(0,))}</details>"
    )
    cut_html = ""
    if cut and "at" in cut:
        good = bool(cut.get("in_new_record")) and "recovered_at" in cut
        cut_html = (
            f"<h3>The power cut {ok_tag(good, 'recovered', 'not recovered')}</h3>"
            f"<p>{esc(cut['device'])} lost power at flash operation {esc(cut.get('flash_op'))} of its "
            f"cloud-key update — a {esc(cut.get('op_kind'))} of word +0x{int(cut.get('offset', 0)):X} "
            "of the new record in area "
            f"{esc(cut.get('target_area'))}, torn — at {cut['at']:.2f} s. Its flash then booted into "
            f"{esc(cut.get('boots_into'))} (area {esc(cut.get('target_area'))} "
            f"{'valid' if cut.get('target_valid') else 'invalid'}); after its next power-on it finished the "
            f"rotation at {esc(cut.get('recovered_at'))} s.</p>"
        )
    return f"<section><h2>Timeline of the rotation batches</h2>{fig}{body}{cut_html}{ev}</section>"


def checks_section(demo: dict[str, Any]) -> str:
    attacks = [
        [esc(a["attack"]), esc(a["target"]), ok_tag(a["refused"], "refused", "NOT refused"), esc(a["detail"])]
        for a in demo.get("attacks") or []
    ]
    checks = [[esc(c["check"]), ok_tag(c["ok"]), esc(c["detail"])] for c in demo.get("checks") or []]
    return (
        "<section><h2>Attacks</h2>"
        + table(["attack", "against", "result", "evidence"], attacks)
        + "<h3>Every check of the run</h3>"
        + table(["check", "result", "what was verified"], checks)
        + "</section>"
    )


def campaign_section(c: Campaign | None) -> str:
    if c is None:
        return (
            '<section><h2>Power-cut campaign</h2><p class="note">No campaign summary in this folder. Run '
            "<code>otakey campaign power-cut --flow cloud-update --torn --json &gt; "
            "otakey-out/campaign.json</code> and build the report again.</p></section>"
        )
    d = c.data
    verdict = ok_tag(c.failed == 0, "pass", "fail")
    pct = 100.0 * c.failed / c.total if c.total else 0.0
    head = (
        f"<p>{verdict} flow <b>{esc(d.get('flow'))}</b>, seed {esc(d.get('seed'))}"
        f"{', quick subset' if d.get('quick') else ''}: <b>{c.failed}/{c.total}</b> cuts failed "
        f"({pct:.1f}%) — {esc(d.get('cut_points'))} cut points over {esc(d.get('flash_ops'))} "
        "flash operations, "
        f"{esc(d.get('torn_states'))} torn, {esc(d.get('second_cuts'))} second cuts; {esc(d.get('bricked'))} "
        f"bricked, {esc(d.get('inconsistent'))} inconsistent, {esc(d.get('not_reached'))} never reached; "
        f"{float(d.get('seconds', 0)):.1f} s on {esc(d.get('jobs'))} process(es). "
        f'<span class="note">Source: {esc(c.path.name)}.</span></p>'
    )
    fig = img(plots.campaign_grid(c), "power-cut campaign grid") if c.rows else ""
    how = (
        '<p class="note">Pass/fail per cut comes from the campaign\'s summary: its failures, and its plan '
        "(same operations, torn/quick choices and seed) for the cuts that passed.</p>"
        if c.reconstructed
        else ""
    )
    fails = [
        [
            esc(f.get("cut")),
            esc(f.get("op")),
            tag(str(f.get("outcome")), "bad"),
            esc(f.get("detail")),
            f"<code>{esc(f.get('replay'))}</code>",
        ]
        for f in d.get("failures") or []
    ]
    fail_html = (
        "<h3>Failed cuts</h3>" + table(["cut", "operation", "outcome", "detail", "replay alone"], fails)
        if fails
        else "<p>No cut left the device without a key or out of step with the agent and the cloud.</p>"
    )

    def cell(r: Any, m: str) -> str:
        res = r.cells[m].result
        kind = {"pass": "ok", "fail": "bad"}.get(res, "grey")
        return tag(res, kind)

    op_rows = [
        [
            esc(r.index),
            esc(r.kind),
            esc(r.what),
            esc(r.area),
            esc(f"+0x{r.offset:X}"),
            *(cell(r, m) for m in c.modes),
        ]
        for r in c.rows
    ]
    ops = (
        f"<details><summary>All {len(c.rows)} flash operations and their cuts</summary>"
        + table(
            ["#", "kind", "what", "area", "offset", *(f"cut {MODE_LABELS.get(m, m)}" for m in c.modes)],
            op_rows,
            numeric=(0,),
        )
        + "</details>"
    )
    return f"<section><h2>Power-cut campaign</h2>{head}{fig}{how}{fail_html}{ops}</section>"


def render(inputs: Inputs) -> str:
    demo = inputs.demo
    camp = inputs.campaign
    ok = (demo is None or bool(demo["summary"].get("ok"))) and (camp is None or camp.failed == 0)
    verdict = f'<span class="pill {"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</span>'
    subtitle = []
    if demo is not None:
        subtitle.append(
            f"product order {esc(demo.get('po_name'))}, backend {esc(demo.get('backend'))}, "
            f"demo run {esc(demo.get('created'))}"
        )
    if camp is not None:
        subtitle.append(f"campaign {esc(camp.data.get('flow'))}")
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>OTA-Key fleet report</title>",
        f"<style>{CSS}</style></head><body>",
        f'<header><div class="wrap"><h1>OTA-Key fleet report{verdict}</h1>',
        f'<p>{" · ".join(subtitle)}</p></div></header><main><div class="wrap">',
    ]
    if demo is not None:
        parts += [demo_kpis(demo), fleet_section(demo), timeline_section(demo), checks_section(demo)]
    else:
        parts.append(
            '<section><h2>Fleet</h2><p class="note">No <code>demo.json</code> in this folder: run '
            "<code>otakey demo</code> to add the fleet and its timeline.</p></section>"
        )
    parts.append(campaign_section(camp))
    parts.append(
        f"</div></main><footer>Generated by <code>otakey report</code> from {esc(inputs.folder)} at "
        f"{esc(generated)}. One self-contained file: no script, nothing fetched.</footer></body></html>"
    )
    return "\n".join(parts)
