"""Cloud URLs: how the operator names a cloud adapter on the command line (``--cloud URL``).

``mosquitto://ADMIN:PASSWORD@HOST:PORT[?device_endpoint=mqtt://H:P&timeout=S&shards=…]``
    Mosquitto 2.0 with dynamic security. ``ADMIN``/``PASSWORD`` is the dynsec admin login
    (percent-encode special characters). The agent connects to ``mqtt://HOST:PORT``; devices are
    told ``device_endpoint`` (default: the same address). ``shards=[ADMIN:PASSWORD@]H:P,…`` adds
    more brokers: devices are spread over all of them by ID (``otakey.cloud.mosquitto_shards``;
    a broker's own admin login defaults to the first one's, its device endpoint is ``mqtt://H:P``).

``aws-iot://[KEY_ID:SECRET@][HOST:PORT]?region=REGION[&tls=0|1][&data_endpoint=mqtts://H:P]``
    AWS IoT Core through boto3. With ``HOST:PORT`` the control plane is that address (a moto
    server in tests: ``aws-iot://127.0.0.1:5000?region=us-east-1``), plain HTTP for a loopback
    host unless ``tls=1``; without it, AWS itself. Credentials come from the URL's user part or
    boto3's usual chain (environment, profile).

The password and secret never appear in logs: use :func:`redact` for display.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from otakey.cloud import ADAPTERS, CloudAdapter, make_adapter

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class CloudSpec:
    platform: str
    options: dict[str, Any] = field(repr=False)
    display: str = ""

    def build(self) -> CloudAdapter:
        if "shards" in self.options:
            from otakey.cloud.mosquitto_shards import ShardedMosquittoAdapter

            return ShardedMosquittoAdapter(self.options["shards"])
        return make_adapter(self.platform, **self.options)


def _query(parts: Any, allowed: set[str]) -> dict[str, str]:
    raw = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"unknown cloud URL option(s): {', '.join(sorted(unknown))}")
    return {k: v[-1] for k, v in raw.items()}


def _port(parts: Any) -> int | None:
    try:
        return parts.port
    except ValueError:
        raise ValueError("the cloud URL's port is not a number 0..65535") from None


def parse_cloud_url(url: str) -> CloudSpec:
    """A :class:`CloudSpec` for ``url``; ValueError with a one-sentence reason when malformed."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ADAPTERS:
        raise ValueError(f"unknown cloud {scheme or url!r}: a cloud URL starts with "
                         f"{' or '.join(s + '://' for s in ADAPTERS)}")
    if scheme == "mosquitto":
        return _mosquitto(parts)
    return _aws(parts)


def _mosquitto(parts: Any) -> CloudSpec:
    q = _query(parts, {"device_endpoint", "timeout", "shards"})
    host, port = parts.hostname, _port(parts)
    if not host or port is None:
        raise ValueError("a mosquitto URL needs HOST:PORT, e.g. mosquitto://admin:PASSWORD@127.0.0.1:1883")
    if parts.username is None or parts.password is None:
        raise ValueError("a mosquitto URL needs the dynsec admin login: mosquitto://ADMIN:PASSWORD@HOST:PORT")
    options: dict[str, Any] = {
        "url": f"mqtt://{host}:{port}",
        "admin_username": unquote(parts.username),
        "admin_password": unquote(parts.password),
    }
    if q.get("device_endpoint"):
        options["device_endpoint"] = q["device_endpoint"]
    if q.get("timeout"):
        options["timeout"] = float(q["timeout"])
    display = f"mosquitto://{unquote(parts.username)}:***@{host}:{port}"
    if q.get("shards"):
        shards = [options] + [_shard(text, options) for text in q["shards"].split(",") if text.strip()]
        return CloudSpec("mosquitto", {"shards": shards}, f"{display} (+{len(shards) - 1} shards)")
    return CloudSpec("mosquitto", options, display)


def _shard(text: str, first: dict[str, Any]) -> dict[str, Any]:
    """One more broker of a sharded Mosquitto URL: ``[ADMIN:PASSWORD@]HOST:PORT``."""
    parts = urlsplit("//" + text.strip())
    host, port = parts.hostname, _port(parts)
    if not host or port is None:
        raise ValueError(f"a Mosquitto shard is [ADMIN:PASSWORD@]HOST:PORT, not {text!r}")
    options: dict[str, Any] = {"url": f"mqtt://{host}:{port}",
                               "admin_username": first["admin_username"],
                               "admin_password": first["admin_password"]}
    if parts.username is not None:
        options["admin_username"] = unquote(parts.username)
        options["admin_password"] = unquote(parts.password or "")
    if "timeout" in first:
        options["timeout"] = first["timeout"]
    return options


def _aws(parts: Any) -> CloudSpec:
    q = _query(parts, {"region", "tls", "data_endpoint", "concurrency"})
    region = q.get("region")
    if not region:
        raise ValueError("an aws-iot URL needs ?region=..., e.g. aws-iot://127.0.0.1:5000?region=us-east-1")
    options: dict[str, Any] = {"region": region}
    host, port = parts.hostname, _port(parts)
    display = "aws-iot://"
    if host:
        tls = q.get("tls")
        secure = tls == "1" if tls in ("0", "1") else host not in _LOOPBACK
        if tls not in (None, "0", "1"):
            raise ValueError("tls is 0 or 1")
        netloc = f"{host}:{port}" if port is not None else host
        options["endpoint_url"] = f"{'https' if secure else 'http'}://{netloc}"
        display += netloc
    if parts.username is not None:
        options["aws_access_key_id"] = unquote(parts.username)
        options["aws_secret_access_key"] = unquote(parts.password or "")
    if q.get("data_endpoint"):
        options["data_endpoint"] = q["data_endpoint"]
    if q.get("concurrency"):
        options["concurrency"] = int(q["concurrency"])
    return CloudSpec("aws-iot", options, f"{display}?region={region}")


def redact(url: str) -> str:
    """The URL for display, with any password or secret replaced."""
    try:
        return parse_cloud_url(url).display
    except ValueError:
        return "<malformed cloud URL>"
