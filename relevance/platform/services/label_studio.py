"""Label Studio (https://labelstud.io) on loopback, the annotation tool `relevance select` writes projects for and
`relevance import-labels` reads exports from.

``make label-studio-env`` installs label-studio 1.23.2 into a venv of its own, ``.venv-labelstudio`` (about 1 GB:
a Django app whose pins, its SDK's among them, would downgrade the project's numpy and PyJWT). What it takes to run
it unattended, found in its 1.23.2 sources (label_studio/server.py, core/settings/base.py):

- SQLite and the media under one data directory, ``LABEL_STUDIO_BASE_DATA_DIR``; the first start applies the
  migrations (about a minute), a restart on the same directory does not (seconds);
- the admin user from ``LABEL_STUDIO_USERNAME`` and ``LABEL_STUDIO_PASSWORD``, created on start, with
  ``LABEL_STUDIO_USER_TOKEN`` as its API token. That is a legacy token (``Authorization: Token …``), which 1.23
  refuses (401, "legacy token authentication has been disabled for this organization") unless the organization
  is created with ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN`` set;
- a clean environment: its settings fall back to unprefixed names (``USERNAME``, ``PASSWORD``, ``HOST``, ``PORT``,
  ``DEBUG``, ``DATABASE_NAME``), which a developer's shell may well hold for something else;
- no calls out: no check of PyPI for a newer version, no usage analytics (sent per API call otherwise);
- sign-up only through the organization's invite link (what an admin hands to annotators), not open to anyone
  who reaches the port.

It serves with Django's runserver, one process: fine on loopback for a team's trial or a test, not in a cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from relevance.common.processes import LoopbackProcess, free_port, http_ready

ENV_VARIABLE = "RELEVANCE_LABEL_STUDIO_ENV"
DEFAULT_ENV = ".venv-labelstudio"
VERSION = "1.23.2"


class LabelStudioUnavailable(ValueError):
    """No usable Label Studio install (a setup error a user fixes, reported in one line)."""


def label_studio_install(env: str | Path | None = None) -> Path:
    """The ``label-studio`` executable of the venv ``env``, else $RELEVANCE_LABEL_STUDIO_ENV, else
    ``.venv-labelstudio`` in the working directory."""
    path = Path(env or os.environ.get(ENV_VARIABLE) or DEFAULT_ENV).resolve()
    executable = path / "bin" / "label-studio"
    if not executable.exists():
        raise LabelStudioUnavailable(f"no Label Studio at {executable}: `make label-studio-env` installs "
                                     f"label-studio {VERSION} into {DEFAULT_ENV}, or set {ENV_VARIABLE} to a venv "
                                     "that has it")
    return executable


@dataclass
class LabelStudio:
    """A running Label Studio: its URL, the admin's credentials and API token, where its data lives, and the
    process (stop and start it again to restart on the same data; ``process.startup_seconds`` is the last start)."""

    url: str
    username: str
    password: str
    token: str
    data_dir: Path
    process: LoopbackProcess

    @property
    def headers(self) -> dict[str, str]:
        """What an API call as the admin carries."""
        return {"Authorization": f"Token {self.token}"}


def health_check(url: str):
    """Ready when ``url``/health answers Label Studio's own body: Label Studio moves to the next port, silently,
    when its port is taken, so a 200 from whatever else holds the port must not count."""
    return http_ready(f"{url}/health", body=lambda content: json.loads(content) == {"status": "UP"})


def server_environment(executable: Path, data_dir: Path, username: str, password: str, token: str) -> dict[str, str]:
    return {"PATH": f"{executable.parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(data_dir)),
            "LANG": "C.UTF-8", "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": username, "LABEL_STUDIO_PASSWORD": password,
            "LABEL_STUDIO_USER_TOKEN": token, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_COLLECT_ANALYTICS": "false"}


def credentials(data_dir: Path, username: str | None, password: str | None,
                token: str | None) -> tuple[str, str, str]:
    """The admin's: as given, else $LABEL_STUDIO_USERNAME / _PASSWORD / _USER_TOKEN, else those of the last start
    on ``data_dir`` (admin.json, beside the database), else made up and written there. Label Studio sets them when
    it creates the user, on the first start, and never after: a restart with new ones would yield a token the
    server refuses."""
    stored_path = data_dir / "admin.json"
    stored = json.loads(stored_path.read_text()) if stored_path.exists() else {}
    username = username or os.environ.get("LABEL_STUDIO_USERNAME") or stored.get("username") or "admin@example.com"
    password = password or os.environ.get("LABEL_STUDIO_PASSWORD") or stored.get("password") \
        or secrets.token_urlsafe(16)
    token = token or os.environ.get("LABEL_STUDIO_USER_TOKEN") or stored.get("token") or secrets.token_hex(20)
    if "@" not in username:
        raise ValueError(f"the Label Studio user must be an email address (its login form asks for one), got "
                         f"{username!r}")
    # Label Studio keeps a token of 5 characters or fewer unapplied (printing so) and the key column holds 40.
    if not 6 <= len(token) <= 40:
        raise ValueError(f"the Label Studio API token must be 6 to 40 characters, got {len(token)}")
    if not stored:
        stored_path.touch(mode=0o600)
        stored_path.write_text(json.dumps({"username": username, "password": password, "token": token}))
    return username, password, token


def check_admin(studio: LabelStudio) -> None:
    """The token authenticates as the admin (it does not when the data directory's admin was made with others)."""
    request = urllib.request.Request(f"{studio.url}/api/current-user/whoami", headers=studio.headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            email = json.loads(response.read()).get("email")
    except urllib.error.HTTPError as error:
        raise ValueError(f"Label Studio at {studio.url} refuses the API token ({error.code}): {studio.data_dir} "
                         "holds an admin created with other credentials, and Label Studio applies "
                         "LABEL_STUDIO_USER_TOKEN only when it creates the user; start with those (admin.json "
                         "there) or on a new work directory") from None
    if (email or "").lower() != studio.username.lower():
        raise ValueError(f"Label Studio at {studio.url}: the API token is {email!r}'s, not {studio.username!r}'s")


@contextmanager
def label_studio_server(work_dir: str | Path, username: str | None = None, password: str | None = None,
                        token: str | None = None, port: int | None = None, env: str | Path | None = None,
                        timeout: float = 300.0):
    """Label Studio on 127.0.0.1:``port`` (a free one by default) with its SQLite database and media in
    ``work_dir``/data and its output in ``work_dir``/label-studio.log, yielded as a :class:`LabelStudio` once
    its health endpoint answers and its admin's token is accepted, stopped on exit. The deadline covers the first
    start's migrations. A later start on the same ``work_dir`` finds its data and admin again."""
    executable = label_studio_install(env)
    work_dir = Path(work_dir).resolve()
    data_dir = work_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    username, password, token = credentials(data_dir, username, password, token)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [executable, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
    environment = server_environment(executable, data_dir, username, password, token)
    with LoopbackProcess("label-studio", command, work_dir / "label-studio.log", health_check(url),
                         env=environment, timeout=timeout, clean_env=True) as process:
        studio = LabelStudio(url, username, password, token, data_dir, process)
        check_admin(studio)
        yield studio
