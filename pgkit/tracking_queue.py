"""The on-disk queue of MLflow writes that a run kept while its store was away (:mod:`pgkit.tracking`).

``<output_dir>/mlflow-pending/ops.jsonl`` holds one JSON line per write, after a header line with the queue's
signature under this user's key (:mod:`pgkit.trust`); the files and folders a write logs are copied into ``files/``
next to it (they may have been temporary). ``pgkit sync`` sends only a queue this user's pgkit wrote, and of that
only the writes pgkit queues, with the arguments each takes, and files inside ``files/``: a queue file from
elsewhere can neither call other client methods nor upload other files.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pgkit.errors import UserError
from pgkit.trust import sign, verify

OPS_FILE = "ops.jsonl"
#: The writes that are queued, and the arguments each is called with (the first is always the run id).
OP_FIELDS: dict[str, tuple[str, ...]] = {
    "log_batch": ("run_id", "metrics", "params", "tags"),
    "set_terminated": ("run_id", "status", "end_time"),
    "set_tag": ("run_id", "key", "value"),
    "log_text": ("run_id", "text", "artifact_file"),
    "log_table": ("run_id", "data", "artifact_file"),
    "log_artifact": ("run_id", "local_path", "artifact_path"),
    "log_artifacts": ("run_id", "local_dir", "artifact_path"),
    "register_model": ("run_id", "name", "artifact_path"),
}
_FILE_KEYS = {"log_artifact": "local_path", "log_artifacts": "local_dir"}


def encode(op: str, args: tuple, kwargs: dict, folder: Path | None, uri: str) -> dict[str, Any]:
    """A write as JSON data; the files and folders it logs are copied into ``folder/files`` (``folder`` None: the
    disk refused, and the original path is kept, in memory only)."""
    names = OP_FIELDS[op]
    values = dict(zip(names, args, strict=False))
    values.update({k: v for k, v in kwargs.items() if k in names})
    entry: dict[str, Any] = {"op": op, "uri": uri, **{k: v for k, v in values.items() if v is not None}}
    if op == "log_batch":
        entry["metrics"] = [[m.key, m.value, m.timestamp, m.step] for m in values.get("metrics") or []]
        entry["params"] = [[p.key, p.value] for p in values.get("params") or []]
        entry["tags"] = [[t.key, t.value] for t in values.get("tags") or []]
    elif op == "log_table":
        data = values["data"]
        entry["data"] = data.to_dict(orient="list") if hasattr(data, "to_dict") else data
    elif op in _FILE_KEYS:
        key = _FILE_KEYS[op]
        source = Path(values[key])
        if folder is None:
            entry[key] = str(source)
            entry["in_memory"] = True
        else:
            target = folder / "files" / f"{time.time_ns()}-{source.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
            entry[key] = str(target.relative_to(folder))
    return entry


def decode(entry: Any, folder: Path) -> tuple[str, tuple, dict[str, Any]]:
    """``(client method, args, kwargs)`` of a queued write; ``ValueError`` for anything pgkit does not queue."""
    from mlflow.entities import Metric, Param, RunTag

    if not isinstance(entry, dict) or entry.get("op") not in OP_FIELDS:
        raise ValueError(f"not a queued write: {str(entry)[:80]}")
    op = entry["op"]
    fields = {k: v for k, v in entry.items() if k in OP_FIELDS[op]}
    if not isinstance(fields.get("run_id"), str):
        raise ValueError(f"{op} without a run id")
    run_id = fields.pop("run_id")
    if op == "log_batch":
        return op, (run_id,), {
            "metrics": [Metric(str(k), float(v), int(t), int(s)) for k, v, t, s in fields.get("metrics", [])],
            "params": [Param(str(k), str(v)) for k, v in fields.get("params", [])],
            "tags": [RunTag(str(k), str(v)) for k, v in fields.get("tags", [])]}
    if op in _FILE_KEYS:
        path = Path(str(fields[_FILE_KEYS[op]]))
        if not entry.get("in_memory"):  # from disk: a file of the queue's own, nowhere else
            files = (folder / "files").resolve()
            path = (folder / path).resolve()
            if path.parent != files:
                raise ValueError(f"{op} of a file outside the queue: {fields[_FILE_KEYS[op]]!r}")
        return op, (run_id, str(path)), {"artifact_path": fields.get("artifact_path")}
    if op == "register_model":
        return op, (run_id, str(fields["name"]), str(fields["artifact_path"])), {}
    return op, (run_id,), fields


def write(folder: Path, entries: list[dict[str, Any]]) -> None:
    """Write the queue, signed, to a temporary file renamed into place (``OSError`` when the disk refuses)."""
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(e) + "\n" for e in entries if not e.get("in_memory"))
    header = json.dumps({"pgkit_mlflow_queue": 1, "signature": sign(body.encode())}) + "\n"
    tmp = folder / (OPS_FILE + ".tmp")
    try:
        tmp.write_text(header + body)
        os.replace(tmp, folder / OPS_FILE)
    finally:
        tmp.unlink(missing_ok=True)


def read(folder: Path) -> list[dict[str, Any]]:
    """The queued writes, if this user's pgkit wrote the queue; :class:`UserError` otherwise."""
    path = folder / OPS_FILE
    try:
        header, _, body = path.read_text().partition("\n")
        signature = json.loads(header).get("signature")
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        raise UserError(f"sync error: {path} is not a queue pgkit wrote") from None
    if not verify(body.encode(), signature):
        raise UserError(f"sync error: {path} was not written by you (its signature does not match your key); "
                        "nothing was sent")
    try:
        return [json.loads(line) for line in body.splitlines() if line.strip()]
    except ValueError:
        raise UserError(f"sync error: {path} is damaged") from None


__all__ = ["OPS_FILE", "OP_FIELDS", "decode", "encode", "read", "write"]
