"""Cloud adapters: where device credentials are registered. See ``base.py`` for the interface.

``ADAPTERS`` is the registry the agent and the CLI read (explicit, no import magic): platform
name → :class:`~otakey.cloud.base.CloudAdapter` class, constructed with that platform's keyword
options. boto3 is imported only when an AWS adapter starts.
"""

from __future__ import annotations

from typing import Any

from .aws_iot import AwsIotAdapter
from .base import PLATFORM_CODES, Activation, CloudAdapter, CloudCredential, device_name, device_topic_filter
from .mosquitto import MosquittoAdapter

ADAPTERS: dict[str, type[CloudAdapter]] = {
    MosquittoAdapter.platform: MosquittoAdapter,
    AwsIotAdapter.platform: AwsIotAdapter,
}


def make_adapter(platform: str, **options: Any) -> CloudAdapter:
    """An adapter for ``platform`` built with its options (not started yet)."""
    try:
        cls = ADAPTERS[platform]
    except KeyError:
        raise ValueError(f"unknown cloud platform {platform!r}; known: {', '.join(ADAPTERS)}") from None
    return cls(**options)


__all__ = [
    "ADAPTERS",
    "PLATFORM_CODES",
    "Activation",
    "AwsIotAdapter",
    "CloudAdapter",
    "CloudCredential",
    "MosquittoAdapter",
    "device_name",
    "device_topic_filter",
    "make_adapter",
]
