"""`medi-client start`: checks that run before the SuperNode replaces the process."""

from __future__ import annotations

import logging
import socket

import pytest

from medi_client import start
from medi_client.cli import build_parser
from medi_core.errors import ConfigError


def _start_args(tmp_path, *extra: str):
    return build_parser().parse_args([
        "start", "--superlink", "127.0.0.1:9092", "--insecure", "--data", str(tmp_path),
        "--site-id", "A7", "--output-dir", str(tmp_path / "out"), *extra,
    ])


@pytest.fixture
def busy_port():
    """A port on 127.0.0.1 with a listening socket, as a running SuperNode's Runtime API has."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_runtime_port_free_accepted():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start.check_runtime_port_free(port)


def test_runtime_port_busy_rejected(busy_port):
    with pytest.raises(ConfigError, match=f"--runtime-port {busy_port}: 127.0.0.1:{busy_port} is already in use"):
        start.check_runtime_port_free(busy_port)


def test_start_busy_port_exits_two(tmp_path, busy_port, monkeypatch, caplog):
    def fail_execve(*_):
        raise AssertionError("the SuperNode must not start on a busy runtime port")

    monkeypatch.setattr(start.os, "execve", fail_execve)
    args = _start_args(tmp_path, "--runtime-port", str(busy_port))

    with caplog.at_level(logging.ERROR, logger="medi_client.start"):
        status = start.run_start(args)

    assert status == 2
    assert "pass a free one with --runtime-port" in caplog.text
