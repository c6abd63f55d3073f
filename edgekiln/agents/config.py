"""The agent's configuration: a TOML file, validated on load into frozen dataclasses.

The keys mirror the SageMaker Edge Manager agent's JSON configuration (its key in
brackets), grouped in sections::

    [device]
    name = "pi-0001"                   # (sagemaker_edge_core_device_name)
    fleet = "warehouse"                # (sagemaker_edge_core_device_fleet_name)

    [fleet]
    endpoint = "http://fleet.example:8080"   # the fleet service; "" runs without one
    token_file = "device-token"        # the per-device credential from registration
    heartbeat_period_seconds = 30
    request_timeout_seconds = 10
    retry_max_seconds = 60             # back-off cap while the fleet is unreachable

    [agent]
    socket = "/run/edgekiln/agent.sock"   # gRPC on a Unix socket, mode 0660
    model_dir = "/var/lib/edgekiln/models"  # (the models path) relative LoadModel urls
    model_dirs = ["/var/lib/edgekiln/models"]  # LoadModel loads only from inside these
                                       # (default: model_dir alone)
    state_dir = "/var/lib/edgekiln/agent"   # capture store, outbox, loaded models
    max_models = 8
    max_workers = 8                    # gRPC worker threads

    [capture]
    destination = "Cloud"              # (..._capture_data_destination) Disk | Cloud
    disk_path = "captures"             # (..._capture_data_disk_path) Disk destination
    buffer_size = 1000                 # (..._capture_data_buffer_size) records held
    batch_size = 10                    # (..._capture_data_batch_size) records per object
    push_period_seconds = 4            # (..._capture_data_push_period_seconds)
    base64_embed_limit = 3072          # (..._capture_data_base64_embed_limit) bytes
    periodic_upload = true             # (..._capture_data_periodic_upload)
    periodic_upload_period_seconds = 8 # (..._capture_data_periodic_upload_period_seconds)
    storage_limit_bytes = 104857600    # disk budget of the capture store
    full_policy = "OverwriteOldest"    # or RejectNewData
    ttl_seconds = 604800               # undelivered records older than this expire
    sync_writes = true                 # fsync each capture before CaptureData returns:
                                       # survives power loss (false: survives an agent crash)

    [deploy]                           # over-the-air deployments of signed packages
    trusted_keys = ["keys/release.pub"]  # Ed25519 public keys; without any, every package is refused
    slots_dir = "slots"                # (default: <state_dir>/deploy/slots) installed versions
    staging_dir = "staging"            # (default: <state_dir>/deploy/staging) downloads
    inbox_dir = "inbox"                # (default: <state_dir>/deploy/inbox) local installs
    poll_period_seconds = 30           # GET /v1/agent/deployments (default: the heartbeat period)
    max_package_bytes = 1073741824     # larger packages are refused before they are fetched
    latency_budget_ms = 50             # p50 budget when neither plan nor package sets one
    health_samples = 3                 # validation inputs the health check runs
    health_runs = 20                   # timed runs for the p50 latency
    local_failure_handling = "ROLLBACK_ON_FAILURE"  # for local installs; or DO_NOTHING

    [tuning]                           # TimeKernel: time kernels a tuner sends (runs their code)
    enabled = false                    # off unless set: a kernel library is code from the caller
    max_library_bytes = 16777216       # kernel plus runtime library, refused beyond this
    timeout_seconds = 120              # one kernel's timing; its process is killed after

Every key is checked: an unknown key, a wrong type or a value outside its range raises
:class:`~edgekiln.errors.UserError` naming the file and the key.  Relative paths are
relative to the config file's directory.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from edgekiln.artifact.names import MAX_NAME_LENGTH, is_valid_name
from edgekiln.errors import UserError

DESTINATIONS = ("Disk", "Cloud")
FULL_POLICIES = ("RejectNewData", "OverwriteOldest")
# The capture store needs room for its SQLite database and write-ahead log besides records.
MIN_STORAGE_LIMIT = 1024 * 1024
# TimeKernel's request must fit in one gRPC message (the server's limit is 64 MiB).
MAX_TUNING_LIBRARY_BYTES = 48 * 1024 * 1024


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    fleet: str


@dataclass(frozen=True)
class FleetConfig:
    endpoint: str = ""
    token_file: Path | None = None
    heartbeat_period_seconds: float = 30.0
    request_timeout_seconds: float = 10.0
    retry_max_seconds: float = 60.0

    def token(self) -> str:
        """The device credential, read when needed so that a rotated file is picked up."""
        if self.token_file is None:
            raise UserError("fleet.token_file is not set; register the device and point it at the token")
        try:
            value = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"fleet.token_file {self.token_file} cannot be read: {exc.strerror}") from None
        if not value:
            raise UserError(f"fleet.token_file {self.token_file} is empty")
        return value


@dataclass(frozen=True)
class AgentSection:
    socket: Path
    model_dir: Path
    state_dir: Path
    max_models: int = 8
    max_workers: int = 8
    model_dirs: tuple[Path, ...] = ()

    @property
    def allowed_model_dirs(self) -> tuple[Path, ...]:
        """Where LoadModel may load from: ``model_dirs``, or else ``model_dir`` alone."""
        return self.model_dirs or (self.model_dir,)


@dataclass(frozen=True)
class CaptureConfig:
    destination: str = "Cloud"
    disk_path: Path | None = None
    buffer_size: int = 1000
    batch_size: int = 10
    push_period_seconds: float = 4.0
    base64_embed_limit: int = 3072
    periodic_upload: bool = True
    periodic_upload_period_seconds: float = 8.0
    storage_limit_bytes: int = 100 * 1024 * 1024
    full_policy: str = "OverwriteOldest"
    ttl_seconds: float = 7 * 24 * 3600.0
    sync_writes: bool = True


FAILURE_HANDLING = ("ROLLBACK_ON_FAILURE", "DO_NOTHING")


@dataclass(frozen=True)
class DeployConfig:
    """Deployments; the directories default to ``<state_dir>/deploy/...`` (see :meth:`dirs`)."""

    trusted_keys: tuple[Path, ...] = ()
    slots_dir: Path | None = None
    staging_dir: Path | None = None
    inbox_dir: Path | None = None
    poll_period_seconds: float | None = None
    max_package_bytes: int = 1 << 30
    latency_budget_ms: float | None = None
    health_samples: int = 3
    health_runs: int = 20
    local_failure_handling: str = "ROLLBACK_ON_FAILURE"

    def dirs(self, state_dir: Path) -> tuple[Path, Path, Path]:
        """(slots, staging, inbox) with the defaults filled in."""
        base = Path(state_dir) / "deploy"
        return (
            self.slots_dir or base / "slots",
            self.staging_dir or base / "staging",
            self.inbox_dir or base / "inbox",
        )


@dataclass(frozen=True)
class TuningConfig:
    """TimeKernel (tuning through the agent): loading a library a caller sent is running its
    code, so it is off unless the device's owner turns it on."""

    enabled: bool = False
    max_library_bytes: int = 16 * 1024 * 1024
    timeout_seconds: float = 120.0


