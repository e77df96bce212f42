"""The report's figures, drawn with matplotlib (Agg, no display) and returned as PNG bytes."""

from __future__ import annotations

import io
from typing import Any

from .load import MODE_LABELS, Campaign

# One palette for the page and the figures (the CSS uses the same values).
INK = "#1f2933"
MUTED = "#7b8794"
GRID = "#e4e7eb"
BLUE = "#2f6fde"
TEAL = "#1f9d8b"
ORANGE = "#e8871e"
RED = "#d64545"
GREEN = "#2e9e5b"
PURPLE = "#7c5cc4"
LIGHT = "#d9dee4"
YELLOW = "#f0c419"
PLATFORM_COLORS = {"mosquitto": TEAL, "aws-iot": ORANGE}
PHASE_COLORS = {
    "provisioning": BLUE,
    "cloud credentials": TEAL,
    "cloud-key rotation": PURPLE,
    "AK rotation": BLUE,
    "migration to AWS IoT": ORANGE,
    "attacks": RED,
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 9,
            "axes.edgecolor": LIGHT,
            "axes.labelcolor": INK,
            "xtick.color": MUTED,
            "ytick.color": INK,
            "axes.titlesize": 10,
            "axes.titleweight": "bold",
            "axes.titlecolor": INK,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
        }
    )
    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", facecolor="white")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def key_versions(fleet: list[dict[str, Any]]) -> bytes:
    """AK and cloud-key version of every device; the cloud bar is coloured by platform."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    names = [r["device"] for r in fleet]
    ak = [r.get("ak_version") or 0 for r in fleet]
    cloud = [r.get("cloud_key_version") or 0 for r in fleet]
    colors = [PLATFORM_COLORS.get(str(r.get("cloud")), MUTED) for r in fleet]
    width = max(6.0, min(14.0, 1.0 + 0.55 * len(names)))
    fig, ax = plt.subplots(figsize=(width, 2.9))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], ak, width=0.38, color=BLUE, label="AK version")
    ax.bar([x + 0.2 for x in xs], cloud, width=0.38, color=colors)
    for x, (a, c) in enumerate(zip(ak, cloud, strict=True)):
        ax.text(x - 0.2, a + 0.05, str(a), ha="center", va="bottom", fontsize=8, color=INK)
        ax.text(x + 0.2, c + 0.05, str(c), ha="center", va="bottom", fontsize=8, color=INK)
    ax.set_xticks(list(xs), names, rotation=0 if len(names) <= 16 else 90)
    top = max([*ak, *cloud, 1])
    ax.set_ylim(0, top + 0.8)
    ax.set_yticks(range(0, top + 1))
    ax.set_ylabel("key version")
    ax.yaxis.grid(True, color=GRID)
    ax.set_axisbelow(True)
    handles = [Patch(color=BLUE, label="AK")] + [
        Patch(color=c, label=f"cloud key ({p})") for p, c in PLATFORM_COLORS.items()
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Key versions per device (read from each device's flash)", loc="left")
    return _png(fig)


def timeline(
    phases: list[dict[str, Any]], events: list[dict[str, Any]], power_cut: dict[str, Any] | None
) -> bytes:
    """Phases and the batches of each gray release on a time axis, with the moment each device
    committed its new key, and the power cut and its recovery."""
    plt = _pyplot()

    rows: list[tuple[str, float, float, str, list[str]]] = []  # label, start, end, colour, devices
    for p in phases:
        color = PHASE_COLORS.get(p["phase"], MUTED)
        end = p["end"] if p["end"] is not None else p["start"]
        if len(p.get("batches") or []) > 1:
            for b in p["batches"]:
                rows.append((f"{p['phase']} · batch {b['index']}", b["start"], b["end"], color, b["devices"]))
        else:
            devices = (p.get("batches") or [{}])[0].get("devices", []) if p.get("batches") else []
            rows.append((p["phase"], p["start"], max(end, p["start"]), color, devices))
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(rows) + 1.4))
    commits = [e for e in events if e["kind"] in ("ak", "cloud")]
    for y, (_label, start, end, color, devices) in enumerate(rows):
        ax.barh(
            y,
            max(end - start, 0.05),
            left=start,
            height=0.55,
            color=color,
            alpha=0.25,
            edgecolor=color,
            linewidth=1.2,
        )
        mine = [e["t"] for e in commits if e["device"] in devices and start - 0.01 <= e["t"] <= end + 0.5]
        if mine:
            ax.scatter(mine, [y] * len(mine), s=18, color=color, zorder=3, linewidths=0)
        ax.text(end + 0.1, y, f"{end - start:.1f} s", va="center", fontsize=8, color=MUTED)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the demo started")
    ax.xaxis.grid(True, color=GRID)
    ax.set_axisbelow(True)
    if power_cut and "at" in power_cut:
        ax.axvline(power_cut["at"], color=RED, linestyle="--", linewidth=1)
        ax.annotate(
            f"power cut: {power_cut['device']}",
            (power_cut["at"], -0.45),
            color=RED,
            fontsize=8,
            ha="left",
            va="bottom",
            xytext=(3, 0),
            textcoords="offset points",
        )
        if "recovered_at" in power_cut:
            ax.axvline(power_cut["recovered_at"], color=GREEN, linestyle="--", linewidth=1)
            ax.annotate(
                "recovered",
                (power_cut["recovered_at"], len(rows) - 0.55),
                color=GREEN,
                fontsize=8,
                ha="left",
                va="top",
                xytext=(3, 0),
                textcoords="offset points",
            )
    ax.set_title("Timeline: phases, gray-release batches and each device's key commit (dots)", loc="left")
    return _png(fig)


def campaign_grid(c: Campaign) -> bytes:
    """Every flash operation of the flow (top strip: what it writes) and, per cut mode, whether the
    cut there passed (the device came back with the old or the new key and agreed with the agent)."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    kinds = ["erase", "record word", "commit word", "PK scrub / invalidation"]
    kind_colors = [PURPLE, BLUE, ORANGE, MUTED]

    def kind_of(what: str, kind: str) -> int:
        if "commit word" in what:
            return 2
        if "scrub" in what or "invalidation" in what:
            return 3
        return 0 if kind == "erase" else 1

    results = ["pass", "fail", "not reached", "not cut"]
    result_colors = [GREEN, RED, YELLOW, "#eef0f3"]
    n = max(1, len(c.rows))
    fig = plt.figure(figsize=(max(7.0, min(15.0, 2.0 + 0.16 * n)), 0.42 * len(c.modes) + 1.9))
    grid = fig.add_gridspec(2, 1, height_ratios=[0.35, len(c.modes)], hspace=0.08)
    top = fig.add_subplot(grid[0])
    bottom = fig.add_subplot(grid[1], sharex=top)
    top.imshow(
        [[kind_of(r.what, r.kind) for r in c.rows]],
        aspect="auto",
        cmap=ListedColormap(kind_colors),
        vmin=-0.5,
        vmax=3.5,
        interpolation="nearest",
        extent=(0.5, n + 0.5, 0, 1),
    )
    top.set_yticks([0.5], ["operation"])
    top.tick_params(axis="x", labelbottom=False, length=0)
    matrix = [[results.index(r.cells[m].result) for r in c.rows] for m in c.modes]
    bottom.imshow(
        matrix,
        aspect="auto",
        cmap=ListedColormap(result_colors),
        vmin=-0.5,
        vmax=3.5,
        interpolation="nearest",
        extent=(0.5, n + 0.5, len(c.modes) - 0.5, -0.5),
    )
    bottom.set_yticks(range(len(c.modes)), [f"cut {MODE_LABELS.get(m, m)}" for m in c.modes])
    for i in range(len(c.modes) + 1):
        bottom.axhline(i - 0.5, color="white", linewidth=2)
    for x in range(1, n):
        bottom.axvline(x + 0.5, color="white", linewidth=0.6)
    bottom.set_xlabel("flash operation of the flow (1 = first)")
    for ax in (top, bottom):
        for side in ("left", "bottom", "top", "right"):
            ax.spines[side].set_visible(False)
    handles = [Patch(color=col, label=k) for k, col in zip(kinds, kind_colors, strict=True)] + [
        Patch(facecolor=col, edgecolor=LIGHT, label=r) for r, col in zip(results, result_colors, strict=True)
    ]
    bottom.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=8, fontsize=8)
    top.set_title(f"Power-cut campaign {c.data.get('flow')}: {c.failed}/{c.total} cuts failed", loc="left")
    return _png(fig)
