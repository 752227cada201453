"""Tests that the distribution lists every package folder and no bare `server`/`client` module."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_table():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_folders():
    table = _setuptools_table()
    found = set()
    for name, folder in table["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join((name, *relative.parts)))
    return found


def test_packages_list_matches_folders():
    assert sorted(_setuptools_table()["packages"]) == sorted(_package_folders())


def test_no_top_level_server_or_client_module():
    names = set(_setuptools_table()["package-dir"])
    assert not names & {"server", "client", "simulations"}


def test_console_scripts_import():
    import importlib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