@dataclass(frozen=True)
class AgentConfig:
    """The whole agent configuration; build it with :func:`load_config` or :func:`from_dict`."""

    device: DeviceConfig
    fleet: FleetConfig
    agent: AgentSection
    capture: CaptureConfig
    source: str = "<dict>"
    deploy: DeployConfig = DeployConfig()
    tuning: TuningConfig = TuningConfig()


# section -> key -> (kind, required); kinds: str, path, paths (a list), int, float, bool
_SCHEMA: dict[str, dict[str, tuple[str, bool]]] = {
    "device": {"name": ("str", True), "fleet": ("str", True)},
    "fleet": {
        "endpoint": ("str", False),
        "token_file": ("path", False),
        "heartbeat_period_seconds": ("float", False),
        "request_timeout_seconds": ("float", False),
        "retry_max_seconds": ("float", False),
    },
    "agent": {
        "socket": ("path", True),
        "model_dir": ("path", True),
        "state_dir": ("path", True),
        "max_models": ("int", False),
        "max_workers": ("int", False),
        "model_dirs": ("paths", False),
    },
    "capture": {
        "destination": ("str", False),
        "disk_path": ("path", False),
        "buffer_size": ("int", False),
        "batch_size": ("int", False),
        "push_period_seconds": ("float", False),
        "base64_embed_limit": ("int", False),
        "periodic_upload": ("bool", False),
        "periodic_upload_period_seconds": ("float", False),
        "storage_limit_bytes": ("int", False),
        "full_policy": ("str", False),
        "ttl_seconds": ("float", False),
        "sync_writes": ("bool", False),
    },
    "deploy": {
        "trusted_keys": ("paths", False),
        "slots_dir": ("path", False),
        "staging_dir": ("path", False),
        "inbox_dir": ("path", False),
        "poll_period_seconds": ("float", False),
        "max_package_bytes": ("int", False),
        "latency_budget_ms": ("float", False),
        "health_samples": ("int", False),
        "health_runs": ("int", False),
        "local_failure_handling": ("str", False),
    },
    "tuning": {
        "enabled": ("bool", False),
        "max_library_bytes": ("int", False),
        "timeout_seconds": ("float", False),
    },
}
_SECTION_TYPES = {
    "device": DeviceConfig,
    "fleet": FleetConfig,
    "agent": AgentSection,
    "capture": CaptureConfig,
    "deploy": DeployConfig,
    "tuning": TuningConfig,
}


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent TOML file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"agent config {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"agent config {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"agent config {path} is not valid TOML: {exc}") from None
    return from_dict(data, base_dir=path.resolve().parent, source=str(path))


