"""The models the agent has loaded: load, unload, predict, and the list kept across restarts.

Each loaded model has its own worker process and lock, so that Predict calls on different
models run at the same time while calls on one model take turns (the TVM executor of one
model is not shared between threads).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekiln.agents.durable import write_durable
from edgekiln.agents.model_worker import ModelProcess, WorkerError, load_error
from edgekiln.agents.reporter import ModelMetrics, ModelReport, model_report
from edgekiln.artifact.names import check_name
from edgekiln.errors import UserError

log = logging.getLogger(__name__)


class ModelLoadError(UserError):
    """LoadModel failed; ``code`` is the gRPC status code name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class LoadedModel:
    name: str
    url: str
    model: Any  # a ModelProcess (or, with an injected loader, anything with its methods)
    loaded_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    metrics: ModelMetrics = field(default_factory=ModelMetrics)
    # False for models that deployments manage: they are reloaded from their slots, not models.json.
    persist: bool = True
    # Set once another version took this name (put): a Predict that got this entry moves on to that one.
    retired: bool = False

    @property
    def version(self) -> str:
        return str(self.model.manifest.model.version)


class ModelRegistry:
    """The models the agent has loaded; the list survives restarts (``models.json``).

    Each model runs in a worker process of its own (:mod:`edgekiln.agents.model_worker`)
    under ``work_dir``; ``factory`` (``module:callable``) replaces ``runtime.Model`` inside
    the workers, and ``loader`` replaces the workers with an in-process loader (both for
    tests). LoadModel takes artifacts only from inside ``model_dirs`` (default: ``model_dir``).
    """

    def __init__(
        self,
        model_dir: Path,
        state_file: Path | None,
        *,
        max_models: int = 8,
        clock: Callable[[], float] = time.time,
        loader: Callable[[str], Any] | None = None,
        work_dir: Path | None = None,
        model_dirs: Sequence[Path] = (),
        factory: str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model_dirs = tuple(Path(d) for d in model_dirs) or (self.model_dir,)
        self.state_file = state_file
        self.work_dir = Path(work_dir) if work_dir else None
        self.max_models = max_models
        self.clock = clock
        self._loader = loader
        self._factory = factory
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._models: dict[str, LoadedModel] = {}
        self._loading: set[str] = set()
        self._samples: dict[str, ModelMetrics] = {}
        self.running = 0
        self.max_running = 0

    def resolve(self, url: str) -> Path:
        """The artifact ``url`` names, if it lies inside one of the allowed model directories."""
        path = Path(url).expanduser()
        path = path if path.is_absolute() else self.model_dir / path
        real = Path(os.path.realpath(path))  # symlinks and ".." resolved before the check
        for allowed in self.model_dirs:
            if real.is_relative_to(os.path.realpath(allowed)):
                return path
        raise ModelLoadError(
            "INVALID_ARGUMENT",
            f"{url} is outside the agent's model directories "
            f"({', '.join(str(d) for d in self.model_dirs)}; agent.model_dirs)",
        )

    def load(self, name: str, url: str) -> LoadedModel:
        try:
            check_name(name, "model name")
        except UserError as exc:
            raise ModelLoadError("INVALID_ARGUMENT", exc.one_line()) from None
        if not url or "\0" in url:
            raise ModelLoadError("INVALID_ARGUMENT", "url must be the artifact's path")
        path = self.resolve(url)
        with self._lock:
            if name in self._models or name in self._loading:
                raise ModelLoadError("ALREADY_EXISTS", f"a model named {name!r} is already loaded")
            if len(self._models) + len(self._loading) >= self.max_models:
                raise ModelLoadError(
                    "RESOURCE_EXHAUSTED", f"{self.max_models} models are loaded (agent.max_models); unload one first"
                )
            self._loading.add(name)
        try:
            try:
                found = path.exists()
            except OSError as exc:  # a name too long for the file system, say
                raise ModelLoadError(
                    "INVALID_ARGUMENT", f"{str(path)[:200]} cannot be a file: {exc.strerror}"
                ) from None
            if not found:
                raise ModelLoadError("NOT_FOUND", f"no model artifact at {str(path)[:200]}")
            model = self._open(name, path)
            entry = LoadedModel(name=name, url=str(path), model=model, loaded_at=self.clock())
            with self._lock:
                entry.metrics = self._samples.pop(name, entry.metrics)
                self._models[name] = entry
            self._save()
            return entry
        finally:
            with self._lock:
                self._loading.discard(name)

    def _open(self, name: str, path: Path) -> Any:
        if self._loader is None:
            if self.work_dir is None:
                raise ModelLoadError("FAILED_PRECONDITION", "this registry has no work directory for model workers")
            try:
                return ModelProcess(str(path), self.work_dir / f"{name}-{uuid.uuid4().hex[:8]}", factory=self._factory)
            except WorkerError as exc:
                raise ModelLoadError(exc.code, exc.message) from None
            except OSError as exc:
                raise ModelLoadError("UNAVAILABLE", f"cannot start a model worker: {exc.strerror}") from None
        try:
            return self._loader(str(path))
        except Exception as exc:  # noqa: BLE001 - every load failure is a status, never UNKNOWN
            code, message = load_error(exc, str(path))
            raise ModelLoadError(code, message) from None

    def open_model(self, name: str, path: Path) -> Any:
        """A model worker for the artifact at ``path`` that is not (yet) registered: a
        deployment's health check runs on it while Predict still answers from the old one."""
        return self._open(name, Path(path))

    def put(self, name: str, url: str, model: Any, *, persist: bool = False) -> LoadedModel:
        """Serve ``model`` (from :meth:`open_model`) as ``name``, replacing the one loaded under
        that name, in one step under the lock: every Predict is answered, by the old model
        until the swap and by the new one after it. The old worker ends once its running
        Predict returned. ``max_models`` is not checked for a replacement."""
        entry = LoadedModel(name=name, url=url, model=model, loaded_at=self.clock(), persist=persist)
        with self._lock:
            old = self._models.get(name)
            if old is None and len(self._models) + len(self._loading) >= self.max_models:
                raise ModelLoadError("RESOURCE_EXHAUSTED", f"{self.max_models} models are loaded (agent.max_models)")
            if old is not None:
                entry.metrics = old.metrics
                old.retired = True
            self._models[name] = entry
        if old is not None:
            with old.lock:
                _close(old.model)
        self._save()
        return entry

    def unload(self, name: str) -> None:
        with self._lock:
            entry = self._models.pop(name, None)
            if entry is None:
                raise ModelLoadError("NOT_FOUND", f"no model named {name[:80]!r} is loaded")
        with entry.lock:  # let a running Predict finish before the worker goes
            _close(entry.model)
        self._save()

    def close(self) -> None:
        """End every model's worker (the agent stops; the list in models.json stays)."""
        with self._lock:
            entries = list(self._models.values())
            self._models.clear()
        for entry in entries:
            with entry.lock:
                _close(entry.model)

    def get(self, name: str) -> LoadedModel | None:
        with self._lock:
            return self._models.get(name)

    def list(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.name)

    def note_sample(self, name: str, now: float) -> None:
        with self._lock:
            entry = self._models.get(name)
            metrics = entry.metrics if entry else self._samples.setdefault(name, ModelMetrics())
        metrics.sample(now)

    def snapshots(self, now: float) -> list[ModelReport]:
        """Per-model metrics for heartbeats (models captured for but not loaded included)."""
        with self._lock:
            loaded = [(m.name, m.version, m.metrics) for m in self._models.values()]
            sampled = [(n, "", m) for n, m in self._samples.items() if n not in self._models]
        return [model_report(n, v, m.snapshot(), now) for n, v, m in sorted(loaded + sampled, key=lambda t: t[0])]

    def predict(self, entry: LoadedModel, arrays: list[Any]) -> list[Any]:
        with entry.lock:
            if entry.retired:  # replaced while this call waited: the new version answers
                current = self.get(entry.name)
                if current is not None and current is not entry:
                    return self.predict(current, arrays)
            with self._lock:
                self.running += 1
                self.max_running = max(self.max_running, self.running)
            start = time.perf_counter()
            ok = False
            try:
                outputs = entry.model.run(arrays)
                ok = True
                return outputs
            finally:
                entry.metrics.record(time.perf_counter() - start, ok, self.clock())
                with self._lock:
                    self.running -= 1

    # -- persistence of the loaded list ---------------------------------------------
    def _save(self) -> None:
        """Write the loaded list: one writer at a time (the last to write saw every change
        before it), durably."""
        if self.state_file is None:
            return
        with self._save_lock:
            with self._lock:
                models = sorted((m for m in self._models.values() if m.persist), key=lambda m: m.name)
                data = [{"name": m.name, "url": m.url} for m in models]
            write_durable(self.state_file, json.dumps({"models": data}, indent=1).encode())

    def saved(self) -> list[dict[str, str]]:
        if self.state_file is None or not self.state_file.is_file():
            return []
        try:
            data = json.loads(self.state_file.read_text())
            return [{"name": str(m["name"]), "url": str(m["url"])} for m in data.get("models", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring unreadable %s", self.state_file)
            return []


def _close(model: Any) -> None:
    close = getattr(model, "close", None)
    if close is not None:
        close()
