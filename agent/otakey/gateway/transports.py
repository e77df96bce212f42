"""Device-side transports of the gateway: how bytes reach the device's USART1 and come back.

One interface, three implementations (DESIGN §3, device backends):

- :class:`InProcessTransport` — the built-in emulator, in the same process. The emulator harness
  hands the gateway what the device transmitted (``gateway.feed_from_device(data)`` or
  ``transport.feed(data)``) and receives device-bound bytes through the ``to_device`` callback
  (typically ``chip.uart(1).write``). :class:`EmulatorUartTransport` wires this to a
  :class:`~otakey.emu.usart.UartHost` and can also poll it by itself.
- :class:`TcpTransport` — Renode's socket terminal. Renode listens
  (``emulation CreateServerSocketTerminal PORT "name" false`` — ``false``: no telnet
  negotiation, so the byte stream is the raw UART) and the gateway connects as a client.
- :class:`SerialTransport` — a real board's ST-Link virtual COM port through pyserial's
  ``serial_for_url`` (115200 8N1, protocol §1). pyserial is imported only when this transport
  is built.

Lifecycle of every transport: ``await open()`` → any number of ``read()``/``write()`` →
``await close()`` (idempotent). ``read()`` waits for at least one byte and returns ``b""`` once
the link has ended for good; ``write()`` sends all bytes or raises ``ConnectionError``.
Everything runs on the gateway's event loop; only the serial transport uses worker threads,
because pyserial blocks.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from otakey.errors import Error

if TYPE_CHECKING:
    from otakey.emu.usart import UartHost

READ_CHUNK = 4096
_EOF = b""


class TransportError(Error):
    """A device transport cannot be opened (missing module, nobody listening, no such port)."""


class DeviceTransport(ABC):
    """The device end of a gateway.

    Required: :meth:`read`, :meth:`write`. Optional: :meth:`open`, :meth:`close` (no-ops by
    default). ``name`` says what the link is, for logs.
    """

    name: str = "device"

    async def open(self) -> None:
        """Connect. Raises :class:`TransportError` when the link cannot be had."""
        return None

    @abstractmethod
    async def read(self) -> bytes:
        """At least one byte from the device; ``b""`` when the link has ended."""
        raise NotImplementedError

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Send ``data`` to the device, whole."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release the link; idempotent."""
        return None


CLOSE_TIMEOUT = 5.0  # seconds a closing TCP link may take to flush before it is aborted


