"""The record of a ``train-policy`` run: ``run.json`` in the run folder.

``run.json`` says what the run computes and whether it is done:

- ``settings``: the configuration that shapes the result (every key but the machine's own ones,
  ``MACHINE_KEYS``, and only the chosen algorithm's hyperparameters), the data it trains on (the
  world model's files by SHA-256 for ``env=dream``, the ``init`` policy's weights) and the code
  (dreamgym, Stable-Baselines3 and torch versions, the checkpoint format);
- ``status``: ``running`` from the start, ``finished`` once ``policy.safetensors`` and
  ``policy.json`` are in place; ``run_id`` ties the final files to the run that wrote them.

A re-run of the same command resumes only when its settings equal the recorded ones; otherwise it
refuses and lists the differences (``differences``). ``check_finished`` is what loaders call, so
that an unfinished or stale run is never scored as if it were a result.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import CheckpointError, RunMismatchError
from .weights import atomic_write_json, read_json, sha256_of

RUN = "run.json"
RUN_FORMAT = 1
TRAIN_STATE_FORMAT = 1  # layout of checkpoints/<step>/ (train_state.py)
# Keys that change where or how visibly a run computes, not what: not compared on resume.
MACHINE_KEYS = ("out", "progress", "num_threads", "device", "tb_name", "path", "log_every", "allow_pickle", "restart")
# What a finished run leaves at the top of its folder (moved aside when a new run starts there).
RESULT_NAMES = ("policy.safetensors", "policy.json", "policy.zip", "train_config.yaml", "checkpoints")


def code_versions() -> dict[str, Any]:
    """The versions a resumed run must share with the run it continues."""
    import stable_baselines3
    import torch

    try:
        own = importlib.metadata.version("dreamgym")
    except importlib.metadata.PackageNotFoundError:
        own = "unknown"
    return {
        "dreamgym": own,
        "stable_baselines3": stable_baselines3.__version__,
        "torch": torch.__version__,
        "train_state": TRAIN_STATE_FORMAT,
    }


def file_digests(path: str | Path) -> dict[str, str]:
    """SHA-256 of a checkpoint's files: ``*.safetensors`` and ``*.json`` in a folder, or a file and
    the ``config.json`` beside it."""
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".safetensors", ".json")) if p.is_dir() else [p]
    if p.is_file() and (p.parent / "config.json").is_file() and p.name != "config.json":
        files.append(p.parent / "config.json")
    return {f.name: sha256_of(f)[0] for f in files}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def differences(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (recorded, now)}`` for every setting that differs (absent reads as None)."""
    a, b = _flatten(recorded), _flatten(now)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def describe(diff: Mapping[str, tuple[Any, Any]], limit: int = 8, was: str = "run") -> str:
    """``"steps: run 64, now 128; ..."`` (the first ``limit`` differences; config keys by their own name)."""
    items = [f"{k.removeprefix('config.')}: {was} {a!r}, now {b!r}" for k, (a, b) in list(diff.items())[:limit]]
    more = f"; and {len(diff) - limit} more" if len(diff) > limit else ""
    return "; ".join(items) + more


class RunFolder:
    """A train-policy run folder: its lock, its ``run.json`` and the moving aside of old results."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock = None

    def claim(self) -> RunFolder:
        """An exclusive lock on the folder for this process (released by the OS if it dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RunMismatchError(f"another train-policy is writing to {self.root}; wait for it or use another out=") from None
        self._lock = fh
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def record(self) -> dict[str, Any] | None:
        """The folder's run.json, or None when there is none."""
        f = self.root / RUN
        if not f.exists():
            return None
        rec = read_json(f, "run record")
        if not isinstance(rec.get("settings"), dict) or rec.get("status") not in ("running", "finished"):
            raise CheckpointError(f"{f}: not a train-policy run record (needs settings and a status running|finished)")
        if int(rec.get("format_version", 0)) > RUN_FORMAT:
            raise CheckpointError(f"{f}: format_version {rec['format_version']} is newer than this dreamgym reads ({RUN_FORMAT})")
        return rec

    def start(self, settings: Mapping[str, Any], steps: int) -> dict[str, Any]:
        """Record a new run (status ``running``) and move aside whatever an earlier run left."""
        rec = {
            "format_version": RUN_FORMAT,
            "command": "train-policy",
            "run_id": uuid.uuid4().hex,
            "status": "running",
            "steps": int(steps),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "finished": None,
            "settings": dict(settings),
        }
        # run.json first: a crash before the old results are gone leaves them marked unfinished
        atomic_write_json(self.root / RUN, rec)
        self.move_aside_results()
        return rec

    def move_aside_results(self) -> Path | None:
        """Move an earlier run's results into ``replaced-<time>/``; returns that folder (None if nothing was there)."""
        present = [self.root / n for n in RESULT_NAMES if (self.root / n).exists()]
        if not present:
            return None
        dest = self.root / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while dest.exists():
            dest = self.root / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
            n += 1
        dest.mkdir()
        for p in present:
            shutil.move(str(p), str(dest / p.name))
        return dest

    def finish(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        """Mark the run finished (after its final files are in place)."""
        done = {**rec, "status": "finished", "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(self.root / RUN, done)
        return done


def check_finished(folder: str | Path, policy_config: Mapping[str, Any] | None = None) -> None:
    """Raise naming the folder when it is a train-policy run that has not finished, or whose
    final files are not the ones its run.json records (a folder without a train-policy run.json passes)."""
    folder = Path(folder)
    f = folder / RUN
    if not f.exists():
        return
    try:
        rec = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{f}: not valid JSON; the run folder {folder} cannot be trusted as a result") from None
    if not isinstance(rec, dict) or rec.get("command") != "train-policy":
        return
    if rec.get("status") != "finished":
        raise CheckpointError(
            f"{folder}: unfinished train-policy run (run.json status {rec.get('status')!r}); "
            "re-run the same train-policy command to finish it"
        )
    if policy_config is not None and policy_config.get("run_id") != rec.get("run_id"):
        raise CheckpointError(
            f"{folder}: stale policy: policy.json is from run {policy_config.get('run_id')!r}, "
            f"but run.json records run {rec.get('run_id')!r}; re-run train-policy to write this run's policy"
        )
