"""How the studio runs as a service: ``streamlit run`` on ``services/ui/app.py``, headless.

``articleforge ui`` and ``articleforge up`` (and the `ui` compose service, through the first)
start the same command, so the flags live here once.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_PORT = 8501  # Streamlit's own default, and the compose file's
HEALTH_PATH = "/_stcore/health"  # answers "ok" once the server is up


def streamlit_command(host: str, port: int) -> list[str]:
    """The argv that serves the studio on ``host:port``, set up for a server, not a laptop."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        host,
        "--server.port",
        str(port),
        # No browser to open and no "enter your e-mail" prompt on the console.
        "--server.headless",
        "true",
        # Streamlit's telemetry would call out to the internet.
        "--browser.gatherUsageStats",
        "false",
        # The code does not change under a running service; watching it only costs inotify
        # handles (and a reload mid-request when a deploy swaps files).
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        # An uncaught exception shows a generic message in the browser, never a traceback (the
        # server log keeps the details).
        "--client.showErrorDetails",
        "none",
        # Only the options the app sets itself in the menu, no developer entries.
        "--client.toolbarMode",
        "minimal",
    ]
