"""`medi-server --supernode-key`: the key file is checked before the SuperLink starts."""

from __future__ import annotations

import logging

import pytest

from deploy_support import make_certs
from medi_core.errors import ConfigError
from medi_server import superlink as sl
from medi_server.cli import main


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), ["A7"], [])


def test_public_key_accepted(certs):
    sl.check_supernode_public_key(certs / "supernodes" / "A7.pub")


def test_private_key_rejected(certs):
    with pytest.raises(ConfigError, match=r"is a private key or PEM file, not an OpenSSH public key; pass the site's public key \(A7\.pub"):
        sl.check_supernode_public_key(certs / "supernodes" / "A7")


def test_certificate_rejected(certs):
    with pytest.raises(ConfigError, match="is a private key or PEM file"):
        sl.check_supernode_public_key(certs / "ca.crt")


def test_text_file_rejected(tmp_path):
    key = tmp_path / "A7.pub"
    key.write_text("not a key\n")
    with pytest.raises(ConfigError, match="is not an OpenSSH elliptic-curve public key"):
        sl.check_supernode_public_key(key)


def test_missing_key_rejected(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        sl.check_supernode_public_key(tmp_path / "A7.pub")


def test_server_private_key_exits_two(certs, tmp_path, monkeypatch, caplog):
    def fail_start(*_, **__):
        raise AssertionError("the SuperLink must not start with an invalid SuperNode key")

    monkeypatch.setattr(sl, "start_process", fail_start)
    argv = ["--run-dir", str(tmp_path / "run"), "--certs", str(certs),
            "--supernode-key", str(certs / "supernodes" / "A7")]

    with caplog.at_level(logging.ERROR, logger="medi_server.cli"):
        status = main(argv)

    assert status == 2
    assert "is a private key or PEM file" in caplog.text
    assert not (tmp_path / "run").exists()
