"""Power-cut campaigns (``otakey campaign power-cut``) on the real firmware, a real agent, Mosquitto
and moto: quick sweeps of every flow, a second cut during recovery, one cut replayed alone by its
instruction, and the verdicts a broken device would get."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from typing import Any

import pytest

from otakey.cli import campaign as campaign_cli
from otakey.emu.bus import FlashOp
from otakey.firmware.elf import FirmwareElf
from otakey.harness.campaign import (
    STAGES,
    CampaignSpec,
    CutPoint,
    OpInfo,
    Runner,
    Verdict,
    campaign_firmware,
    describe_ops,
    plan,
    run_campaign,
)
from otakey.harness.emu_backend import EmuBackend


@pytest.fixture(scope="module")
def elf() -> FirmwareElf:
    return FirmwareElf(campaign_firmware())


def _cli(*argv: str) -> tuple[int, dict[str, Any]]:
    parser = argparse.ArgumentParser()
    campaign_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["campaign", "power-cut", *argv, "--json"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.func(args)
    return code, json.loads(out.getvalue())


# --------------------------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize("flow", ["provision", "ak-rotate", "cloud-update", "migrate"])
def test_campaign_quick_torn_sweep_never_bricks_or_desyncs(flow: str) -> None:
    code, s = _cli("--flow", flow, "--quick", "--torn", "--seed", "3")
    assert code == 0 and s["failures"] == [], s["failures"]
    assert s["bricked"] == 0 and s["inconsistent"] == 0
    assert s["cut_points"] > 0 and s["torn_states"] > 0
    assert s["cut_points"] == s["torn_states"] * 3, "before, torn and after each chosen operation"
    assert s["not_reached"] == 0
    kinds = {op["what"].split(" of ")[0] for op in s["ops"]}
    assert {"erase", "commit word"} <= kinds
    if flow == "provision":
        assert "PK scrub erase" in kinds
    assert set(s) >= {
        "flow",
        "cut_points",
        "torn_states",
        "second_cuts",
        "bricked",
        "inconsistent",
        "seconds",
    }


def test_campaign_depth_two_cuts_the_recovery_again() -> None:
    s = run_campaign(CampaignSpec(flow="ak-rotate", torn=False, depth=2, quick=True, seed=5)).to_dict()
    assert s["failures"] == [] and s["bricked"] == 0 and s["inconsistent"] == 0
    assert s["second_cuts"] > 0
    assert s["cut_points"] + s["second_cuts"] + s["not_reached"] > s["cut_points"]


def test_campaign_at_instruction_replays_exactly_one_cut() -> None:
    golden = run_campaign(CampaignSpec(flow="cloud-update", cut_op=1)).to_dict()
    commit = next(op for op in golden["ops"] if op["what"].startswith("commit word"))
    code, s = _cli("--flow", "cloud-update", "--at-instruction", str(commit["instruction"] - 1000))
    assert code == 0 and s["cut_points"] == 1 and s["second_cuts"] == 0
    (one,) = s["replayed"]
    assert one["reached"] and one["outcome"] == "ok"
    assert one["point"] == f"instruction {commit['instruction'] - 1000}"
    # A thousand instructions before the commit word the new record is written but not committed.
    assert one["boot"].startswith("cloud(ak=1, cloud=1@")


def test_campaign_replay_command_names_the_cut() -> None:
    spec = CampaignSpec(flow="migrate", seed=9)
    point = CutPoint(op=12, mode="partial", second_op=3, second_mode="done")
    assert spec.replay_command(point) == (
        "otakey campaign power-cut --flow migrate --seed 9 --cut-op 12 "
        "--torn partial --second-op 3 --second-torn done"
    )
    assert CutPoint(instruction=777).replay_args() == ["--at-instruction", "777"]


def test_campaign_cli_rejects_a_torn_mode_without_a_cut_op() -> None:
    parser = argparse.ArgumentParser()
    campaign_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["campaign", "power-cut", "--flow", "provision", "--torn", "partial"])
    with pytest.raises(ValueError, match="--cut-op"):
        args.func(args)


# --------------------------------------------------------------------------------------------- planning


def _ops(whats: list[str]) -> list[OpInfo]:
    return [
        OpInfo(i + 1, "erase" if "erase" in w else "program", "A", 0, 1000 * (i + 1), w)
        for i, w in enumerate(whats)
    ]


def test_campaign_plan_full_sweep_cuts_before_in_and_after_every_operation() -> None:
    ops = _ops(["erase of area A", *["record word at +0x4 of area A"] * 5, "commit word of area A"])
    assert len(plan(ops, torn=True, quick=False, seed=0)) == 3 * len(ops)
    assert {p.mode for p in plan(ops, torn=False, quick=False, seed=0)} == {"none", "done"}


def test_campaign_plan_quick_keeps_erases_commits_and_run_ends() -> None:
    ops = _ops(
        [
            "erase of area A",
            *["record word at +0x4 of area A"] * 40,
            "commit word of area A",
            "PK scrub erase of area B",
        ]
    )
    chosen = sorted({p.op for p in plan(ops, torn=False, quick=True, seed=1)})
    assert {1, 2, 41, 42, 43} <= set(chosen)
    assert len(chosen) == 5 + 1
    assert chosen == sorted({p.op for p in plan(ops, torn=False, quick=True, seed=1)}), "deterministic"


def test_campaign_describe_ops_names_commit_scrub_and_invalidation(elf: FirmwareElf) -> None:
    a, b = elf.area("A"), elf.area("B")
    ops = [
        FlashOp(1, "erase", a.address, a.size, None, 1, 10),
        FlashOp(2, "program", a.address + 4, 4, 0x534B4B4F, 1, 20),
        FlashOp(3, "program", a.address, 4, 0x3CC3A55A, 1, 30),
        FlashOp(4, "erase", b.address, b.size, None, 2, 40),
        FlashOp(5, "program", a.address, 4, 0, 1, 50),
    ]
    assert [o.what for o in describe_ops(ops, elf)] == [
        "erase of area A",
        "record word at +0x4 of area A",
        "commit word of area A",
        "PK scrub erase of area B",
        "invalidation of area A",
    ]


# --------------------------------------------------------------------------------------------- verdicts


def test_campaign_boot_with_both_areas_erased_is_bricked(elf: FirmwareElf) -> None:
    runner = Runner("ak-rotate", elf.path, 0)
    dev = EmuBackend.create(elf, runner.uid)
    try:
        for area in ("A", "B"):
            dev.write_flash(area, b"\xff" * elf.area(area).size)
        with pytest.raises(Verdict) as info:
            runner._boot_check(dev)
        assert info.value.outcome == "bricked"
    finally:
        dev.close()


def test_campaign_boot_into_a_state_outside_the_flow_is_inconsistent(elf: FirmwareElf) -> None:
    # An AK rotation starts from a provisioned device: booting on the factory PK would be neither.
    runner = Runner("ak-rotate", elf.path, 0)
    dev = EmuBackend.create(elf, runner.uid)
    try:
        with pytest.raises(Verdict) as info:
            runner._boot_check(dev)
        assert info.value.outcome == "inconsistent" and "neither" in info.value.detail
        assert Runner("provision", elf.path, 0)._boot_check(dev) == str(STAGES["provision"][0])
    finally:
        dev.close()
