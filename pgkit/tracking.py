"""MLflow tracking that many runs can share and that a server outage cannot stop.

- **Stores are absolute.** A relative ``sqlite:///mlflow.db`` is made absolute when a run starts, so the
  checkpoint's config names the store it used and ``--resume`` finds it from any working directory.
- **A fresh sqlite store under contention.** MLflow creates its schema when a client first opens a store; two
  processes doing so at once collide (``table ... already exists``). pgkit opens stores holding an exclusive
  ``flock`` on ``<store>.lock``, so the schema is created once; "database is locked" errors are retried.
- **A server that goes away.** Every write goes through :class:`ResilientClient`. MLflow's own client retries for
  minutes (7 retries, 120 s timeouts); pgkit asks it for one try with a short timeout, and when the server does not
  answer, training goes on: the write is queued in ``<output_dir>/mlflow-pending/`` (on disk, artifacts copied), the
  run says so once, and each later write first tries to send the queue (at most every
  :data:`RETRY_SECONDS`). When the server is back, everything arrives in order. If it never comes back, the run
  finishes, says once what was kept, and ``pgkit sync <output_dir>`` sends it later.

Written by hand because MLflow has no offline queue (its async logging drops data when the server stays away, and
neither it nor Lightning's ``MLFlowLogger`` survives a failed write).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger

from pgkit import tracking_queue as queue
from pgkit.errors import ConfigError, UserError

#: Seconds between attempts to reach a server that did not answer.
RETRY_SECONDS = 15.0
#: Seconds a store that answered the start-up check may take to create the run.
START_SECONDS = 30.0
#: Seconds a busy sqlite store is retried before the write is queued like an outage.
BUSY_SECONDS = 120.0
#: MLflow's HTTP settings during a run: one try, a short timeout (the queue does the retrying).
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PENDING_DIR = "mlflow-pending"


def absolute_tracking_uri(uri: str) -> str:
    """``sqlite:///relative.db`` made absolute against the working directory; other URIs as given."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri.removeprefix("sqlite:///")
        if path and path != ":memory:" and "?" not in path:
            return "sqlite:///" + str(Path(path).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None
    return None


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, as bad input, when an HTTP tracking server does not answer its health check (MLflow's own client
    would retry for minutes, after the Trainer is built) or a sqlite store's directory does not exist."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout) as response:
                if response.status == 200:
                    return
                problem = f"HTTP {response.status}"
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections, malformed URLs
            problem = str(getattr(exc, "reason", exc))
        raise ConfigError(
            f"config error: logger.tracking_uri: no MLflow tracking server answers at {uri} ({problem}); start one "
            f"with `mlflow server --host 127.0.0.1 --port PORT`, or use sqlite:///mlflow.db (got {uri!r})"
        )
    db = sqlite_path(uri)
    if db is not None and not db.parent.exists():
        raise ConfigError(
            f"config error: logger.tracking_uri: directory {str(db.parent)!r} of the sqlite store does not exist "
            f"(got {uri!r})"
        )


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[Any]:
    """Hold an exclusive lock on a sqlite store (a file beside it) while this process opens it, or takes its turn
    in it; nothing for other stores. Yields a handle whose ``release()`` ends the hold early."""

    class Held:
        fd: int | None = None

        def release(self) -> None:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None

    held = Held()
    db = sqlite_path(uri)
    try:
        if db is not None:
            held.fd = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(held.fd, fcntl.LOCK_EX)
        yield held
    finally:
        held.release()


@contextlib.contextmanager
def tracking_settings() -> Iterator[None]:
    """MLflow's HTTP settings for a run (unless the user set their own), and its store's error logging quiet: pgkit
    reports failed writes itself, in one line."""
    saved = {name: os.environ.get(name) for name in HTTP_SETTINGS}
    for name, value in HTTP_SETTINGS.items():
        os.environ.setdefault(name, value)
    quiet = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "mlflow.utils.rest_utils",
                                                  "mlflow.store.tracking.sqlalchemy_store", "urllib3.connectionpool")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


def _busy(exc: BaseException) -> bool:
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text or "TEMPORARILY_UNAVAILABLE" in text


