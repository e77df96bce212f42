"""Cloud sessions the gateway opens for the device (protocol §5): exactly the credential the device
presents, one publish, and a status for ``SESSION_RESULT``.

**Mosquitto** (platform 1, endpoint ``mqtt://host:port``, or ``mqtts://`` for TLS): a real MQTT 5
session with paho — CONNECT with the credential's client id, username and password, PUBLISH of the
payload with QoS 1, wait for the PUBACK, DISCONNECT — all within ``timeout`` seconds (5 by
default). MQTT 5 is used because its PUBACK carries a reason code: a publish the broker's ACL
denies comes back "Not authorized" instead of being dropped silently, so status 0 really means
"connected and published". Status mapping:

- CONNACK *bad user name or password*, *not authorized*, *client identifier not valid*, *banned*,
  a PUBACK that is a failure, or a TLS handshake the broker rejects → ``REFUSED`` (1);
- connection refused or reset, no CONNACK or no PUBACK in time, or another CONNACK failure
  (*server unavailable*, *server busy*, …) → ``UNREACHABLE`` (2);
- an endpoint that is not ``mqtt[s]://host:port`` → ``MALFORMED`` (3).

**AWS IoT** (platform 2; the secret is ``certificate PEM ‖ private key PEM``). With a real AWS
endpoint (``mqtts://…:8883``) and no control plane configured, the session is a real MQTT 5 session
over TLS with the device's client certificate, mapped as above.

*Stand-in for tests and offline use:* moto, the AWS stand-in of DESIGN §5, has no MQTT data plane,
so a TLS client-certificate session cannot be opened against it. Instead the gateway asks the IoT
**control plane** what AWS would decide during that session: the certificate whose PEM equals the
presented one (``describe_certificate`` by its id — SHA-256 of the DER, as AWS and moto compute it
— else a scan of ``list_certificates``) must exist and be ``ACTIVE``, and the policies attached to
it must allow ``iot:Connect`` as the client id and ``iot:Publish`` on the topic (Allow statements
with ``*``/``?`` wildcards, any matching Deny wins; ``${iot:ClientId}`` is the only policy variable
substituted). The adapter's per-device policy ``otakey-device-<id>`` is such a policy. The control
plane is named either by the credential's endpoint itself,
``aws-iot://[KEY:SECRET@]HOST:PORT?region=REGION[&tls=0|1]`` (what an agent writes when its AWS
adapter is given that ``data_endpoint``), or by the gateway's ``aws_control`` option, which then
serves every AWS credential whatever its ``mqtts://`` endpoint says (moto invents those). Nothing
of the private key is used on this path: it checks that the certificate is the one AWS would
accept, not that the device holds its key.

Blocking paho and boto3 calls run in worker threads; nothing here logs a password or a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from otakey.protocol.cloudsession import SessionOpen, SessionResult, SessionStatus
from otakey.protocol.messages import CloudCredential, Platform

log = logging.getLogger("otakey.gateway")

DEFAULT_TIMEOUT = 5.0
DETAIL_MAX = 128

SessionOpener = Callable[[SessionOpen], Awaitable[SessionResult]]

# MQTT 5 CONNACK reason codes that say "this credential is not accepted" (MQTT 5.0 §3.2.2.2);
# the MQTT 3.1.1 return codes 4/5 arrive from paho converted to 0x86/0x87.
_REFUSED_CONNACK = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})
_MQTT_URL = re.compile(r"^(mqtts?)://([^:/?#]+):(\d{1,5})/?$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Outcome:
    status: SessionStatus
    detail: str = ""


def _detail(text: str) -> str:
    """At most DETAIL_MAX bytes of UTF-8, cut on a character boundary."""
    raw = text.encode()[:DETAIL_MAX]
    return raw.decode(errors="ignore")


def parse_mqtt_endpoint(url: str) -> tuple[bool, str, int]:
    """``mqtt://host:port`` or ``mqtts://host:port`` → (tls, host, port); ValueError otherwise."""
    m = _MQTT_URL.match(url)
    if not m or not 0 < int(m.group(3)) <= 65535:
        raise ValueError(f"not an mqtt[s]://host:port endpoint: {url!r}")
    return m.group(1) == "mqtts", m.group(2), int(m.group(3))


# --------------------------------------------------------------------------------------------- MQTT


