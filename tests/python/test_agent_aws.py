"""Cloud updates on AWS IoT (a moto server) and migration Mosquitto → AWS → Mosquitto through the
agent, driven by ``otakey fleet migrate`` / ``fleet rotate`` while protocol-level devices run their
idle loop. Certificate states are read back from moto; Mosquitto credentials are tried on the real
broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from agentproc import Driver, Stack, acli, adevice_state, make_stack, mqtt_accepts, run
from otakey.agent.handlers import to_wire
from otakey.harness.protocol_device import ProtocolDevice, aws_control_opener
from otakey.protocol.messages import Platform
from otakey.store import AuditEvent, CredentialState

REGION = "us-east-1"


@pytest.fixture
def stack(tmp_path: Any, mosquitto: Any, moto_server: Any) -> Iterator[Stack]:
    st = make_stack(tmp_path, "sqlite", mosquitto,
                    extra_clouds=[f"aws-iot://127.0.0.1:{moto_server.port}?region={REGION}"])
    st.opener = aws_control_opener(moto_server.url, REGION)
    st.create_product("PO-AWS", 100)
    st.agent()
    yield st
    codes = [a.stop() for a in st.agents]
    assert codes == [0] * len(codes), st.agents[0].log[-3000:]


def iot(moto_server: Any) -> Any:
    return boto3.client("iot", region_name=REGION, endpoint_url=moto_server.url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def cert_status(client: Any, cert_id: str) -> str | None:
    try:
        return str(client.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"])
    except client.exceptions.ResourceNotFoundException:
        return None


async def fleet(stack: Stack, n: int) -> list[ProtocolDevice]:
    devices = [stack.device(stack.agents[0]) for _ in range(n)]
    for d in devices:
        assert (await d.provision()).ok and all(r.ok for r in await d.run_until_idle())
        assert d.cloud is not None and d.cloud.platform == Platform.MOSQUITTO
    return devices


def test_agent_aws_migrate_rotate_and_back_certificate_states_follow(stack: Stack, moto_server: Any) -> None:
    client = iot(moto_server)

    async def go() -> None:
        devices = await fleet(stack, 3)
        mosq_v1 = {d.device_id: d.cloud for d in devices}
        async with Driver(devices):
            rc, report, err = await acli(stack, "fleet", "migrate", "--to", "aws-iot", "--batch-size", "2",
                                         "--max-failures", "0", "--timeout", "20", "--poll", "0.1")
            assert rc == 0, err
            assert report["succeeded"] == 3 and len(report["batches"]) == 2 and not report["failed"]
        aws_v2 = {}
        for d in devices:
            assert d.cloud is not None and d.cloud.platform == Platform.AWS_IOT and d.cloud.version == 2
            assert d.cloud.endpoint.startswith("mqtts://")
            s = await adevice_state(stack, d.device_id)
            current = s["creds"].current
            assert current.credential.platform == "aws-iot" and current.credential.secret == d.cloud.secret
            assert cert_status(client, current.credential.ref) == "ACTIVE"
            assert client.describe_thing(thingName=d.device_id.hex())["thingName"] == d.device_id.hex()
            old = mosq_v1[d.device_id]
            assert old is not None and not mqtt_accepts(old), "the Mosquitto credential survived"
            aws_v2[d.device_id] = current.credential.ref

        async with Driver(devices):
            rc, report, err = await acli(stack, "fleet", "rotate", "--kind", "cloud", "--batch-size", "3",
                                         "--timeout", "20", "--poll", "0.1")
            assert rc == 0 and report["succeeded"] == 3, err
        for d in devices:
            s = await adevice_state(stack, d.device_id)
            new_ref = s["creds"].current.credential.ref
            assert d.cloud is not None and d.cloud.version == 3 and d.cloud.platform == Platform.AWS_IOT
            assert cert_status(client, new_ref) == "ACTIVE"
            assert cert_status(client, aws_v2[d.device_id]) == "INACTIVE"

        async with Driver(devices):
            rc, report, err = await acli(stack, "fleet", "migrate", "--to", "mosquitto", "--timeout", "20",
                                         "--poll", "0.1")
            assert rc == 0 and report["succeeded"] == 3, err
        for d in devices:
            assert d.cloud is not None and d.cloud.platform == Platform.MOSQUITTO and d.cloud.version == 4
            assert mqtt_accepts(d.cloud)
            s = await adevice_state(stack, d.device_id)
            refs = [c.credential.ref for c in s["all_creds"] if c.credential.platform == "aws-iot"]
            assert len(refs) == 2
            # Leaving AWS removes the device there: certificates deleted, thing gone.
            assert [cert_status(client, r) for r in refs] == [None, None]
            with pytest.raises(client.exceptions.ResourceNotFoundException):
                client.describe_thing(thingName=d.device_id.hex())
            states = [c.state for c in s["all_creds"]]
            assert states == [CredentialState.RETIRED] * 3 + [CredentialState.ACTIVE]
            assert not mqtt_accepts(to_wire(s["all_creds"][0].credential))

    run(go())


def test_agent_aws_refused_certificate_keeps_mosquitto_credential(stack: Stack, moto_server: Any) -> None:
    """Test before confirm (DESIGN §2.5): a migration whose new cloud refuses the certificate
    leaves the device on its Mosquitto credential, and the agent deactivates the certificate."""
    client = iot(moto_server)
    real = stack.opener

    async def go() -> None:
        (d,) = await fleet(stack, 1)
        old = d.cloud

        async def broken_cloud(request: Any) -> Any:
            # The new cloud refuses: deactivate the certificate behind the agent's back first.
            if request.credential.endpoint.startswith("mqtts://"):
                client.update_certificate(certificateId=_ref_of(client, request), newStatus="INACTIVE")
            return await real(request)

        d.opener = broken_cloud
        async with Driver([d]):
            rc, report, _ = await acli(stack, "fleet", "migrate", "--to", "aws-iot", "--max-failures", "0",
                                       "--timeout", "10", "--poll", "0.1")
        assert rc == 3 and report["stopped"] and report["failed"][0]["device_id"] == d.device_id.hex()
        assert d.cloud == old and old is not None and mqtt_accepts(old)
        s = await adevice_state(stack, d.device_id)
        states = {c.version: c.state for c in s["all_creds"]}
        assert states == {1: CredentialState.ACTIVE, 2: CredentialState.REVOKED}
        assert cert_status(client, s["all_creds"][1].credential.ref) == "INACTIVE"

    run(go())


def _ref_of(client: Any, request: Any) -> str:
    """The certificate id moto holds for the PEM in a session request."""
    pem = request.credential.secret.decode()
    for c in client.list_certificates()["certificates"]:
        desc = client.describe_certificate(certificateId=c["certificateId"])["certificateDescription"]
        if desc["certificatePem"].strip() in pem:
            return str(c["certificateId"])
    raise AssertionError("certificate not in moto")


def test_agent_aws_crash_between_new_and_old_cloud_redone_after_restart(stack: Stack,
                                                                        moto_server: Any) -> None:
    """§6.3 step 5: the agent dies after AWS activated the new certificate and before Mosquitto
    forgot the old credential and the store recorded either; after a restart the device's check-in
    proves the new credential and the agent redoes both cloud calls."""
    client = iot(moto_server)

    async def go() -> ProtocolDevice:
        (d,) = await fleet(stack, 1)
        await d.close()
        await stack.aquery(lambda tx: tx.audit(AuditEvent.OPERATOR, device_id=d.device_id,
                                               detail="cloud_target=aws-iot"))
        doomed = stack.agent(crash_at="after_cloud:activate", name="doomed")
        d.port = doomed.port
        assert (await d.request_cloud()).outcome == "timeout"
        assert doomed.wait_exit(10) == -9
        stack.agents.remove(doomed)
        assert d.cloud is not None and d.cloud.platform == Platform.AWS_IOT  # committed, tested, confirmed
        s = await adevice_state(stack, d.device_id)
        assert s["creds"].pending is not None and s["creds"].current.credential.platform == "mosquitto"
        assert mqtt_accepts(to_wire(s["creds"].current.credential))  # not yet removed from Mosquitto
        d.port = stack.agents[0].port
        assert (await d.checkin()).ok
        await d.close()
        return d

    d = run(go())
    s = run(adevice_state(stack, d.device_id))
    current = s["creds"].current
    assert current.version == 2 and current.credential.platform == "aws-iot" and s["creds"].pending is None
    assert cert_status(client, current.credential.ref) == "ACTIVE"
    assert not mqtt_accepts(to_wire(s["all_creds"][0].credential))
