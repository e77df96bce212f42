"""``otakey agent serve``: run the agent service.

Cloud URLs (``--cloud``, once per platform; the first is where new credentials go):

- ``mosquitto://ADMIN:PASSWORD@HOST:PORT[?device_endpoint=mqtt://H:P]`` — Mosquitto 2.0 dynamic
  security, logged in as the dynsec admin;
- ``aws-iot://[KEY_ID:SECRET@][HOST:PORT]?region=REGION[&tls=0|1]`` — AWS IoT Core (HOST:PORT:
  another control-plane address, e.g. a moto server; plain HTTP on loopback unless tls=1).

The key-encryption key comes from ``--kek-file`` or ``$OTAKEY_KEK`` (32 bytes as 64 hex digits or
base64). Logs go to stderr, one event per line (``--log-format kv`` or ``json``); they never
contain key material.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

import uvloop

from otakey.agent import Agent, AgentConfig, AgentError, PolicyConfig
from otakey.agent.agentlog import setup_logging
from otakey.agent.operator import db_url, load_kek
from otakey.store import KEK_ENV

CRASH_ENV = "OTAKEY_CRASH_AT"  # test-only fault injection, see otakey.agent.service


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--listen is HOST:PORT, e.g. 127.0.0.1:7700, not {text!r}")
    return host.strip("[]"), int(port)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("agent", help="run the agent service", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = p.add_subparsers(dest="agent_command", metavar="ACTION")
    asub.required = True
    s = asub.add_parser("serve", help="serve gateways on a TCP port until SIGTERM",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--db", metavar="URL", help="database: sqlite:///abs/path.db, a file path, or "
                   "postgresql://user@host:port/db (default $OTAKEY_DB)")
    s.add_argument("--listen", type=_listen, default=("127.0.0.1", 7700), metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:7700; port 0 picks a free one)")
    s.add_argument("--cloud", action="append", default=[], metavar="URL",
                   help="a cloud adapter (repeat for several platforms; the first is the default)")
    s.add_argument("--kek-file", metavar="FILE", help=f"key-encryption key file (default ${KEK_ENV})")
    s.add_argument("--log-format", choices=("kv", "json"), default="kv")
    s.add_argument("--verbose", "-v", action="store_true", help="log every session transition too")
    s.add_argument("--shutdown-timeout", type=float, default=5.0, metavar="S",
                   help="on SIGTERM, how long in-flight messages may take (default 5)")
    s.add_argument("--reconcile-interval", type=float, default=5.0, metavar="S",
                   help="how often revocations are pushed to the cloud (default 5)")
    s.add_argument("--exchange-ttl", type=float, default=7 * 24 * 3600.0, metavar="S",
                   help="how long stored answers serve duplicates (default 7 days); a replay older "
                        "than this is evaluated afresh")
    g = s.add_argument_group("policies")
    g.add_argument("--max-activations", type=int, default=0, metavar="N",
                   help="more first activations of one PO per window is an anomaly (0: off)")
    g.add_argument("--activation-window", type=float, default=3600.0, metavar="S")
    g.add_argument("--freeze-on-anomaly", action="store_true",
                   help="freeze the PO on a leaked-PK sign (quantity, allow-list, activation rate)")
    g.add_argument("--source-rate", type=float, default=0.0, metavar="R",
                   help="messages per second per source address (0: no limit)")
    g.add_argument("--source-burst", type=int, default=50, metavar="N")
    s.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    kek = load_kek(args.kek_file)
    host, port = args.listen
    try:
        config = AgentConfig(
            db_url=db_url(args.db), listen_host=host, listen_port=port, cloud_urls=tuple(args.cloud),
            policy=PolicyConfig(activation_window=args.activation_window,
                                max_activations=args.max_activations,
                                freeze_on_anomaly=args.freeze_on_anomaly,
                                source_rate=args.source_rate, source_burst=args.source_burst),
            shutdown_timeout=args.shutdown_timeout, reconcile_interval=args.reconcile_interval,
            exchange_ttl=args.exchange_ttl,
            log_format=args.log_format, crash_at=os.environ.get(CRASH_ENV) or None)
    except ValueError as exc:
        raise AgentError(str(exc)) from None
    setup_logging(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    # uvloop: the event loop, transports and timers in C. The agent is CPU-bound on one core under
    # load, and asyncio's own Python was ~18 % of it (bench/README.md, goal 1).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(Agent(config, kek).run())
    return 0