def _unreachable(exc: BaseException) -> bool:
    """Whether a failed call means the store is away (retry later), not that the call itself was wrong."""
    import requests

    if isinstance(exc, requests.exceptions.RequestException | OSError | ConnectionError | TimeoutError):
        return True
    text = str(exc)
    markers = ("failed with exception", "Max retries exceeded", "Connection refused", "Connection aborted",
               "timed out", "Bad Gateway", "Service Unavailable", "Gateway Time", "disk is full",
               "unable to open database", "database is locked", "disk I/O error")
    if any(marker in text for marker in markers):
        return True
    status = getattr(exc, "get_http_status_code", lambda: None)()
    return isinstance(status, int) and status >= 500 and "RESOURCE_DOES_NOT_EXIST" not in text


def retry_busy(call, *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, retried while a sqlite store answers "database is locked"."""
    deadline = time.monotonic() + BUSY_SECONDS
    delay = 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not _busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class ResilientClient:
    """An ``MlflowClient`` whose writes never fail the run: a write the store does not take (server away, disk
    full) is queued on disk and sent, in order, as soon as the store answers again. Reads pass through (retried
    while a sqlite store is busy)."""

    #: The client's methods that write, and how each is queued.
    WRITES = ("log_batch", "set_terminated", "set_tag", "log_text", "log_table", "log_artifact", "log_artifacts")

    def __init__(self, client: Any, uri: str, folder: Path) -> None:
        self.client, self.uri, self.folder = client, uri, Path(folder)
        self.pending: list[dict[str, Any]] = []
        self.unsaved = False  # a queued write could not be written to disk either
        self.next_try = 0.0
        self.reported = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "client" not in self.__dict__:  # copy and pickle probe dunders before init
            raise AttributeError(name)
        attr = getattr(self.client, name)
        if name in self.WRITES:
            return lambda *args, **kwargs: self._write(name, *args, **kwargs)
        if callable(attr):
            return lambda *args, **kwargs: retry_busy(attr, *args, **kwargs)
        return attr

    # ------------------------------------------------------------------------------------------------ writing
    def register_model(self, run_id: str, name: str, artifact_path: str) -> None:
        """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``name`` (queued like any write)."""
        self._write("register_model", run_id, name, artifact_path)

    def _write(self, op: str, *args: Any, **kwargs: Any) -> None:
        if self.pending and time.monotonic() < self.next_try:
            self._queue(op, args, kwargs)
            return
        try:
            self.flush()
            if not self.pending:
                retry_busy(self._call, op, *args, **kwargs)
                return
        except Exception as exc:
            if not _unreachable(exc):
                raise
            self._outage(exc)
        self._queue(op, args, kwargs)

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        if op == "register_model":
            from mlflow.exceptions import MlflowException

            run_id, name, artifact_path = args
            with contextlib.suppress(MlflowException):  # already registered: add a version
                self.client.create_registered_model(name)
            source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
            return self.client.create_model_version(name, source, run_id=run_id)
        return getattr(self.client, op)(*args, **kwargs)

    def _outage(self, exc: BaseException) -> None:
        self.next_try = time.monotonic() + RETRY_SECONDS
        if not self.reported:
            self.reported = True
            reason = " ".join(str(exc).split())[:160]
            print(f"pgkit: MLflow at {self.uri} does not answer ({reason}); training goes on, and what it would log "
                  f"is kept in {self.folder} and sent when it answers again", file=sys.stderr)

    def flush(self) -> None:
        """Send the queued writes in order (raises on the first one the store still refuses)."""
        while self.pending:
            entry = self.pending[0]
            op, args, kwargs = queue.decode(entry, self.folder)
            retry_busy(self._call, op, *args, **kwargs)
            self.pending.pop(0)
            if not self.pending:
                self._clear()
                print(f"pgkit: MLflow at {self.uri} answers again; the queued writes were sent", file=sys.stderr)
                self.reported = False
            else:
                self._save()

    def finish(self, output_dir: Path) -> None:
        """At the end of a run: one last try, then say what is kept locally and how to send it."""
        if not self.pending:
            return
        with contextlib.suppress(Exception):
            self.flush()
        if not self.pending:
            return
        keys = sorted({m[0] for e in self.pending if e["op"] == "log_batch" for m in e.get("metrics", [])})
        values = sum(len(e.get("metrics", [])) for e in self.pending if e["op"] == "log_batch")
        shown = ", ".join(keys[:20]) + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")
        where = ("in memory only (the disk refused them too), lost when this process ends" if self.unsaved
                 else f"in {self.folder}")
        print(f"pgkit: MLflow at {self.uri} did not come back: {values} values of {len(keys)} metrics "
              f"({shown or 'none'}) and "
              f"{len(self.pending)} writes in all are kept {where}; send them with `pgkit sync {output_dir}` once "
              "it answers", file=sys.stderr)

    # ------------------------------------------------------------------------------------------------ the queue
    def _queue(self, op: str, args: tuple, kwargs: dict) -> None:
        try:
            entry = queue.encode(op, args, kwargs, self.folder, self.uri)
        except OSError:
            self.unsaved = True
            entry = queue.encode(op, args, kwargs, None, self.uri)
        self.pending.append(entry)
        self._save()

    def _save(self) -> None:
        try:
            queue.write(self.folder, self.pending)
        except OSError:
            self.unsaved = True

    def _clear(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self.folder)


def sync_pending(output_dir: str | Path, uri: str | None = None) -> int:
    """``pgkit sync``: send what a run kept in ``<output_dir>/mlflow-pending`` to its store (or ``uri``); returns
    the number of writes sent. Only a queue this user's pgkit wrote is read (:mod:`pgkit.tracking_queue`), and not
    while the run that owns it is alive; raises the store's error when it still does not answer."""
    from mlflow import MlflowClient

    from pgkit.outputs import claim, release_all

    holder = claim(Path(output_dir))
    if holder is not None:
        raise UserError(f"sync error: {output_dir} is in use by a live run ({holder}); it sends its queue itself "
                        "when the store answers")
    try:
        folder = Path(output_dir) / PENDING_DIR
        if not (folder / queue.OPS_FILE).exists():
            return 0
        entries = queue.read(folder)
        if not entries:
            return 0
        target = uri or entries[0]["uri"]
        with tracking_settings(), store_lock(target):
            client = ResilientClient(MlflowClient(target), target, folder)
        client.pending = entries
        client.flush()
        return len(entries)
    finally:
        release_all()


class Logger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` on a :class:`ResilientClient`, ending its run without reading it first (a run
    must end even while the server is away). :meth:`start` creates the run; until then the store is only open."""

    resilient: ResilientClient | None = None

    def start(self, output_dir: Path) -> None:
        """Create (or find) the experiment and the run, under :func:`store_lock`, and route every write through
        a :class:`ResilientClient` queueing into ``output_dir``."""
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                with store_lock(self._tracking_uri):
                    retry_busy(lambda: self.experiment)
                break
            except Exception as exc:  # the store answered the health check moments ago: give it a little time
                if not _unreachable(exc) or time.monotonic() > deadline:
                    reason = " ".join(str(exc).split())[:200]
                    raise ConfigError(f"config error: logger.tracking_uri: the MLflow store at {self._tracking_uri} "
                                      f"stopped answering before the run could start ({reason})") from None
                time.sleep(1.0)
        self.resilient = ResilientClient(self._mlflow_client, self._tracking_uri, output_dir / PENDING_DIR)
        self._mlflow_client = self.resilient

    def discard(self) -> None:
        """Delete the run :meth:`start` made (the job it belongs to never started); best effort."""
        with contextlib.suppress(Exception):
            self._mlflow_client.delete_run(self.run_id)
        self._initialized = False  # nothing left to finalize

    def finalize(self, status: str = "success") -> None:
        if not self._initialized:
            return
        status = {"success": "FINISHED", "failed": "FAILED", "finished": "FINISHED"}.get(status, status)
        self.experiment.set_terminated(self.run_id, status)


def open_logger(uri: str, experiment: str, run_name: str, run_id: str | None, tags: dict[str, str]) -> Logger:
    """An MLflow logger on ``uri``, continuing ``run_id`` when it is there. The store is opened (its schema made)
    under :func:`store_lock`, so runs that start together on a fresh store do not collide; the run itself is made
    by :meth:`Logger.start`, once every rank is ready."""
    with store_lock(uri):
        if run_id is not None:
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException

            try:
                retry_busy(MlflowClient(uri).get_run, run_id)
            except MlflowException as exc:
                if "RESOURCE_DOES_NOT_EXIST" not in str(exc) and "not found" not in str(exc).lower():
                    raise
                print(f"pgkit: MLflow run {run_id} of the checkpoint is not in {uri}; the resumed run is logged as "
                      "a new MLflow run", file=sys.stderr)
                run_id = None
        return retry_busy(Logger, experiment_name=experiment, run_name=run_name, tracking_uri=uri, run_id=run_id,
                          log_model=False, tags=tags)


__all__ = ["Logger", "ResilientClient", "absolute_tracking_uri", "check_tracking_uri", "open_logger",
           "retry_busy", "store_lock", "sync_pending", "tracking_settings"]