async def close_stream(writer: asyncio.StreamWriter, timeout: float = CLOSE_TIMEOUT) -> None:
    """Close a TCP stream without waiting forever: a closing transport first flushes what it still
    holds, which never ends while the peer does not read; after ``timeout`` the link is aborted."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout)
    except TimeoutError:
        writer.transport.abort()
    except (ConnectionError, OSError):
        pass


# --------------------------------------------------------------------------------------------- in-process


class InProcessTransport(DeviceTransport):
    """A byte stream inside this process (the built-in emulator).

    ``feed(data)`` delivers what the device sent; ``end()`` says the device is gone. Bytes for the
    device go to ``to_device`` at once, in order. Call ``feed``/``end`` on the gateway's event loop
    (from another thread: ``loop.call_soon_threadsafe(transport.feed, data)``).
    """

    name = "in-process"

    def __init__(self, to_device: Callable[[bytes], None] | None = None) -> None:
        self.to_device = to_device
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._ended = False
        #: everything written to the device, kept when no callback takes it
        self.sent = bytearray()

    def feed(self, data: bytes) -> None:
        if self._ended:
            raise ConnectionError("the in-process link has ended")
        if data:
            self._queue.put_nowait(bytes(data))

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_EOF)

    async def read(self) -> bytes:
        if self._ended and self._queue.empty():
            return _EOF
        data = await self._queue.get()
        if not data:
            # Keep the end marker for any later reader.
            self._queue.put_nowait(_EOF)
        return data

    async def write(self, data: bytes) -> None:
        if self._ended:
            raise ConnectionError("the in-process link has ended")
        if self.to_device is not None:
            self.to_device(bytes(data))
        else:
            self.sent += data

    async def close(self) -> None:
        self.end()


class EmulatorUartTransport(InProcessTransport):
    """An :class:`InProcessTransport` on an emulated chip's USART host side
    (``chip.uart(1)``: ``write(bytes)``, ``read() -> bytes``).

    Two ways to drive it: the harness that runs the chip calls :meth:`pump` after each
    ``chip.run()`` (or passes ``uart.read()`` to ``gateway.feed_from_device`` itself); and, with
    ``poll=True``, ``read()`` also polls the UART every ``poll_interval`` seconds. Device-bound
    bytes are written into the UART's receive queue at once.

    Threads: the UART host side is not thread-safe (``read()`` copies then clears its buffer), so
    run the chip on the gateway's event loop thread. A harness that runs ``chip.run()`` in a worker
    thread must build this with ``poll=False`` and call :meth:`pump` itself between runs.
    """

    name = "emulator-uart"

    def __init__(self, uart: UartHost, poll_interval: float = 0.002, poll: bool = True) -> None:
        super().__init__(to_device=uart.write)
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0")
        self.uart = uart
        self.poll_interval = poll_interval
        self.poll = poll

    def pump(self) -> int:
        """Move what the device transmitted since the last call into the gateway; bytes moved."""
        data = self.uart.read()
        if data:
            self.feed(data)
        return len(data)

    async def read(self) -> bytes:
        while self.poll and self._queue.empty() and not self._ended:
            if self.pump():
                break
            await asyncio.sleep(self.poll_interval)
        return await super().read()


# --------------------------------------------------------------------------------------------- TCP (Renode)


class TcpTransport(DeviceTransport):
    """A TCP client to a server socket terminal (Renode's ``CreateServerSocketTerminal``).

    ``open()`` retries for ``connect_timeout`` seconds: Renode takes a few seconds to start and
    only then listens.
    """

    name = "tcp"

    def __init__(self, host: str, port: int, connect_timeout: float = 10.0,
                 retry_interval: float = 0.1) -> None:
        if not 0 < port <= 65535:
            raise ValueError("port is 1..65535")
        if connect_timeout <= 0 or retry_interval <= 0:
            raise ValueError("timeouts are > 0")
        self.host, self.port = host, port
        self.name = f"tcp://{host}:{port}"
        self.connect_timeout = connect_timeout
        self.retry_interval = retry_interval
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        last: OSError | None = None
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TransportError(f"nothing accepts connections on {self.host}:{self.port} "
                                     f"after {self.connect_timeout} s: {last}")
            try:
                self._reader, self._writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), timeout=left)
                return
            except (OSError, TimeoutError) as exc:
                last = exc if isinstance(exc, OSError) else OSError(str(exc) or "timeout")
            await asyncio.sleep(min(self.retry_interval, max(0.0, deadline - loop.time())))

    async def read(self) -> bytes:
        if self._reader is None:
            return _EOF
        try:
            return await self._reader.read(READ_CHUNK)
        except (ConnectionError, OSError):
            return _EOF

    async def write(self, data: bytes) -> None:
        if self._writer is None:
            raise ConnectionError(f"{self.name} is not open")
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            await close_stream(writer)


# --------------------------------------------------------------------------------------------- pyserial


def _import_serial() -> Any:
    try:
        import serial  # type: ignore[import-untyped]
    except ImportError:
        raise TransportError("the serial transport needs pyserial: pip install pyserial") from None
    return serial


class SerialTransport(DeviceTransport):
    """A serial port through pyserial's ``serial_for_url`` (a device path such as
    ``/dev/ttyACM0`` — the ST-Link VCP — or any pyserial URL: ``loop://``, ``socket://h:p``,
    ``rfc2217://h:p``). 8N1 at ``baudrate`` as protocol §1 fixes.

    pyserial blocks, so reads run in a worker thread with a short ``poll`` timeout (which also
    bounds how long :meth:`close` waits for a read in progress).
    """

    def __init__(self, url: str, baudrate: int = 115200, poll: float = 0.05) -> None:
        if not url:
            raise ValueError("a serial URL or device path is needed")
        if baudrate <= 0 or poll <= 0:
            raise ValueError("baudrate and poll must be > 0")
        self.url, self.baudrate, self.poll = url, baudrate, poll
        self.name = f"serial:{url}"
        self.serial: Any = None
        self._closing = False

    async def open(self) -> None:
        serial = _import_serial()
        try:
            self.serial = await asyncio.to_thread(
                serial.serial_for_url, self.url, baudrate=self.baudrate, bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE, stopbits=serial.STOPBITS_ONE, timeout=self.poll,
                write_timeout=5.0)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise TransportError(f"cannot open the serial port {self.url}: {exc}") from exc

    def _read_blocking(self) -> bytes | None:
        port = self.serial
        if port is None or self._closing:
            return None
        try:
            # One byte waits up to `poll`; whatever else is already buffered comes along.
            data = bytes(port.read(1))
            if data and port.in_waiting:
                data += bytes(port.read(port.in_waiting))
        except Exception as exc:
            if self._closing:
                return None
            # pyserial raises SerialException (an OSError subclass on most backends) on unplug.
            raise ConnectionError(f"{self.name}: {exc}") from exc
        return data

    async def read(self) -> bytes:
        while True:
            try:
                data = await asyncio.to_thread(self._read_blocking)
            except ConnectionError:
                return _EOF
            if data is None:
                return _EOF
            if data:
                return data

    async def write(self, data: bytes) -> None:
        port = self.serial
        if port is None:
            raise ConnectionError(f"{self.name} is not open")

        def send() -> None:
            port.write(data)
            port.flush()

        try:
            await asyncio.to_thread(send)
        except Exception as exc:
            raise ConnectionError(f"{self.name}: {exc}") from exc

    async def close(self) -> None:
        self._closing = True
        port, self.serial = self.serial, None
        if port is not None:
            await asyncio.to_thread(port.close)


def transport_from_url(url: str, baudrate: int = 115200) -> DeviceTransport:
    """A transport for what an operator types: ``tcp://HOST:PORT`` (Renode's socket terminal),
    otherwise a serial device path or pyserial URL (``/dev/ttyACM0``, ``loop://``,
    ``rfc2217://HOST:PORT``)."""
    if url.startswith("tcp://"):
        host, sep, port = url[len("tcp://"):].rstrip("/").rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"a TCP device link is tcp://HOST:PORT, not {url!r}")
        return TcpTransport(host.strip("[]"), int(port))
    return SerialTransport(url, baudrate)
