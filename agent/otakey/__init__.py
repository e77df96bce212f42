"""OTA-Key: per-device key provisioning and atomic key updates for IoT fleets."""

__version__ = "0.1.0"
