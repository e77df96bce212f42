"""The one exception tree of the project.

Caller mistakes raise ``ValueError``/``TypeError`` at once; everything the system itself
can run into derives from :class:`Error`.
"""


class Error(Exception):
    """Root of every OTA-Key error."""


class ProtocolError(Error):
    """A frame or message failed a check. ``code`` is the documented wire error."""

    def __init__(self, message: str, code: str = "rejected") -> None:
        super().__init__(message)
        self.code = code


class FrameError(ProtocolError):
    """A link frame is malformed (COBS, CRC, length, channel)."""


class EnvelopeError(ProtocolError):
    """A message envelope failed its checks. Deliberately says nothing about which one."""


class KeystoreError(Error):
    """A keystore image could not be encoded or decoded."""


class DeviceError(Error):
    """A device (emulated, Renode or real) misbehaved."""


class PowerCut(DeviceError):
    """Raised inside a device run when the campaign cuts its power."""


class FlashFault(DeviceError):
    """The flash model was used against its rules."""


class StorageError(Error):
    """The agent's store failed."""


class AdapterError(Error):
    """A cloud adapter failed."""


class AdapterTimeout(AdapterError):
    """A cloud adapter did not answer in time."""