def mqtt_publish_once(host: str, port: int, client_id: str, username: str | None, password: bytes | None,
                      topic: str, payload: bytes, *, timeout: float = DEFAULT_TIMEOUT,
                      tls: ssl.SSLContext | None = None) -> Outcome:
    """Connect, publish once with QoS 1, wait for the PUBACK, disconnect. Blocking; never raises
    for what the broker or the network does (that is the outcome)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    deadline = time.monotonic() + timeout
    cond = threading.Condition()
    state: dict[str, Any] = {"connack": None, "pubacks": {}, "gone": None}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with cond:
            state["connack"] = reason
            cond.notify_all()

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with cond:
            state["pubacks"][mid] = reason
            cond.notify_all()

    def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with cond:
            state["gone"] = reason
            cond.notify_all()

    def wait(ready: Callable[[], bool]) -> bool:
        with cond:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                cond.wait(left)
            return True

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    if username or password:
        # The secret goes to the broker as the exact bytes the device holds.
        client.username_pw_set(username, password)  # type: ignore[arg-type]
    if tls is not None:
        client.tls_set_context(tls)
    client.connect_timeout = max(0.1, timeout)
    # A refused session must not be retried by paho behind our back.
    client.reconnect_delay_set(min_delay=3600, max_delay=3600)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    try:
        client.connect(host, port, keepalive=max(5, int(timeout) + 5), clean_start=True, properties=props)
    except ssl.SSLCertVerificationError as exc:
        # Our side does not trust the broker: no session, but nothing said about the credential.
        return Outcome(SessionStatus.UNREACHABLE,
                       _detail(f"broker certificate not trusted: {exc.verify_message}"))
    except ssl.SSLError as exc:
        # The broker rejected the TLS handshake: for a client certificate that is a refusal.
        return Outcome(SessionStatus.REFUSED, _detail(f"TLS handshake refused: {exc.reason or exc}"))
    except (OSError, TimeoutError) as exc:
        return Outcome(SessionStatus.UNREACHABLE, _detail(f"cannot connect to {host}:{port}: "
                                                          f"{getattr(exc, 'strerror', None) or exc}"))
    client.loop_start()
    try:
        if not wait(lambda: state["connack"] is not None or state["gone"] is not None):
            return Outcome(SessionStatus.UNREACHABLE, "no CONNACK in time")
        connack = state["connack"]
        if connack is None:
            # Closed before any CONNACK: a broker that drops a TLS client certificate it does not
            # trust does exactly this after the handshake.
            if tls is not None:
                return Outcome(SessionStatus.REFUSED, "the broker closed the TLS session before CONNACK "
                                                      "(client certificate not accepted)")
            return Outcome(SessionStatus.UNREACHABLE,
                           _detail(f"connection closed before CONNACK: {state['gone']}"))
        if connack.is_failure:
            status = SessionStatus.REFUSED if connack.value in _REFUSED_CONNACK else SessionStatus.UNREACHABLE
            return Outcome(status, _detail(f"CONNACK: {connack}"))
        info = client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return Outcome(SessionStatus.UNREACHABLE,
                           _detail(f"publish not sent: {mqtt.error_string(info.rc)}"))
        mid = info.mid
        if not wait(lambda: mid in state["pubacks"] or state["gone"] is not None):
            return Outcome(SessionStatus.UNREACHABLE, "no PUBACK in time")
        puback = state["pubacks"].get(mid)
        if puback is None:
            return Outcome(SessionStatus.UNREACHABLE,
                           _detail(f"connection lost before PUBACK: {state['gone']}"))
        if puback.is_failure:
            return Outcome(SessionStatus.REFUSED, _detail(f"PUBACK: {puback}"))
        return Outcome(SessionStatus.CONNECTED, "published")
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        client.loop_stop()


def split_pem_secret(secret: bytes) -> tuple[str, str]:
    """``certificate PEM ‖ private key PEM`` → (certificate, key); ValueError when not so."""
    try:
        text = secret.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError("the secret is not PEM text") from None
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    stop = text.find(end)
    if not text.startswith(begin) or stop < 0:
        raise ValueError("the secret does not start with a PEM certificate")
    cert, key = text[: stop + len(end)], text[stop + len(end):].strip()
    first = key.splitlines()[0] if key else ""
    if not (first.startswith("-----BEGIN ") and first.endswith("PRIVATE KEY-----")):
        raise ValueError("no PEM private key follows the certificate")
    return cert + "\n", key + "\n"


def _client_cert_context(cert_pem: str, key_pem: str, ca_file: str | None) -> ssl.SSLContext:
    """A TLS client context holding the device's certificate and key (ssl needs them as files:
    a private temporary folder, removed at once)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    with tempfile.TemporaryDirectory(prefix="otakey-gw-") as folder:
        os.chmod(folder, 0o700)
        cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        for path, text in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


# --------------------------------------------------------------------------------------------- AWS stand-in


