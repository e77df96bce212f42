"""The OTA-Key agent: provisions AKs, rotates them, and hands out cloud credentials
(docs/protocol.md), with its state in a store (``otakey.store``) and credentials in clouds
(``otakey.cloud``).

``service.Agent`` is the asyncio TCP service; ``handlers`` holds one handler per request type and
the pipeline that maps domain errors to the wire; ``policy`` the refusal rules and anomalies;
``config`` the frozen configuration and ``Services``; ``cloudurl`` the ``--cloud`` URL scheme;
``product_file`` the file ``otakey product create`` writes for the firmware build.
"""

from .config import AgentConfig, PolicyConfig, Services
from .service import Agent, AgentError, SessionState

__all__ = ["Agent", "AgentConfig", "AgentError", "PolicyConfig", "Services", "SessionState"]
