"""AWS IoT Core (control plane through boto3) as a cloud; tested against a moto server.

Per device (``<id>`` = hex device ID): a thing ``<id>``, a policy ``otakey-device-<id>`` allowing
connect as client ``<id>`` and publish/receive/subscribe under ``devices/<id>/*`` only, and one
X.509 certificate per credential version (``create_keys_and_certificate``), attached to both.
During the rotation window the old and the new certificate are ACTIVE; activation sets every other
certificate of the thing INACTIVE. The credential's secret is ``certificate PEM ‖ private key PEM``
and its ``ref`` the certificate id.

The thing's attributes ``otakey_pending`` / ``otakey_current`` (``<version>:<certificate id>``)
record what this adapter registered, so a retried ``register_pending`` deactivates the
certificate an interrupted attempt left ACTIVE.

Guards against moto's gaps (DESIGN §5): a thing is created only after ``describe_thing`` says it
is absent (moto's ``create_thing`` replaces an existing one, dropping its attributes); the data
endpoint is read once at start (moto invents a new one per call); statuses are only ever our
constants and returned PEMs are checked here (moto validates neither).

boto3 blocks, so calls run in worker threads; batches run several at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from otakey.errors import AdapterError, AdapterTimeout

from .base import MAX_SECRET, Activation, CloudAdapter, CloudCredential, device_name, gather_bounded

ACTIVE, INACTIVE, REVOKED = "ACTIVE", "INACTIVE", "REVOKED"
_PENDING_ATTR, _CURRENT_ATTR = "otakey_pending", "otakey_current"
_NOT_FOUND = ("ResourceNotFoundException",)
_EXISTS = ("ResourceAlreadyExistsException",)


def policy_name(device_id: bytes) -> str:
    return f"otakey-device-{device_name(device_id)}"


def policy_document(region: str, account: str, device_id: bytes) -> str:
    name = device_name(device_id)
    arn = f"arn:aws:iot:{region}:{account}"
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/{name}"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
             "Resource": f"{arn}:topic/devices/{name}/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": f"{arn}:topicfilter/devices/{name}/*"},
        ],
    })


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _check_pem(text: str, kinds: tuple[str, ...]) -> str:
    stripped = text.strip()
    if not any(stripped.startswith(f"-----BEGIN {k}-----") and stripped.endswith(f"-----END {k}-----")
               for k in kinds):
        raise AdapterError(f"AWS returned something that is not a {kinds[0]} PEM")
    return stripped + "\n"


def _parse_record(value: str | None) -> tuple[int, str] | None:
    if not value or ":" not in value:
        return None
    version, cert_id = value.split(":", 1)
    return (int(version), cert_id) if version.isdigit() and cert_id else None


class AwsIotAdapter(CloudAdapter):
    """Credentials as AWS IoT things, policies and certificates.

    ``endpoint_url``: the IoT control-plane URL (a moto server in tests; None for AWS itself).
    ``data_endpoint``: what devices are told (default: ``mqtts://<describe_endpoint>:8883``, read
    once). Other keyword options go to ``boto3.client`` (credentials, config).
    """

    platform = "aws-iot"

    def __init__(self, *, region: str = "us-east-1", endpoint_url: str | None = None,
                 data_endpoint: str | None = None, concurrency: int = 8, **client_options: Any) -> None:
        if concurrency < 1:
            raise ValueError("concurrency >= 1")
        self.region = region
        self._endpoint_url = endpoint_url
        self.data_endpoint = data_endpoint
        self._concurrency = concurrency
        self._client_options = client_options
        self._iot: Any = None
        # The account id is part of the ARNs in each device's policy; it is read from the first
        # certificate's ARN (no STS permission needed).
        self._account = ""

    async def start(self) -> None:
        if self._iot is not None:
            return
        self._iot, endpoint = await asyncio.to_thread(self._connect)
        if self.data_endpoint is None:
            self.data_endpoint = endpoint

    def _connect(self) -> tuple[Any, str]:
        import boto3
        from botocore.config import Config

        options = dict(self._client_options)
        options.setdefault("config", Config(retries={"max_attempts": 3, "mode": "standard"},
                                            connect_timeout=10, read_timeout=30))
        iot = boto3.client("iot", region_name=self.region, endpoint_url=self._endpoint_url, **options)
        try:
            address = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
        except Exception as exc:
            raise self._error(exc, "describe_endpoint") from exc
        return iot, f"mqtts://{address}:8883"

    async def close(self) -> None:
        iot, self._iot = self._iot, None
        if iot is not None:
            await asyncio.to_thread(iot.close)

    @staticmethod
    def _error(exc: Exception, what: str) -> AdapterError:
        from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

        if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
            return AdapterTimeout(f"AWS IoT {what}: {exc}")
        if isinstance(exc, EndpointConnectionError):
            return AdapterError(f"AWS IoT unreachable ({what}): {exc}")
        return AdapterError(f"AWS IoT {what}: {_code(exc) or exc}")

    def _call(self, what: str, **kwargs: Any) -> Any:
        if self._iot is None:
            raise AdapterError("the adapter is not started")
        try:
            return getattr(self._iot, what)(**kwargs)
        except AdapterError:
            raise
        except Exception as exc:
            raise self._error(exc, what) from exc

    def _call_tolerant(self, what: str, tolerated: tuple[str, ...], **kwargs: Any) -> Any:
        """A call whose listed error codes mean "already so"; returns None for them."""
        try:
            return self._call(what, **kwargs)
        except AdapterError as exc:
            cause = exc.__cause__
            if cause is not None and _code(cause) in tolerated:  # type: ignore[arg-type]
                return None
            raise

    # --- per-device objects -------------------------------------------------------------------
    def _thing(self, device_id: bytes) -> dict[str, Any] | None:
        return self._call_tolerant("describe_thing", _NOT_FOUND, thingName=device_name(device_id))

    def _ensure_thing(self, device_id: bytes) -> dict[str, Any]:
        thing = self._thing(device_id)
        if thing is None:
            # Only when absent: moto's create_thing replaces an existing thing (DESIGN §5).
            self._call_tolerant("create_thing", _EXISTS, thingName=device_name(device_id))
            thing = self._thing(device_id)
            if thing is None:
                raise AdapterError(f"thing {device_name(device_id)} vanished after its creation")
        return thing

    def _ensure_policy(self, device_id: bytes) -> None:
        name = policy_name(device_id)
        if self._call_tolerant("get_policy", _NOT_FOUND, policyName=name) is None:
            self._call_tolerant("create_policy", _EXISTS, policyName=name,
                                policyDocument=policy_document(self.region, self._account, device_id))

    def _set_attributes(self, device_id: bytes, **attrs: str) -> None:
        self._call("update_thing", thingName=device_name(device_id),
                   attributePayload={"attributes": attrs, "merge": True})

    def _principals(self, device_id: bytes) -> list[str]:
        r = self._call_tolerant("list_thing_principals", _NOT_FOUND,
                                thingName=device_name(device_id))
        return [] if r is None else list(r.get("principals", []))

    def _set_status(self, cert_id: str, status: str) -> None:
        if status not in (ACTIVE, INACTIVE, REVOKED):
            raise ValueError(f"not a certificate status: {status}")  # moto would accept anything
        self._call_tolerant("update_certificate", _NOT_FOUND, certificateId=cert_id,
                            newStatus=status)

    def _status(self, cert_id: str) -> str | None:
        r = self._call_tolerant("describe_certificate", _NOT_FOUND, certificateId=cert_id)
        return None if r is None else str(r["certificateDescription"]["status"])

    # --- the adapter calls, blocking ----------------------------------------------------------
    def _register(self, device_id: bytes, version: int) -> CloudCredential:
        if not 1 <= version <= 0xFFFFFFFF:
            raise ValueError("version is 1..2**32-1")
        thing = self._ensure_thing(device_id)
        attrs = thing.get("attributes") or {}
        current = _parse_record(attrs.get(_CURRENT_ATTR))
        stale = _parse_record(attrs.get(_PENDING_ATTR))
        if stale is not None and (current is None or stale[1] != current[1]):
            # An earlier pending registration the agent never activated (a crashed attempt or a
            # replaced window): it must not stay a valid key.
            self._set_status(stale[1], INACTIVE)
        r = self._call("create_keys_and_certificate", setAsActive=True)
        arn, cert_id = r["certificateArn"], r["certificateId"]
        # Recorded at once, so that a retry after any failure below deactivates it.
        self._set_attributes(device_id, **{_PENDING_ATTR: f"{version}:{cert_id}"})
        cert_pem = _check_pem(r["certificatePem"], ("CERTIFICATE",))
        key_pem = _check_pem(r["keyPair"]["PrivateKey"], ("RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY"))
        secret = (cert_pem + key_pem).encode()
        if len(secret) > MAX_SECRET:
            self._set_status(cert_id, INACTIVE)
            raise AdapterError(f"certificate and key take {len(secret)} bytes, more than {MAX_SECRET}")
        if not self._account:
            self._account = arn.split(":")[4]
        self._ensure_policy(device_id)
        self._call("attach_policy", policyName=policy_name(device_id), target=arn)
        self._call("attach_thing_principal", thingName=device_name(device_id), principal=arn)
        assert self.data_endpoint is not None
        return CloudCredential(version=version, platform=self.platform, endpoint=self.data_endpoint,
                               client_id=device_name(device_id), username="", secret=secret, ref=cert_id)

    def _activate(self, device_id: bytes, credential: CloudCredential) -> None:
        self._own(credential)
        status = self._status(credential.ref)
        if status != ACTIVE:
            raise AdapterError(f"cannot activate certificate {credential.ref}: it is {status or 'gone'}")
        for arn in self._principals(device_id):
            cert_id = arn.rsplit("/", 1)[-1]
            if cert_id != credential.ref and self._status(cert_id) == ACTIVE:
                self._set_status(cert_id, INACTIVE)
        self._set_attributes(device_id, **{_CURRENT_ATTR: f"{credential.version}:{credential.ref}",
                                           _PENDING_ATTR: ""})

    def _revoke_pending(self, device_id: bytes, credential: CloudCredential) -> None:
        self._own(credential)
        self._set_status(credential.ref, INACTIVE)
        thing = self._thing(device_id)
        attrs = (thing or {}).get("attributes") or {}
        pending = _parse_record(attrs.get(_PENDING_ATTR))
        if thing is not None and pending is not None and pending[1] == credential.ref:
            self._set_attributes(device_id, **{_PENDING_ATTR: ""})

    def _disable(self, device_id: bytes) -> None:
        # REVOKED, not INACTIVE: a revoked device's certificates can never be turned back on.
        for arn in self._principals(device_id):
            self._set_status(arn.rsplit("/", 1)[-1], REVOKED)

    def _remove(self, device_id: bytes) -> None:
        name = device_name(device_id)
        for arn in self._principals(device_id):
            cert_id = arn.rsplit("/", 1)[-1]
            self._set_status(cert_id, INACTIVE)
            self._call_tolerant("detach_policy", _NOT_FOUND, policyName=policy_name(device_id),
                                target=arn)
            self._call_tolerant("detach_thing_principal", _NOT_FOUND, thingName=name,
                                principal=arn)
            self._call_tolerant("delete_certificate", _NOT_FOUND, certificateId=cert_id)
        self._call_tolerant("delete_policy", _NOT_FOUND, policyName=policy_name(device_id))
        self._call_tolerant("delete_thing", _NOT_FOUND, thingName=name)

    def _check(self, credential: CloudCredential) -> bool:
        self._own(credential)
        r = self._call_tolerant("describe_certificate", _NOT_FOUND, certificateId=credential.ref)
        if r is None:
            return False
        desc = r["certificateDescription"]
        cert_pem = credential.secret.decode(errors="replace")
        return desc["status"] == ACTIVE and desc["certificatePem"].strip() in cert_pem

    # --- async interface ----------------------------------------------------------------------
    async def register_pending(self, device_id: bytes, version: int) -> CloudCredential:
        device_name(device_id)
        return await asyncio.to_thread(self._register, device_id, version)

    async def register_many(self, requests: Sequence[tuple[bytes, int]]
                            ) -> list[CloudCredential | AdapterError]:
        results = await gather_bounded(self._concurrency, [self.register_pending(d, v) for d, v in requests])
        return [_result(r) for r in results]  # type: ignore[misc]

    async def activate(self, device_id: bytes, credential: CloudCredential,
                       previous: CloudCredential | None = None) -> None:
        # ``previous`` is not needed: the thing's certificates are listed from AWS itself.
        await asyncio.to_thread(self._activate, device_id, credential)

    async def activate_many(self, items: Sequence[Activation]) -> list[AdapterError | None]:
        calls = [self.activate(i.device_id, i.credential, i.previous) for i in items]
        results = await gather_bounded(self._concurrency, calls)
        return [_result(r) for r in results]  # type: ignore[misc]

    async def revoke_pending(self, device_id: bytes, credential: CloudCredential) -> None:
        await asyncio.to_thread(self._revoke_pending, device_id, credential)

    async def disable(self, device_id: bytes, credentials: Sequence[CloudCredential] = ()) -> None:
        await asyncio.to_thread(self._disable, device_id)

    async def remove(self, device_id: bytes, credentials: Sequence[CloudCredential] = ()) -> None:
        await asyncio.to_thread(self._remove, device_id)

    async def check(self, credential: CloudCredential) -> bool:
        """Whether AWS holds the credential's certificate as ACTIVE (moto has no MQTT data plane
        to log in with)."""
        return await asyncio.to_thread(self._check, credential)

    def _own(self, credential: CloudCredential) -> None:
        if credential.platform != self.platform:
            raise ValueError(f"a {credential.platform} credential given to the {self.platform} adapter")


def _result(r: object) -> Any:
    """A gathered result: values pass, AdapterErrors become values, anything else is raised."""
    if isinstance(r, AdapterError) or not isinstance(r, BaseException):
        return r
    raise r