@dataclass(frozen=True)
class AwsControlPlane:
    """Where the IoT control plane answers (a moto server in tests), and how to log in to it."""

    endpoint_url: str
    region: str = "us-east-1"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> AwsControlPlane:
        """``aws-iot://[KEY:SECRET@]HOST:PORT?region=R[&tls=0|1]``; ValueError when malformed.
        Plain HTTP for a loopback host unless ``tls=1`` (as the agent's cloud URL reads it)."""
        parts = urlsplit(url)
        if parts.scheme != "aws-iot" or not parts.hostname:
            raise ValueError(f"not an aws-iot://HOST:PORT?region=R endpoint: {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        region = query.get("region")
        tls = query.get("tls")
        if not region or tls not in (None, "0", "1"):
            raise ValueError(f"an aws-iot endpoint needs ?region=R (and tls 0 or 1): {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"bad port in {url!r}") from None
        secure = tls == "1" if tls is not None else parts.hostname not in _LOOPBACK
        netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
        return cls(f"{'https' if secure else 'http'}://{netloc}", region,
                   unquote(parts.username) if parts.username is not None else None,
                   unquote(parts.password or "") if parts.username is not None else None)

    def client(self, timeout: float) -> Any:
        import boto3
        from botocore.config import Config

        key, secret = self.access_key_id, self.secret_access_key
        if key is None and urlsplit(self.endpoint_url).hostname in _LOOPBACK:
            # A local stand-in accepts any login; boto3 still insists on having one.
            key, secret = "testing", "testing"
        options: dict[str, Any] = {}
        if key is not None:
            options.update(aws_access_key_id=key, aws_secret_access_key=secret or "")
        config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1})
        return boto3.client("iot", region_name=self.region, endpoint_url=self.endpoint_url,
                            config=config, **options)


def _norm_pem(text: str) -> str:
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _der_cert_id(cert_pem: str) -> str | None:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _wildcard(pattern: str) -> re.Pattern[str]:
    # IAM-style: `*` any run of characters (slashes included), `?` one character.
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body + r"\Z", re.DOTALL)


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def policy_allows(documents: Iterable[str], action: str, resource: str, client_id: str) -> bool:
    """Whether the policy documents allow ``action`` on ``resource`` (an explicit Deny wins)."""
    allowed = False
    for doc in documents:
        try:
            statements = json.loads(doc).get("Statement", [])
        except (ValueError, AttributeError):
            continue
        if isinstance(statements, dict):
            statements = [statements]
        for st in statements if isinstance(statements, list) else []:
            if not isinstance(st, dict):
                continue
            actions = _as_list(st.get("Action"))
            resources = [r.replace("${iot:ClientId}", client_id) for r in _as_list(st.get("Resource"))]
            if not any(_wildcard(a).match(action) for a in actions):
                continue
            if not any(_wildcard(r).match(resource) for r in resources):
                continue
            if st.get("Effect") == "Deny":
                return False
            if st.get("Effect") == "Allow":
                allowed = True
    return allowed


