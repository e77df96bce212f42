"""The gateway: carries protocol §1 frames between a device's USART1 and the agent, and opens
cloud sessions for the device (protocol §5; DESIGN §3 "the gateway is the device's modem").

``Gateway`` (``gateway.py``) is the one implementation; ``transports.py`` gives it the device link
(in-process emulator, TCP to Renode's socket terminal, pyserial for a real board);
``mqtt_session.py`` opens the cloud sessions (MQTT with paho; AWS IoT via a control-plane check
against a moto stand-in, or a real TLS client-certificate session).
"""

from .gateway import AgentLinkState, Gateway, GatewayCounters, SessionRecord
from .mqtt_session import AwsControlPlane, CloudSessions, Outcome, open_session
from .transports import (
    DeviceTransport,
    EmulatorUartTransport,
    InProcessTransport,
    SerialTransport,
    TcpTransport,
    TransportError,
    transport_from_url,
)

__all__ = [
    "AgentLinkState",
    "AwsControlPlane",
    "CloudSessions",
    "DeviceTransport",
    "EmulatorUartTransport",
    "Gateway",
    "GatewayCounters",
    "InProcessTransport",
    "Outcome",
    "SerialTransport",
    "SessionRecord",
    "TcpTransport",
    "TransportError",
    "open_session",
    "transport_from_url",
]
