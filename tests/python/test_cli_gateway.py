"""`otakey gateway --device tcp://…` bridges a device link to the agent, the way a Renode user runs
it against `otakey-device.resc`'s UART socket terminal: a TCP server stands in for that terminal,
with a reference device behind it; the agent and Mosquitto are real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from agentproc import make_stack, mqtt_accepts
from otakey.harness.servers import free_port
from otakey.protocol.cloudsession import SessionResult, decode_session_message
from otakey.protocol.framing import Channel, Frame, FrameDecoder, encode_frame
from otakey.protocol.handshake import DeviceSession, DeviceState


def _frames(conn: socket.socket, decoder: FrameDecoder) -> list[Frame]:
    while True:
        data = conn.recv(8192)
        assert data, "the gateway closed the device link"
        frames = [f for f in decoder.feed(data) if isinstance(f, Frame)]
        if frames:
            return frames


def _exchange(conn: socket.socket, decoder: FrameDecoder, device: DeviceSession, first: bytes) -> None:
    """Carry one exchange: the device's messages go out on AGENT, its cloud-session requests on
    CLOUD; answers come back through the gateway until the device has nothing more to send."""
    conn.sendall(encode_frame(Channel.AGENT, first))
    while device.state != DeviceState.IDLE:
        for frame in _frames(conn, decoder):
            if frame.channel == Channel.AGENT:
                out = device.receive(frame.payload)
            else:
                result = decode_session_message(frame.payload)
                assert isinstance(result, SessionResult)
                out = device.session_result(result)
            if out.session is not None:
                conn.sendall(encode_frame(Channel.CLOUD, out.session.encode()))
            if out.send is not None:
                conn.sendall(encode_frame(Channel.AGENT, out.send))


def test_gateway_cli_bridges_a_socket_terminal_to_the_agent_and_opens_the_devices_mqtt_session(
        tmp_path: Path, mosquitto: Any) -> None:
    stack = make_stack(tmp_path, "sqlite", mosquitto=mosquitto)
    product = stack.create_product("PO-GW", quantity=10)
    agent = stack.agent()
    terminal = socket.create_server(("127.0.0.1", free_port()))
    port = terminal.getsockname()[1]
    gateway = subprocess.Popen(
        [sys.executable, "-m", "otakey", "gateway", "--device", f"tcp://127.0.0.1:{port}",
         "--agent", f"127.0.0.1:{agent.port}"],
        env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        terminal.settimeout(20)
        conn, _ = terminal.accept()
        conn.settimeout(20)
        device = DeviceSession(os.urandom(12), product.factory_state())
        decoder = FrameDecoder()
        conn.sendall(b"\x00" + encode_frame(Channel.CONSOLE, b"OTA-Key fw 1.0.0 (reference device)\n"))
        for _ in range(2):  # stage-2 provisioning, then the first cloud credential
            first = device.start_next()
            assert first is not None
            _exchange(conn, decoder, device, first)
        ks = device.keystore
        assert ks is not None and ks.pk is None and ks.ak is not None and ks.cloud is not None
        assert device.state == DeviceState.IDLE
        assert mqtt_accepts(ks.cloud)  # type: ignore[arg-type]  # same fields as the adapter's
        conn.close()
    finally:
        gateway.send_signal(signal.SIGINT)
        out, err = gateway.communicate(timeout=20)
        terminal.close()
        stack.stop_all()
    assert gateway.returncode == 0, err
    assert "OTA-Key fw 1.0.0 (reference device)" in out
    assert "cloud sessions ok 1" in err


def test_gateway_cli_rejects_a_bad_agent_address_with_one_sentence() -> None:
    run = subprocess.run([sys.executable, "-m", "otakey", "gateway", "--device", "tcp://127.0.0.1:1",
                          "--agent", "nowhere"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "--agent is HOST:PORT" in run.stderr and "Traceback" not in run.stderr
