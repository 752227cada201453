"""Write the Flower app folder that ``flwr run`` bundles and sends to the SuperLink.

The MeDi code is installed at the coordinator and at every site (the same
``medi-fed`` version), so the bundle only names the components and carries
the run configuration. It is a ``pyproject.toml`` plus a LICENSE, a few KiB,
far below Flower's 10 MB bundle limit. No weights or data ever travel in it.
"""

from __future__ import annotations

from pathlib import Path

import tomli_w

from medi_core import __version__
from medi_server.settings import DEFAULT_RUN_CONFIG

APP_NAME = "medi-fed-app"
PUBLISHER = "medi-fed"
SERVER_COMPONENT = "medi_server.server_app:app"
CLIENT_COMPONENT = "medi_client.client_app:app"
LICENSE_TEXT = """MIT License

The MeDi-Fed app bundle only names components of the medi-fed distribution
installed on the SuperLink and SuperNodes; see that distribution for the full
licence text.
"""


def write_app_folder(folder: Path) -> Path:
    """Create ``folder`` with the app's ``pyproject.toml`` and LICENSE; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    project = {
        "build-system": {"requires": ["setuptools>=69"], "build-backend": "setuptools.build_meta"},
        "project": {
            "name": APP_NAME,
            "version": __version__,
            "description": "MeDi-Fed federated metadata-guided diffusion (Flower app bundle)",
            "license": "MIT",
            "license-files": ["LICENSE"],
            # medi-fed is already installed, and SuperLinks run with dependency installation off.
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": PUBLISHER,
                    "components": {"serverapp": SERVER_COMPONENT, "clientapp": CLIENT_COMPONENT},
                    "config": dict(DEFAULT_RUN_CONFIG),
                }
            }
        },
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    (folder / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")
    return folder
