"""Mosquitto 2.0 dynamic security (``$CONTROL/dynamic-security/v1``) as a cloud.

Per device (``<id>`` = hex device ID, see ``device_name``):

- one role ``device-<id>`` whose ACLs allow publishing and subscribing under the literal topic
  tree ``devices/<id>/#`` only (2.0.x has no working ``%c``/``%u`` patterns, DESIGN §5);
- one dynsec client per credential version, username ``<id>.v<version>``, restricted to MQTT
  client id ``<id>``, with that role.

Why one client per version and not the ``<id>`` / ``<id>.next`` pair: dynsec keeps one password
per username, and the device keeps the username it was given. A pending credential needs its own
username so that old and new both work during the window, and the device must be able to keep
using that same username after activation. With ``<id>.next`` renamed back to ``<id>`` on
activation (setClientPassword + deleteClient) the username the device stored would stop existing.
Here activation just deletes the previous version's client; nothing the device holds changes.

Every command is idempotent (an "already exists"/"not found" answer counts as done), so a retry
after a crash converges. Several commands go in one control message — dynsec still rewrites its
JSON file once per changing command, but the round trips are saved (numbers in README.md).
The admin connection answers for any number of agent tasks: requests are matched to responses by
``correlationData``, so several agent replicas may share the response topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt

from otakey.errors import AdapterError, AdapterTimeout

from .base import Activation, CloudAdapter, CloudCredential, device_name, device_topic_filter, parse_mqtt_url

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"

# dynsec's answers to a create of something that exists / a change of something absent.
_EXISTS = {"Client already exists", "Role already exists", "Group already exists"}
_NOT_FOUND = {"Client not found", "Role not found", "Group not found"}


def role_name(device_id: bytes) -> str:
    return f"device-{device_name(device_id)}"


def client_username(device_id: bytes, version: int) -> str:
    return f"{device_name(device_id)}.v{version}"


def device_acls(device_id: bytes) -> list[dict[str, Any]]:
    topic = device_topic_filter(device_id)
    # Receiving and unsubscribing are allowed by the broker's defaultACLAccess; sending and
    # subscribing are denied by default and allowed here for the device's own tree only.
    return [
        {"acltype": "publishClientSend", "topic": topic, "allow": True},
        {"acltype": "subscribePattern", "topic": topic, "allow": True},
    ]


def try_connect(host: str, port: int, client_id: str, username: str, password: str,
                timeout: float = 5.0) -> mqtt.ReasonCode | None:
    """Open and close one MQTT session; the CONNACK reason (None if the broker never answered).
    Blocking. A refused login gives a failure reason code, an unreachable broker raises OSError."""
    result: list[mqtt.ReasonCode] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: mqtt.ReasonCode,
                   properties: Any) -> None:
        result.append(reason)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)
    client.on_connect = on_connect
    client.connect(host, port, keepalive=30)
    # Driven by hand, not by paho's thread: after a refusal that thread sits out a reconnect
    # delay (1 s) before it can be stopped.
    deadline = time.monotonic() + timeout
    try:
        while not result and time.monotonic() < deadline:
            if client.loop(timeout=0.05) not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                break
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
    return result[0] if result else None


class _Control:
    """The admin MQTT session: sends command lists, returns their responses, in order."""

    def __init__(self, host: str, port: int, username: str, password: str, timeout: float) -> None:
        self._host, self._port, self._timeout = host, port, timeout
        self._prefix = f"otakey-{secrets.token_hex(6)}"
        self._seq = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None
        self._sub_mid: int | None = None
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self._prefix,
                                   protocol=mqtt.MQTTv311)
        self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.1, 2.0)

    # paho calls these on its own thread; they hand results to the event loop.
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: mqtt.ReasonCode,
                    properties: Any) -> None:
        if reason.is_failure:
            self._settle_ready(AdapterError(f"the broker refused the dynsec admin login: {reason}"))
            return
        _, self._sub_mid = client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        if mid == self._sub_mid:
            if any(r.is_failure for r in reasons):
                self._settle_ready(AdapterError("the dynsec admin may not subscribe to the response topic"))
            else:
                self._settle_ready(None)

    def _settle_ready(self, error: Exception | None) -> None:
        loop, fut = self._loop, self._ready
        if loop is None or fut is None:
            return

        def settle() -> None:
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)

        loop.call_soon_threadsafe(settle)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(msg.payload)["responses"]
            key = str(responses[0].get("correlationData", "")).rsplit(":", 1)[0]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return
        fut = self._waiting.get(key)
        if fut is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(responses))

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        try:
            self._client.connect_async(self._host, self._port, keepalive=30)
            self._client.loop_start()
            await asyncio.wait_for(asyncio.shield(self._ready), self._timeout)
        except TimeoutError:
            self.stop()
            raise AdapterTimeout(f"no dynsec admin session with {self._host}:{self._port} "
                                 f"after {self._timeout} s") from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(AdapterError("the dynsec admin session closed"))
        self._waiting.clear()

    async def send(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One control message; the list of responses, one per command, in order."""
        if not commands:
            return []
        if self._loop is None:
            raise AdapterError("the adapter is not started")
        key = f"{self._prefix}:{next(self._seq)}"
        tagged = [dict(c, correlationData=f"{key}:{i}") for i, c in enumerate(commands)]
        fut: asyncio.Future[list[dict[str, Any]]] = self._loop.create_future()
        self._waiting[key] = fut
        try:
            info = self._client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise AdapterError(f"cannot publish to the broker: {mqtt.error_string(info.rc)}")
            try:
                responses = await asyncio.wait_for(fut, self._timeout)
            except TimeoutError:
                raise AdapterTimeout(f"no dynsec answer within {self._timeout} s") from None
        finally:
            self._waiting.pop(key, None)
        if len(responses) != len(commands):
            raise AdapterError(f"dynsec answered {len(responses)} of {len(commands)} commands")
        return responses