def from_dict(data: Mapping[str, Any], *, base_dir: Path | None = None, source: str = "<dict>") -> AgentConfig:
    """Validate a parsed config; ``base_dir`` anchors relative paths (default: the cwd)."""
    base_dir = base_dir or Path.cwd()
    where = f"agent config {source}"
    unknown = sorted(set(data) - set(_SCHEMA))
    if unknown:
        raise UserError(f"{where}: unknown section [{unknown[0]}]; valid sections: {', '.join(_SCHEMA)}")
    sections: dict[str, Any] = {}
    for section, keys in _SCHEMA.items():
        raw = data.get(section, {})
        if not isinstance(raw, Mapping):
            raise UserError(f"{where}: {section} must be a table ([{section}])")
        bad = sorted(set(raw) - set(keys))
        if bad:
            raise UserError(f"{where}: unknown key {section}.{bad[0]}; valid keys in [{section}]: {', '.join(keys)}")
        values: dict[str, Any] = {}
        for key, (kind, required) in keys.items():
            name = f"{section}.{key}"
            if key not in raw:
                if required:
                    raise UserError(f"{where}: missing key {name}")
                continue
            values[key] = _convert(raw[key], kind, name, where, base_dir)
        sections[section] = _SECTION_TYPES[section](**values)
    config = AgentConfig(source=source, **sections)
    _check(config, where)
    return config


