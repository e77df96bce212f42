"""USART1 / USART2 in asynchronous 8N1 polling use (RM0090 §30; registers §30.6).

Device side: ``SR`` (``TXE``, ``TC``, ``RXNE``, ``ORE`` and the other flags), ``DR``, ``BRR``,
``CR1`` (``UE``, ``TE``, ``RE``), ``CR2``, ``CR3``, ``GTPR``. A ``DR`` write with ``UE`` and ``TE`` set
is transmitted at once (``TXE`` and ``TC`` stay 1); with the transmitter off the byte waits in
``TDR`` (``TXE`` = 0) until ``UE`` and ``TE`` are set. ``RXNE``/``TC`` clear by writing 0; ``ORE``,
``NF``, ``FE``, ``PE`` clear by reading ``SR`` then ``DR`` (RM0090 §30.6.1).

Host side (:class:`UartHost`): a byte queue in, a buffer and an optional callback out. By default
received bytes wait in the queue until the firmware has read the previous one (no overrun ever). With
``write(data, paced=True)`` bytes arrive on the wire at the programmed baud rate instead, measured in
core cycles, so a firmware that does not read ``DR`` in time sees ``ORE`` and loses bytes as on the
real chip. A status read that finds nothing to receive feeds the bus's idle detector.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from otakey.emu import rm0090 as rm
from otakey.emu.peripheral import Peripheral, ResetKind

if TYPE_CHECKING:
    from otakey.emu.bus import Bus

_CR1_WRITABLE = 0xBFFF
_CR2_WRITABLE = 0x7F7F
_CR3_WRITABLE = 0x0FFF
_SR_ERRORS = rm.USART_SR_ORE | rm.USART_SR_NF | rm.USART_SR_FE | rm.USART_SR_PE
_BITS_PER_FRAME = 10  # start + 8 data + stop


class UartHost:
    """The far end of the wire, as seen by a test or the gateway."""

    def __init__(self, usart: Usart) -> None:
        self._usart = usart
        self.output = bytearray()
        self.on_transmit: Callable[[int], None] | None = None

    def write(self, data: bytes, paced: bool = False) -> None:
        """Send bytes to the device (see the module docstring for ``paced``)."""
        self._usart.host_send(bytes(data), paced)

    def read(self) -> bytes:
        """Everything the device transmitted since the last read."""
        data = bytes(self.output)
        self.output.clear()
        return data

    @property
    def pending(self) -> int:
        """Bytes sent by the host that the device has not received yet."""
        return len(self._usart.rx_queue)


class Usart(Peripheral):
    def __init__(self, bus: Bus, name: str, base: int, clock_gate: tuple[int, int], pclk: str) -> None:
        super().__init__(bus, name, base)
        self.clock_gate = clock_gate
        self._pclk = pclk  # "pclk1" or "pclk2": the APB bus clock that drives the baud rate
        self.host = UartHost(self)
        self.rx_queue: deque[tuple[int, int | None]] = deque()  # (byte, arrival cycle or None)
        self.reset(ResetKind.POWER_ON)
        bus.add_rx_source(self)

    def reset(self, kind: ResetKind) -> None:
        self.sr = rm.USART_SR_RESET
        self.rdr = 0
        self.tdr: int | None = None
        self.brr = self.cr1 = self.cr2 = self.cr3 = self.gtpr = 0
        self._sr_read = False
        # Bytes on the wire while the device resets are lost: the receiver is off.
        self.rx_queue.clear()

    # --- host side ------------------------------------------------------------------------------
    def host_send(self, data: bytes, paced: bool) -> None:
        if paced:
            gap = self._cycles_per_frame()
            last = self.rx_queue[-1][1] if self.rx_queue and self.rx_queue[-1][1] is not None else None
            t = max(self.bus.now(), last or 0)
            for byte in data:
                t += gap
                self.rx_queue.append((byte, t))
        else:
            self.rx_queue.extend((byte, None) for byte in data)
        self.bus.wake()

    def rx_pending(self) -> bool:
        """Bytes that will arrive by themselves as time passes (paced, receiver on)."""
        return bool(self.rx_queue) and self._receiver_on() and any(t is not None for _, t in self.rx_queue)

    def _cycles_per_frame(self) -> int:
        rcc = self.bus.rcc
        if rcc is None or not self.brr:
            return 1
        clocks = rcc.clocks()
        pclk = getattr(clocks, self._pclk)
        div = self.brr if not self.cr1 & rm.USART_CR1_OVER8 else (self.brr & ~0xF) | ((self.brr & 0x7) << 1)
        # baud = PCLK / USARTDIV(x16), so one bit lasts BRR PCLK cycles = BRR * HCLK / PCLK core cycles.
        return max(1, _BITS_PER_FRAME * div * clocks.hclk // max(pclk, 1))

    # --- device side ----------------------------------------------------------------------------
    def _receiver_on(self) -> bool:
        return self.cr1 & (rm.USART_CR1_UE | rm.USART_CR1_RE) == (rm.USART_CR1_UE | rm.USART_CR1_RE)

    def _transmitter_on(self) -> bool:
        return self.cr1 & (rm.USART_CR1_UE | rm.USART_CR1_TE) == (rm.USART_CR1_UE | rm.USART_CR1_TE)

    def _receive(self) -> None:
        """Move bytes from the wire into RDR: paced ones when due, queued ones when RDR is free."""
        now = None
        while self.rx_queue:
            byte, arrival = self.rx_queue[0]
            if arrival is not None:
                now = self.bus.now() if now is None else now
                if arrival > now:
                    return
                self.rx_queue.popleft()
                if not self._receiver_on():
                    continue  # nobody listening: the frame is lost
                if self.sr & rm.USART_SR_RXNE:
                    self.sr |= rm.USART_SR_ORE  # RDR keeps the old byte, the new one is lost
                    continue
            else:
                if not self._receiver_on() or self.sr & rm.USART_SR_RXNE:
                    return
                self.rx_queue.popleft()
            self.rdr = byte
            self.sr |= rm.USART_SR_RXNE

    def _transmit(self, byte: int) -> None:
        self.host.output.append(byte)
        if self.host.on_transmit is not None:
            self.host.on_transmit(byte)
        self.sr |= rm.USART_SR_TXE | rm.USART_SR_TC

    def read_register(self, offset: int) -> int | None:
        if offset == rm.USART_SR:
            if self.rx_queue:
                self._receive()
            self._sr_read = True
            if not self.sr & rm.USART_SR_RXNE and not self.rx_pending():
                self.bus.rx_poll_empty()
            return self.sr
        if offset == rm.USART_DR:
            self._receive()
            value = self.rdr
            if self._sr_read:
                self.sr &= ~_SR_ERRORS
            self._sr_read = False
            self.sr &= ~rm.USART_SR_RXNE
            self._receive()
            return value
        return self.peek_register(offset)

    def peek_register(self, offset: int) -> int | None:
        return {rm.USART_SR: self.sr, rm.USART_DR: self.rdr, rm.USART_BRR: self.brr,
                rm.USART_CR1: self.cr1, rm.USART_CR2: self.cr2, rm.USART_CR3: self.cr3,
                rm.USART_GTPR: self.gtpr}.get(offset)

    def write_register(self, offset: int, value: int) -> bool:
        if offset == rm.USART_SR:
            # RXNE, TC, LBD, CTS: write 0 to clear; the other flags ignore writes.
            self.sr &= ~(rm.USART_SR_RC_W0 & ~value)
        elif offset == rm.USART_DR:
            self._sr_read = False
            byte = value & 0xFF
            if self._transmitter_on():
                self._transmit(byte)
            else:
                self.tdr = byte  # waits in TDR until the transmitter is enabled
                self.sr &= ~(rm.USART_SR_TXE | rm.USART_SR_TC)
        elif offset == rm.USART_BRR:
            self.brr = value & 0xFFFF
        elif offset == rm.USART_CR1:
            self.cr1 = value & _CR1_WRITABLE
            if self.tdr is not None and self._transmitter_on():
                byte, self.tdr = self.tdr, None
                self._transmit(byte)
            self._receive()
        elif offset == rm.USART_CR2:
            self.cr2 = value & _CR2_WRITABLE
        elif offset == rm.USART_CR3:
            self.cr3 = value & _CR3_WRITABLE
        elif offset == rm.USART_GTPR:
            self.gtpr = value & 0xFFFF
        else:
            return False
        return True
