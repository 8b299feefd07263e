"""A real PostgreSQL server for tests: Debian's binaries, a cluster in a temporary folder, a loopback port, started
and stopped by the test that needs it (as the ``postgres`` user when the tests run as root: initdb refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: ``pg_config --bindir``, else Debian's versioned folder."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        candidates.append(out)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a throwaway server and yield the URL of an empty database on it: ``postgresql://...@127.0.0.1:PORT/
    pgkit``. Stopped, and its folder removed, on exit."""
    bins = bindir()
    if bins is None:
        raise RuntimeError("PostgreSQL's server binaries are not installed (Debian: apt-get install postgresql)")
    root = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="pgkit-pg-"))
    data = folder / "data"
    port = _free_port()

    def run(*args: str) -> None:
        command = [str(a) for a in args]
        if root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=folder)

    if root:
        shutil.chown(folder, "postgres", "postgres")
    user = "postgres" if root else os.environ.get("USER", "pgkit")
    try:
        run(bins / "initdb", "-D", data, "-A", "trust", "-U", user, "--no-sync")
        run(bins / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-o",
            f"-p {port} -h 127.0.0.1 -k {folder} -c fsync=off", "start")
        try:
            run(bins / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, "pgkit")
            yield f"postgresql://{user}@127.0.0.1:{port}/pgkit"
        finally:
            run(bins / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