def _ok(response: dict[str, Any], tolerated: set[str]) -> bool:
    error = response.get("error")
    return error is None or error in tolerated


def _fail(response: dict[str, Any], what: str) -> AdapterError:
    return AdapterError(f"dynsec {response.get('command')} for {what}: {response.get('error')}")


class MosquittoAdapter(CloudAdapter):
    """Credentials on a Mosquitto 2.0 broker with the dynamic-security plugin.

    ``url``: where the admin connects (``mqtt://host:port``); ``device_endpoint``: what devices are
    told to connect to (defaults to ``url``). ``timeout``: seconds to wait for the broker.
    """

    platform = "mosquitto"

    def __init__(self, url: str = "mqtt://127.0.0.1:1883", admin_username: str = "admin",
                 admin_password: str = "", *, device_endpoint: str | None = None,
                 timeout: float = 10.0) -> None:
        scheme, self._host, self._port = parse_mqtt_url(url)
        if scheme != "mqtt":
            raise ValueError("the admin connection is plain mqtt:// (TLS is not implemented)")
        self.device_endpoint = device_endpoint or url
        parse_mqtt_url(self.device_endpoint)
        self._admin = (admin_username, admin_password)
        self._timeout = timeout
        self._control: _Control | None = None

    async def start(self) -> None:
        if self._control is None:
            control = _Control(self._host, self._port, *self._admin, self._timeout)
            await control.start()
            self._control = control

    async def close(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            await asyncio.to_thread(control.stop)

    async def control(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send raw dynsec commands in one message (for tools and tests)."""
        if self._control is None:
            raise AdapterError("the adapter is not started")
        return await self._control.send(commands)

    # --- registration -------------------------------------------------------------------------
    def _new_credential(self, device_id: bytes, version: int) -> CloudCredential:
        # 24 random bytes, URL-safe: 32 printable characters, well inside MQTT's password field.
        return CloudCredential(version=version, platform=self.platform, endpoint=self.device_endpoint,
                               client_id=device_name(device_id), username=client_username(device_id, version),
                               secret=secrets.token_urlsafe(24).encode())

    async def register_pending(self, device_id: bytes, version: int) -> CloudCredential:
        result = (await self.register_many([(device_id, version)]))[0]
        if isinstance(result, AdapterError):
            raise result
        return result

    async def register_many(self, requests: Sequence[tuple[bytes, int]]
                            ) -> list[CloudCredential | AdapterError]:
        creds = [self._new_credential(device_id, version) for device_id, version in requests]
        commands: list[dict[str, Any]] = []
        for (device_id, _), cred in zip(requests, creds, strict=True):
            # createRole answers "already exists" for every registration after the first,
            # without touching the file: cheaper than asking first.
            commands.append({"command": "createRole", "rolename": role_name(device_id),
                             "acls": device_acls(device_id)})
            commands.append({"command": "createClient", "username": cred.username,
                             "password": cred.secret.decode(), "clientid": cred.client_id,
                             "roles": [{"rolename": role_name(device_id)}]})
        responses = await self.control(commands)
        out: list[CloudCredential | AdapterError] = []
        retry: list[int] = []
        for i, cred in enumerate(creds):
            role_r, client_r = responses[2 * i], responses[2 * i + 1]
            if not _ok(role_r, _EXISTS):
                out.append(_fail(role_r, cred.client_id))
            elif client_r.get("error") == "Client already exists":
                out.append(cred)
                retry.append(i)          # an earlier attempt at this version: new password
            elif not _ok(client_r, set()):
                out.append(_fail(client_r, cred.username))
            else:
                out.append(cred)
        if retry:
            responses = await self.control([
                {"command": "setClientPassword", "username": creds[i].username,
                 "password": creds[i].secret.decode()} for i in retry])
            for i, r in zip(retry, responses, strict=True):
                if not _ok(r, set()):
                    out[i] = _fail(r, creds[i].username)
        return out

    # --- activation ---------------------------------------------------------------------------
    async def activate(self, device_id: bytes, credential: CloudCredential,
                       previous: CloudCredential | None = None) -> None:
        result = (await self.activate_many([Activation(device_id, credential, previous)]))[0]
        if result is not None:
            raise result

    async def activate_many(self, items: Sequence[Activation]) -> list[AdapterError | None]:
        for item in items:
            self._own(item.credential)
        # First prove each new credential still exists: deleting the old one of a device whose
        # new one vanished would leave it with none.
        responses = await self.control([{"command": "getClient", "username": item.credential.username}
                                        for item in items])
        out: list[AdapterError | None] = []
        deletes: list[tuple[int, dict[str, Any]]] = []
        for i, (item, r) in enumerate(zip(items, responses, strict=True)):
            if not _ok(r, set()):
                out.append(AdapterError(f"cannot activate {item.credential.username}: {r.get('error')}"))
                continue
            out.append(None)
            prev = item.previous
            if (prev is not None and prev.platform == self.platform
                    and prev.username != item.credential.username):
                deletes.append((i, {"command": "deleteClient", "username": prev.username}))
        if deletes:
            responses = await self.control([c for _, c in deletes])
            for (i, c), r in zip(deletes, responses, strict=True):
                if not _ok(r, _NOT_FOUND):
                    out[i] = _fail(r, c["username"])
        return out

    async def revoke_pending(self, device_id: bytes, credential: CloudCredential) -> None:
        self._own(credential)
        r = (await self.control([{"command": "deleteClient", "username": credential.username}]))[0]
        if not _ok(r, _NOT_FOUND):
            raise _fail(r, credential.username)

    async def disable(self, device_id: bytes, credentials: Sequence[CloudCredential] = ()) -> None:
        mine = [c for c in credentials if c.platform == self.platform]
        commands: list[dict[str, Any]] = [{"command": "disableClient", "username": c.username} for c in mine]
        # Also empty the device's role: a credential the agent does not know of (none should
        # exist) could then connect but neither publish nor subscribe.
        commands += [{"command": "removeRoleACL", "rolename": role_name(device_id), "acltype": acl["acltype"],
                      "topic": acl["topic"]} for acl in device_acls(device_id)]
        for r in await self.control(commands):
            if not _ok(r, _NOT_FOUND | {"ACL not found"}):
                raise _fail(r, device_name(device_id))

    async def remove(self, device_id: bytes, credentials: Sequence[CloudCredential] = ()) -> None:
        commands: list[dict[str, Any]] = [{"command": "deleteClient", "username": c.username}
                                          for c in credentials if c.platform == self.platform]
        commands.append({"command": "deleteRole", "rolename": role_name(device_id)})
        for r in await self.control(commands):
            if not _ok(r, _NOT_FOUND):
                raise _fail(r, device_name(device_id))

    async def check(self, credential: CloudCredential) -> bool:
        """Log in with the credential. The broker then drops any live session of the device
        (same client id): use it for diagnostics, not on a fleet in service."""
        self._own(credential)
        _, host, port = parse_mqtt_url(credential.endpoint)
        try:
            reason = await asyncio.to_thread(try_connect, host, port, credential.client_id,
                                             credential.username, credential.secret.decode(), self._timeout)
        except OSError as exc:
            raise AdapterError(f"cannot reach {credential.endpoint}: {exc}") from exc
        if reason is None:
            raise AdapterTimeout(f"no CONNACK from {credential.endpoint}")
        return not reason.is_failure

    def _own(self, credential: CloudCredential) -> None:
        if credential.platform != self.platform:
            raise ValueError(f"a {credential.platform} credential given to the {self.platform} adapter")
