"""Real servers for the fleet tests: SeaweedFS (S3), PostgreSQL, the fleet service process."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def _pg_bin(name: str) -> str | None:
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).is_file():
            return str(root / name)
    return shutil.which(name)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of Debian's on a free loopback port, in a temp dir; its URL.

    PostgreSQL refuses to run as root, so as root the server runs as the ``postgres``
    user (Debian's package creates it) through runuser.
    """
    from devtools.servers import free_ports

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql; make setup installs it)")
    root = Path(tempfile.mkdtemp(prefix="ek-pg-", dir="/tmp"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    port = free_ports(1)[0]
    run = lambda argv: subprocess.run(prefix + argv, capture_output=True, text=True, timeout=120)  # noqa: E731
    result = run([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
    if result.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {result.stderr.strip()[-300:]}")
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off"
    result = run([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "pg.log"), "-w", "-t", "60", "start"])
    if result.returncode != 0:
        log = (root / "pg.log").read_text() if (root / "pg.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {result.stderr.strip()[-200:]} {log[-300:]}")
    try:
        created = run(
            [
                "createdb" if not _pg_bin("createdb") else _pg_bin("createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "fleet",
            ]
        )
        assert created.returncode == 0, created.stderr
        yield f"postgresql://postgres@127.0.0.1:{port}/fleet"
    finally:
        run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)
