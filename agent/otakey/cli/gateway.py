"""``otakey gateway``: bridge one device link to the agent, and serve its cloud sessions.

The device link is Renode's UART socket terminal (``tcp://127.0.0.1:3456``) or a real board's
ST-Link virtual COM port (``/dev/ttyACM0``, any pyserial URL). Console lines (the boot banner,
keystore events) are printed as they arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from otakey.errors import Error
from otakey.gateway import CloudSessions, Gateway, transport_from_url


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("gateway", help="bridge a device link (Renode socket or serial port) to the agent")
    p.add_argument("--device", required=True,
                   help="tcp://HOST:PORT (Renode socket terminal) or a serial port / pyserial URL")
    p.add_argument("--agent", default="127.0.0.1:7700", help="the agent's HOST:PORT (default 127.0.0.1:7700)")
    p.add_argument("--baudrate", type=int, default=115200, help="serial speed (default 115200, as USART1)")
    p.add_argument("--aws-control", default=None,
                   help="AWS IoT control-plane URL used to check certificate sessions (e.g. a moto server)")
    p.add_argument("--session-timeout", type=float, default=5.0, help="seconds per cloud session")
    p.set_defaults(func=run)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"--agent is HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


async def _serve(gw: Gateway) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, gw.stop)
    await gw.run()


def run(args: argparse.Namespace) -> int:
    host, port = _host_port(args.agent)
    if args.session_timeout <= 0:
        raise ValueError("--session-timeout must be > 0")
    transport = transport_from_url(args.device, args.baudrate)
    sessions = CloudSessions(args.session_timeout, aws_control=args.aws_control)
    gw = Gateway(transport, host, port, sessions=sessions, session_timeout=args.session_timeout,
                 on_console=lambda line: print(line.rstrip("\n"), flush=True))
    try:
        asyncio.run(_serve(gw))
    except OSError as exc:
        raise Error(f"gateway: {exc}") from exc
    c = gw.counters
    print(f"gateway: stopped; frames to agent {c.frames_to_agent}, from agent {c.frames_from_agent}, "
          f"bad frames {c.bad_frames}, cloud sessions ok {c.sessions_ok}, refused {c.sessions_refused}, "
          f"unreachable {c.sessions_unreachable}", file=sys.stderr)
    return 0
