"""The agent's configuration and its typed, frozen application state.

:class:`AgentConfig` is what the operator chooses (command line). :class:`Services` is built once
at start-up from it — the opened store, the started cloud adapters, the policy — and handed to every
handler explicitly. Both are frozen: nothing changes them after ``Agent.run()`` started serving
(aiohttp's ``AppKey``/frozen-app habit, STYLE.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from otakey.cloud.base import CloudAdapter
    from otakey.store import Store

    from .policy import Policy


@dataclass(frozen=True)
class PolicyConfig:
    """Limits of :mod:`otakey.agent.policy`.

    ``activation_window``/``max_activations``: more than ``max_activations`` first AKs issued for
    one PO within ``activation_window`` seconds is an anomaly (a leaked PK provisions fast);
    0 disables the check. ``freeze_on_anomaly``: such an anomaly (and a quantity overrun or an
    ID outside the allow-list) also freezes the PO — the paper's response to a leaked PK.
    ``source_rate``/``source_burst``: messages per second a source address may send on average,
    and in a burst (token bucket); 0 disables the limit.
    """

    activation_window: float = 3600.0
    max_activations: int = 0
    freeze_on_anomaly: bool = False
    source_rate: float = 0.0
    source_burst: int = 50

    def __post_init__(self) -> None:
        if self.activation_window <= 0:
            raise ValueError("activation_window must be > 0 seconds")
        if self.max_activations < 0 or self.source_rate < 0 or self.source_burst < 1:
            raise ValueError("rate limits are >= 0 (burst >= 1)")


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``otakey agent serve`` is told.

    ``cloud_urls``: one URL per platform (see :mod:`otakey.agent.cloudurl`); the first one is where
    new credentials go unless an operator moved a device elsewhere (``otakey fleet migrate``).
    ``crash_at``: test-only fault injection — the agent kills itself with SIGKILL when it reaches
    that named point (see ``service.CRASH_POINTS``); never set in production.
    """

    # URLs may carry passwords: kept out of repr().
    db_url: str = field(repr=False)
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    cloud_urls: tuple[str, ...] = field(default=(), repr=False)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    shutdown_timeout: float = 5.0
    reconcile_interval: float = 5.0
    exchange_ttl: float = 7 * 24 * 3600.0
    handler_timeout: float = 30.0
    log_format: str = "kv"
    crash_at: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.listen_port <= 65535:
            raise ValueError("listen port is 0..65535")
        if self.shutdown_timeout < 0 or self.reconcile_interval <= 0 or self.exchange_ttl <= 0:
            raise ValueError("timeouts and intervals must be positive")
        if self.log_format not in ("kv", "json"):
            raise ValueError("log format is kv or json")


@dataclass(frozen=True)
class Services:
    """The agent's state, built once in ``Agent.run()``; handlers receive it explicitly.

    ``adapters`` maps platform name → started adapter (read-only mapping); ``default_platform`` is
    the first configured one.
    """

    config: AgentConfig
    store: Store
    adapters: Mapping[str, CloudAdapter]
    default_platform: str | None
    policy: Policy

    def __post_init__(self) -> None:
        # A plain dict handed in could still be changed by its owner: freeze a copy.
        object.__setattr__(self, "adapters", MappingProxyType(dict(self.adapters)))
        if self.default_platform is not None and self.default_platform not in self.adapters:
            raise ValueError("the default platform has no adapter")

    def adapter(self, platform: str) -> CloudAdapter | None:
        return self.adapters.get(platform)
