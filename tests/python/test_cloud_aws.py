"""The AWS IoT adapter against a moto server: certificate states after each step, and a
migration from Mosquitto to AWS."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from otakey.cloud import ADAPTERS, Activation, AwsIotAdapter, CloudCredential, MosquittoAdapter
from otakey.cloud.mosquitto import try_connect
from otakey.errors import AdapterError
from servers import MosquittoServer, MotoServer

T = TypeVar("T")
AWS_OPTIONS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def adapter_for(moto: MotoServer) -> AwsIotAdapter:
    return AwsIotAdapter(endpoint_url=moto.url, **AWS_OPTIONS)


def with_adapter(moto: MotoServer, body: Callable[[AwsIotAdapter], Awaitable[T]]) -> T:
    async def main() -> T:
        async with adapter_for(moto) as adapter:
            return await body(adapter)   # type: ignore[arg-type]

    return asyncio.run(main())


_clients: dict[str, Any] = {}


def iot(moto: MotoServer) -> Any:
    """A boto3 client of our own, to look at what the adapter did (built once: clients are slow to
    make)."""
    if moto.url not in _clients:
        _clients[moto.url] = boto3.client("iot", region_name="us-east-1", endpoint_url=moto.url,
                                          **AWS_OPTIONS)
    return _clients[moto.url]


def status(moto: MotoServer, cred: CloudCredential) -> str:
    return str(iot(moto).describe_certificate(certificateId=cred.ref)["certificateDescription"]["status"])


def attached(moto: MotoServer, device_id: bytes) -> set[str]:
    arns = iot(moto).list_thing_principals(thingName=device_id.hex())["principals"]
    return {a.rsplit("/", 1)[-1] for a in arns}


async def provision(adapter: AwsIotAdapter, device_id: bytes) -> CloudCredential:
    first = await adapter.register_pending(device_id, 1)
    await adapter.activate(device_id, first, None)
    return first


def test_aws_adapter_is_registered() -> None:
    assert ADAPTERS["aws-iot"] is AwsIotAdapter


def test_aws_rotation_keeps_both_certificates_active_until_activation(moto_server: MotoServer) -> None:
    dev = os.urandom(12)

    async def body(adapter: AwsIotAdapter) -> None:
        old = await provision(adapter, dev)
        assert status(moto_server, old) == "ACTIVE"
        new = await adapter.register_pending(dev, 2)
        assert new.ref != old.ref and new.client_id == dev.hex() and new.username == ""
        assert (status(moto_server, old), status(moto_server, new)) == ("ACTIVE", "ACTIVE")
        assert attached(moto_server, dev) == {old.ref, new.ref}
        await adapter.activate(dev, new, old)
        assert (status(moto_server, old), status(moto_server, new)) == ("INACTIVE", "ACTIVE")
        await adapter.activate(dev, new, old)                                 # a retry changes nothing
        assert (status(moto_server, old), status(moto_server, new)) == ("INACTIVE", "ACTIVE")
        assert await adapter.check(new) and not await adapter.check(old)

    with_adapter(moto_server, body)


def test_aws_revoke_pending_deactivates_only_the_new_certificate(moto_server: MotoServer) -> None:
    dev = os.urandom(12)

    async def body(adapter: AwsIotAdapter) -> None:
        old = await provision(adapter, dev)
        new = await adapter.register_pending(dev, 2)
        await adapter.revoke_pending(dev, new)
        await adapter.revoke_pending(dev, new)                                # idempotent
        assert (status(moto_server, old), status(moto_server, new)) == ("ACTIVE", "INACTIVE")
        with pytest.raises(AdapterError, match="INACTIVE"):
            await adapter.activate(dev, new, old)                             # it cannot come back
        assert status(moto_server, old) == "ACTIVE"

    with_adapter(moto_server, body)


def test_aws_register_retry_deactivates_the_interrupted_attempt(moto_server: MotoServer) -> None:
    dev = os.urandom(12)

    async def body(adapter: AwsIotAdapter) -> None:
        old = await provision(adapter, dev)
        lost = await adapter.register_pending(dev, 2)          # the agent crashed before storing it
        kept = await adapter.register_pending(dev, 2)
        assert kept.ref != lost.ref
        states = (status(moto_server, old), status(moto_server, lost), status(moto_server, kept))
        assert states == ("ACTIVE", "INACTIVE", "ACTIVE")

    with_adapter(moto_server, body)


def test_aws_existing_thing_is_kept_not_replaced(moto_server: MotoServer) -> None:
    dev = os.urandom(12)
    iot(moto_server).create_thing(thingName=dev.hex(), attributePayload={"attributes": {"site": "plant-7"}})

    async def body(adapter: AwsIotAdapter) -> None:
        await adapter.register_pending(dev, 1)

    with_adapter(moto_server, body)
    attrs = iot(moto_server).describe_thing(thingName=dev.hex())["attributes"]
    assert attrs["site"] == "plant-7" and attrs["otakey_pending"].startswith("1:")


def test_aws_credential_carries_a_matching_certificate_and_key(moto_server: MotoServer) -> None:
    dev = os.urandom(12)

    async def body(adapter: AwsIotAdapter) -> tuple[CloudCredential, CloudCredential]:
        return await adapter.register_pending(dev, 1), await adapter.register_pending(os.urandom(12), 1)

    one, two = with_adapter(moto_server, body)
    assert one.endpoint == two.endpoint and one.endpoint.startswith("mqtts://")   # read once
    assert one.endpoint.endswith(":8883") and len(one.secret) <= 3200
    cert = x509.load_pem_x509_certificate(one.secret)
    key = serialization.load_pem_private_key(one.secret[one.secret.index(b"-----END CERTIFICATE-----"):]
                                             .split(b"\n", 1)[1], password=None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]


def test_aws_policy_allows_only_the_devices_topics(moto_server: MotoServer) -> None:
    dev = os.urandom(12)

    async def body(adapter: AwsIotAdapter) -> CloudCredential:
        return await adapter.register_pending(dev, 1)

    cred = with_adapter(moto_server, body)
    client = iot(moto_server)
    arn = client.describe_certificate(certificateId=cred.ref)["certificateDescription"]["certificateArn"]
    names = [p["policyName"] for p in client.list_attached_policies(target=arn)["policies"]]
    assert names == [f"otakey-device-{dev.hex()}"]
    doc = json.loads(client.get_policy(policyName=names[0])["policyDocument"])
    resources = {s["Resource"].split(":", 5)[5] for s in doc["Statement"]}
    assert resources == {f"client/{dev.hex()}", f"topic/devices/{dev.hex()}/*",
                         f"topicfilter/devices/{dev.hex()}/*"}


def test_aws_disable_revokes_every_certificate(moto_server: MotoServer) -> None:
    dev = os.urandom(12)

    async def body(adapter: AwsIotAdapter) -> None:
        old = await provision(adapter, dev)
        new = await adapter.register_pending(dev, 2)
        await adapter.disable(dev)
        await adapter.disable(dev)
        assert (status(moto_server, old), status(moto_server, new)) == ("REVOKED", "REVOKED")
        assert not await adapter.check(new)

    with_adapter(moto_server, body)


def test_aws_remove_deletes_thing_policy_and_certificates(moto_server: MotoServer) -> None:
    dev = os.urandom(12)

    async def body(adapter: AwsIotAdapter) -> CloudCredential:
        cred = await provision(adapter, dev)
        await adapter.remove(dev, [cred])
        await adapter.remove(dev, [cred])
        return cred

    cred = with_adapter(moto_server, body)
    client = iot(moto_server)
    for call in (lambda: client.describe_thing(thingName=dev.hex()),
                 lambda: client.get_policy(policyName=f"otakey-device-{dev.hex()}"),
                 lambda: client.describe_certificate(certificateId=cred.ref)):
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            call()


def test_aws_batch_registers_and_activates_ten_devices(moto_server: MotoServer) -> None:
    devices = [os.urandom(12) for _ in range(10)]

    async def body(adapter: AwsIotAdapter) -> list[Any]:
        creds = await adapter.register_many([(d, 1) for d in devices])
        assert all(isinstance(c, CloudCredential) for c in creds)
        assert await adapter.activate_many([Activation(d, c) for d, c in zip(devices, creds, strict=True)]) \
            == [None] * 10
        return creds

    creds = with_adapter(moto_server, body)
    assert {status(moto_server, c) for c in creds} == {"ACTIVE"}
    assert len({c.ref for c in creds}) == 10


def test_migration_registers_on_aws_while_the_mosquitto_credential_stays_valid(
        mosquitto: MosquittoServer, moto_server: MotoServer) -> None:
    dev = os.urandom(12)

    def mqtt_ok(cred: CloudCredential) -> bool:
        reason = try_connect("127.0.0.1", mosquitto.port, cred.client_id, cred.username, cred.secret.decode())
        assert reason is not None
        return not reason.is_failure

    async def main() -> None:
        mq = MosquittoAdapter(mosquitto.url, mosquitto.admin_username, mosquitto.admin_password)
        async with mq, adapter_for(moto_server) as aws:
            v1 = await mq.register_pending(dev, 1)
            await mq.activate(dev, v1)
            v2 = await aws.register_pending(dev, 2)         # the migration's pending credential
            assert v2.platform == "aws-iot" and v2.version == 2
            assert mqtt_ok(v1) and status(moto_server, v2) == "ACTIVE"   # the window spans both clouds
            await aws.activate(dev, v2, v1)                 # a Mosquitto previous is not AWS's to touch
            assert mqtt_ok(v1)
            await mq.remove(dev, [v1])                      # then the device leaves Mosquitto
            assert not mqtt_ok(v1) and status(moto_server, v2) == "ACTIVE"

    asyncio.run(main())