def aws_check_session(control: AwsControlPlane, credential: CloudCredential, topic: str,
                      timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """The control-plane stand-in for a TLS client-certificate session (module docstring). Blocking."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    try:
        cert_pem, _ = split_pem_secret(credential.secret)
    except ValueError as exc:
        return Outcome(SessionStatus.REFUSED, _detail(f"no client certificate: {exc}"))
    wanted = _norm_pem(cert_pem)
    deadline = time.monotonic() + timeout
    try:
        iot = control.client(timeout)
    except BotoCoreError as exc:
        return Outcome(SessionStatus.UNREACHABLE, _detail(f"AWS IoT control plane: {exc}"))
    try:
        desc = _find_certificate(iot, wanted, _der_cert_id(cert_pem), deadline)
        if desc is None:
            return Outcome(SessionStatus.REFUSED, "unknown certificate")
        if desc["status"] != "ACTIVE":
            return Outcome(SessionStatus.REFUSED, _detail(f"certificate {desc['status']}"))
        arn = str(desc["certificateArn"])
        prefix = arn.split(":cert/", 1)[0]  # arn:PARTITION:iot:REGION:ACCOUNT
        docs = []
        for policy in iot.list_attached_policies(target=arn).get("policies", []):
            docs.append(str(iot.get_policy(policyName=policy["policyName"]).get("policyDocument", "")))
        if not docs:
            return Outcome(SessionStatus.REFUSED, "no policy attached to the certificate")
        cid = credential.client_id
        if not policy_allows(docs, "iot:Connect", f"{prefix}:client/{cid}", cid):
            return Outcome(SessionStatus.REFUSED, _detail(f"policy does not allow connecting as {cid}"))
        if not policy_allows(docs, "iot:Publish", f"{prefix}:topic/{topic}", cid):
            return Outcome(SessionStatus.REFUSED, _detail(f"policy does not allow publishing to {topic}"))
        return Outcome(SessionStatus.CONNECTED, "certificate ACTIVE, policy allows (control-plane check)")
    except TimeoutError:
        return Outcome(SessionStatus.UNREACHABLE, "AWS IoT control plane: no answer in time")
    except EndpointConnectionError as exc:
        return Outcome(SessionStatus.UNREACHABLE, _detail(f"AWS IoT control plane unreachable: {exc}"))
    except (BotoCoreError, ClientError) as exc:
        return Outcome(SessionStatus.UNREACHABLE, _detail(f"AWS IoT control plane: {exc}"))
    finally:
        with contextlib.suppress(Exception):
            iot.close()


def _find_certificate(iot: Any, wanted: str, der_id: str | None, deadline: float) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    def describe(cert_id: str) -> dict[str, Any] | None:
        if time.monotonic() > deadline:
            raise TimeoutError
        try:
            desc = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return None
            raise
        return desc if _norm_pem(str(desc.get("certificatePem", ""))) == wanted else None

    if der_id is not None:
        found = describe(der_id)
        if found is not None:
            return found
    for page in iot.get_paginator("list_certificates").paginate():
        for cert in page.get("certificates", []):
            if cert["certificateId"] == der_id:
                continue
            found = describe(cert["certificateId"])
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------------------------- dispatcher


class CloudSessions:
    """The gateway's default session opener: ``await sessions(request) -> SessionResult``.

    ``timeout`` bounds one session (connect + publish + PUBACK, or the control-plane check).
    ``aws_control``: an :class:`AwsControlPlane` or its ``aws-iot://`` URL, used for every AWS
    credential. ``ca_file``: CA bundle to verify ``mqtts://`` brokers (default: the system's).
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, aws_control: AwsControlPlane | str | None = None,
                 ca_file: str | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.timeout = timeout
        if isinstance(aws_control, str):
            aws_control = AwsControlPlane.from_url(aws_control)
        self.aws_control = aws_control
        self.ca_file = ca_file

    async def __call__(self, request: SessionOpen) -> SessionResult:
        outcome = await asyncio.to_thread(self.run_blocking, request)
        return SessionResult(request.request_id, outcome.status, _detail(outcome.detail))

    def run_blocking(self, request: SessionOpen) -> Outcome:
        cred = request.credential
        if cred.platform == Platform.AWS_IOT:
            return self._aws(request)
        try:
            tls, host, port = parse_mqtt_endpoint(cred.endpoint)
        except ValueError:
            return Outcome(SessionStatus.MALFORMED, "endpoint is not mqtt[s]://host:port")
        ctx = ssl.create_default_context(cafile=self.ca_file) if tls else None
        return mqtt_publish_once(host, port, cred.client_id, cred.username, cred.secret, request.topic,
                                 request.payload, timeout=self.timeout, tls=ctx)

    def _aws(self, request: SessionOpen) -> Outcome:
        cred = request.credential
        if cred.endpoint.startswith("aws-iot://"):
            try:
                control: AwsControlPlane | None = AwsControlPlane.from_url(cred.endpoint)
            except ValueError:
                return Outcome(SessionStatus.MALFORMED, "endpoint is not aws-iot://HOST:PORT?region=R")
        else:
            control = self.aws_control
        if control is not None:
            return aws_check_session(control, cred, request.topic, self.timeout)
        try:
            tls, host, port = parse_mqtt_endpoint(cred.endpoint)
        except ValueError:
            return Outcome(SessionStatus.MALFORMED, "endpoint is not mqtts://host:port")
        if not tls:
            return Outcome(SessionStatus.MALFORMED, "an AWS IoT endpoint is mqtts://")
        try:
            cert_pem, key_pem = split_pem_secret(cred.secret)
            ctx = _client_cert_context(cert_pem, key_pem, self.ca_file)
        except (ValueError, ssl.SSLError) as exc:
            return Outcome(SessionStatus.REFUSED, _detail(f"unusable client certificate: {exc}"))
        return mqtt_publish_once(host, port, cred.client_id, None, None, request.topic, request.payload,
                                 timeout=self.timeout, tls=ctx)


async def open_session(request: SessionOpen, timeout: float = DEFAULT_TIMEOUT,
                       aws_control: AwsControlPlane | str | None = None) -> SessionResult:
    """One session with the default opener (see :class:`CloudSessions`)."""
    return await CloudSessions(timeout, aws_control)(request)
