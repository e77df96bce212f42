"""The operator CLI end to end: ``otakey fleet rotate`` gray releases over ~20 protocol-level
devices running their idle loop against a real agent, ``fleet status`` JSON, and the one-sentence
errors a user can hit."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from agentproc import Driver, Stack, acli, base_env, make_stack, run
from otakey.agent.agentlog import EventLog, fields_of
from otakey.agent.cloudurl import parse_cloud_url, redact
from otakey.agent.product_file import ProductFile
from otakey.harness.protocol_device import ProtocolDevice
from otakey.protocol.keystore import decode_record


@pytest.fixture
def stack(tmp_path: Any, mosquitto: Any) -> Iterator[Stack]:
    st = make_stack(tmp_path, "sqlite", mosquitto)
    st.create_product("PO-FLEET", 100, via_cli=True)
    st.agent()
    yield st
    codes = [a.stop() for a in st.agents]
    assert codes == [0] * len(codes), st.agents[0].log[-3000:]


async def fleet(stack: Stack, n: int) -> list[ProtocolDevice]:
    devices = sorted((stack.device(stack.agents[0]) for _ in range(n)), key=lambda d: d.device_id)

    async def setup(d: ProtocolDevice) -> None:
        results = await d.run_until_idle()
        assert results and all(r.ok for r in results) and d.cloud is not None

    await asyncio.gather(*(setup(d) for d in devices))
    return devices


def test_cli_fleet_rotate_ak_gray_release_all_batches_succeed(stack: Stack) -> None:
    async def go() -> tuple[dict[str, Any], str, list[ProtocolDevice]]:
        devices = await fleet(stack, 20)
        async with Driver(devices, interval=0.3):
            rc, report, err = await acli(stack, "fleet", "rotate", "--kind", "ak", "--batch-size", "5",
                                         "--max-failures", "10%", "--timeout", "15", "--poll", "0.1")
        assert rc == 0, err
        return report, err, devices

    report, err, devices = run(go())
    assert report["succeeded"] == 20 and report["failed"] == [] and not report["stopped"]
    assert [b["devices"] for b in report["batches"]] == [5, 5, 5, 5]
    assert all(d.ak_version == 2 for d in devices)
    # One progress line per batch on stderr (not a terminal).
    assert [line.split("]")[1].split()[0] for line in err.splitlines() if line.startswith("[")] == \
        ["5/20", "10/20", "15/20", "20/20"]
    status = stack.cli("fleet", "status")
    assert status["devices"] == 20 and status["states"] == {"active": 20}
    assert status["ak_versions"] == {"2": 20} and status["cloud"] == {"mosquitto v1": 20}
    assert status["pending_actions"] == {} and status["pending_ak"] == 0 and status["never_checked_in"] == 0
    assert status["products"][0]["po_name"] == "PO-FLEET" and status["products"][0]["devices"] == 20


def test_cli_fleet_rotate_cloud_stops_when_a_batch_fails_its_health_check(stack: Stack) -> None:
    async def go() -> tuple[int, dict[str, Any], list[ProtocolDevice]]:
        devices = await fleet(stack, 10)
        async with Driver(devices, interval=0.3) as driver:
            driver.offline = {d.device_id for d in devices[:3]}  # the first batch holds them
            rc, report, _ = await acli(stack, "fleet", "rotate", "--kind", "cloud", "--batch-size", "5",
                                       "--max-failures", "10%", "--timeout", "1.5", "--poll", "0.1")
        return rc, report, devices

    rc, report, devices = run(go())
    assert rc == 3 and report["stopped"] and "exceed --max-failures 10%" in report["reason"]
    assert len(report["batches"]) == 1 and report["remaining"] == 5 and report["succeeded"] == 2
    assert sorted(f["device_id"] for f in report["failed"]) == sorted(d.device_id.hex() for d in devices[:3])
    assert {f["reason"] for f in report["failed"]} == {"timeout"}
    assert [d.cloud.version for d in devices if d.cloud] == [1, 1, 1, 2, 2] + [1] * 5
    status = stack.cli("fleet", "status")
    assert status["cloud"] == {"mosquitto v1": 8, "mosquitto v2": 2}
    assert status["pending_actions"] == {"update_cloud": 3}  # the offline ones stay marked


def test_cli_fleet_release_stops_on_a_new_anomaly(stack: Stack) -> None:
    async def go() -> tuple[int, dict[str, Any]]:
        devices = await fleet(stack, 6)
        async with Driver(devices, interval=0.1):
            task = asyncio.ensure_future(acli(stack, "fleet", "rotate", "--kind", "ak", "--batch-size", "1",
                                              "--timeout", "10", "--poll", "0.2"))

            async def marked(tx: Any) -> bool:
                return any(d.pending_action != 0 or d.ak_version > 1 for d in await tx.list_devices())

            while not await stack.aquery(marked):  # the release has begun
                await asyncio.sleep(0.05)
            clone = stack.device(stack.agents[0], device_id=devices[-1].device_id)  # same ID, PK again
            assert (await clone.provision()).outcome == "refused"
            await clone.close()
            rc, report, _ = await task
        return rc, report

    rc, report = run(go())
    assert rc == 3 and "new anomalies (duplicate_provisioning)" in report["reason"]
    assert report["remaining"] > 0
    anomalies = stack.cli("anomalies")
    assert [a["kind"] for a in anomalies] == ["duplicate_provisioning"]
    stack.cli("anomalies", "ack", str(anomalies[0]["id"]))
    assert stack.cli("anomalies") == []


def _fails(args: list[str], env: dict[str, str]) -> str:
    r = subprocess.run([sys.executable, "-m", "otakey", *args], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("otakey: error: "), r.stderr
    return lines[0]


def test_cli_user_errors_are_one_clear_sentence(stack: Stack, tmp_path: Any) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        msg = _fails(["agent", "serve", "--db", stack.db_url, "--listen", f"127.0.0.1:{port}"], stack.env)
        assert f"cannot listen on 127.0.0.1:{port}" in msg and "in use" in msg
    finally:
        busy.close()
    msg = _fails(["fleet", "status", "--db", "postgresql://postgres@127.0.0.1:1/nothing"], stack.env)
    assert "cannot open the database" in msg
    no_kek = base_env()
    no_kek.pop("OTAKEY_KEK", None)
    assert "no KEK" in _fails(["fleet", "status", "--db", stack.db_url], no_kek)
    wrong = dict(stack.env, OTAKEY_KEK=os.urandom(32).hex())
    assert "KEK does not match" in _fails(["fleet", "status", "--db", stack.db_url], wrong)
    bad = tmp_path / "bad.product.json"
    bad.write_text("{not json")
    assert "is not JSON" in _fails(["product", "verify", str(bad), "--db", stack.db_url], stack.env)
    good = stack.tmp / "PO-FLEET.product.json"
    ok = subprocess.run([sys.executable, "-m", "otakey", "product", "verify", str(good), "--db",
                         stack.db_url], env=stack.env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "matches the database" in ok.stdout
    assert "no device" in _fails(["device", "show", "00" * 12, "--db", stack.db_url], stack.env)
    assert "not a device ID" in _fails(["device", "revoke", "xyz", "--db", stack.db_url], stack.env)


def test_cli_product_create_writes_private_product_file_matching_database(stack: Stack) -> None:
    out = stack.tmp / "PO-2.json"
    created = stack.cli("product", "create", "--po", "PO-2", "--quantity", "5", "--out", str(out))
    assert created["po_name"] == "PO-2" and created["po_id"] == 2 and created["product_file"] == str(out)
    assert out.stat().st_mode & 0o777 == 0o600  # it holds the PK
    pf = ProductFile.read(out)
    state = decode_record(bytes.fromhex(json.loads(out.read_text())["factory_record"]))
    assert (state.po_id, state.po_name, state.pk, state.generation) == (2, "PO-2", pf.pk, 1)
    listed = stack.cli("product", "list")
    assert [(p["po_name"], p["quantity"]) for p in listed] == [("PO-FLEET", 100), ("PO-2", 5)]
    assert stack.cli("product", "freeze", "PO-2")["frozen"] is True
    shown = stack.cli("product", "show", "PO-2")
    assert shown["frozen"] is True and shown["devices"] == 0
    taken = stack.cli("product", "create", "--po", "PO-2", "--quantity", "5", check=False)
    assert taken.returncode == 1 and "exists already" in taken.stderr


def test_cli_cloud_url_scheme_parses_and_never_shows_secrets() -> None:
    spec = parse_cloud_url("mosquitto://admin:p%40ss%3Aw@127.0.0.1:1883"
                           "?device_endpoint=mqtt://10.0.0.1:1883")
    assert spec.platform == "mosquitto"
    assert spec.options == {"url": "mqtt://127.0.0.1:1883", "admin_username": "admin",
                            "admin_password": "p@ss:w", "device_endpoint": "mqtt://10.0.0.1:1883"}
    assert "p@ss" not in spec.display and "p@ss" not in repr(spec)
    aws = parse_cloud_url("aws-iot://KEY:SECRET@127.0.0.1:5000?region=eu-west-1")
    assert aws.options == {"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:5000",
                           "aws_access_key_id": "KEY", "aws_secret_access_key": "SECRET"}
    assert "SECRET" not in redact("aws-iot://KEY:SECRET@127.0.0.1:5000?region=eu-west-1")
    assert parse_cloud_url("aws-iot://?region=us-east-1").options == {"region": "us-east-1"}
    assert parse_cloud_url("aws-iot://iot.example:443?region=us-east-1").options["endpoint_url"] == \
        "https://iot.example:443"
    for bad, why in (("http://x:1", "unknown cloud"), ("mosquitto://127.0.0.1:1883", "admin login"),
                     ("aws-iot://127.0.0.1:5000", "region"),
                     ("mosquitto://a:b@h:1?color=red", "unknown cloud URL option")):
        with pytest.raises(ValueError, match=why):
            parse_cloud_url(bad)


def test_cli_agent_log_refuses_key_material_at_the_call_site() -> None:
    log = EventLog()
    with pytest.raises(ValueError, match="key material"):
        log.info("oops", ak=b"\x00" * 32)
    with pytest.raises(ValueError, match="key material"):
        log.info("oops", cloud_secret="hunter2")
    with pytest.raises(TypeError, match="only identifiers"):
        log.info("oops", blob=b"\x01" * 32)
    assert fields_of("ok", {"device": b"\x01" * 12, "version": 2}) == {
        "event": "ok", "device": "01" * 12, "version": 2}