def _convert(value: Any, kind: str, name: str, where: str, base_dir: Path) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{where}: {name} must be true or false, not {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: {name} must be an integer, not {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: {name} must be a number, not {value!r}")
        return float(value)
    if kind == "paths":
        if not isinstance(value, list) or not value:
            raise UserError(f"{where}: {name} must be a non-empty list of paths, not {value!r}")
        return tuple(_convert(v, "path", name, where, base_dir) for v in value)
    if not isinstance(value, str):
        raise UserError(f"{where}: {name} must be a string, not {value!r}")
    if kind == "path":
        if not value:
            raise UserError(f"{where}: {name} must not be empty")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    return value


def _check(config: AgentConfig, where: str) -> None:
    def fail(key: str, what: str) -> None:
        raise UserError(f"{where}: {key} {what}")

    for key, value in (("device.name", config.device.name), ("device.fleet", config.device.fleet)):
        if not is_valid_name(value):
            fail(key, f"must be 1-{MAX_NAME_LENGTH} letters, digits and inner dashes, not {value!r}")
    fleet, capture, agent = config.fleet, config.capture, config.agent
    if fleet.endpoint and not re.match(r"^https?://[^/\s]+(/.*)?$", fleet.endpoint):
        fail("fleet.endpoint", f"must be an http:// or https:// URL, not {fleet.endpoint!r}")
    if fleet.endpoint and fleet.token_file is None:
        fail("fleet.token_file", "is required when fleet.endpoint is set (the device's credential)")
    for key in ("heartbeat_period_seconds", "request_timeout_seconds", "retry_max_seconds"):
        if getattr(fleet, key) <= 0:
            fail(f"fleet.{key}", "must be greater than 0")
    if str(agent.socket).startswith("\0") or len(str(agent.socket).encode()) > 107:
        fail("agent.socket", "must be a file path of at most 107 bytes (a Unix socket path)")
    for key, low, high in (("max_models", 1, 1024), ("max_workers", 2, 256)):
        value = getattr(agent, key)
        if not low <= value <= high:
            fail(f"agent.{key}", f"must be between {low} and {high}, not {value}")
    if capture.destination not in DESTINATIONS:
        fail("capture.destination", f"must be one of {', '.join(DESTINATIONS)}, not {capture.destination!r}")
    if capture.full_policy not in FULL_POLICIES:
        fail("capture.full_policy", f"must be one of {', '.join(FULL_POLICIES)}, not {capture.full_policy!r}")
    if capture.destination == "Disk" and capture.disk_path is None:
        fail("capture.disk_path", "is required when capture.destination is Disk")
    if capture.destination == "Cloud" and not fleet.endpoint:
        fail("fleet.endpoint", "is required when capture.destination is Cloud (uploads go through the fleet)")
    for key in ("buffer_size", "batch_size"):
        if getattr(capture, key) < 1:
            fail(f"capture.{key}", "must be at least 1")
    if capture.base64_embed_limit < 0:
        fail("capture.base64_embed_limit", "must not be negative")
    for key in ("push_period_seconds", "periodic_upload_period_seconds", "ttl_seconds"):
        if getattr(capture, key) <= 0:
            fail(f"capture.{key}", "must be greater than 0")
    _check_deploy(config.deploy, fail)
    if not 1024 <= config.tuning.max_library_bytes <= MAX_TUNING_LIBRARY_BYTES:
        fail("tuning.max_library_bytes", f"must be between 1024 and {MAX_TUNING_LIBRARY_BYTES}")
    if config.tuning.timeout_seconds <= 0:
        fail("tuning.timeout_seconds", "must be greater than 0")
    if capture.storage_limit_bytes < MIN_STORAGE_LIMIT:
        fail(
            "capture.storage_limit_bytes", f"must be at least {MIN_STORAGE_LIMIT} bytes (room for the store's database)"
        )


def _check_deploy(deploy: DeployConfig, fail: Callable[[str, str], None]) -> None:
    if deploy.poll_period_seconds is not None and deploy.poll_period_seconds <= 0:
        fail("deploy.poll_period_seconds", "must be greater than 0")
    if deploy.latency_budget_ms is not None and deploy.latency_budget_ms <= 0:
        fail("deploy.latency_budget_ms", "must be greater than 0")
    if deploy.max_package_bytes < 1024:
        fail("deploy.max_package_bytes", "must be at least 1024")
    for key, low, high in (("health_samples", 1, 64), ("health_runs", 1, 10_000)):
        if not low <= getattr(deploy, key) <= high:
            fail(f"deploy.{key}", f"must be between {low} and {high}, not {getattr(deploy, key)}")
    if deploy.local_failure_handling not in FAILURE_HANDLING:
        fail("deploy.local_failure_handling", f"must be one of {', '.join(FAILURE_HANDLING)}")


def to_dict(config: AgentConfig) -> dict[str, Any]:
    """The config as TOML-ready data (paths as strings, unset keys left out)."""
    out: dict[str, Any] = {}
    for section in _SCHEMA:
        values = dataclasses.asdict(getattr(config, section))
        out[section] = {k: _plain(v) for k, v in values.items() if v is not None and v != ()}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def dump_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Write a two-level mapping as TOML (the subset agent configs use)."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, (list, tuple)):
                text = "[" + ", ".join(_toml_scalar(v) for v in value) + "]"
            else:
                text = _toml_scalar(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)


def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
