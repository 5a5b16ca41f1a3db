"""The one runner every ``dreamgym bench NAME`` goes through.

- ``timed``: a rate (units/s) with warm-up calls and at least three timed repeats, reported as
  the median and the spread of the repeats;
- ``machine_info`` and ``code_version``: what ran it (CPU, cores, RAM, library versions, device)
  and on which code (git commit, dirty tree, and a hash of the package's source files, which also
  works outside git);
- ``BenchRun``: one JSON layout for every benchmark, written to ``benchmarks/results/<name>.json``
  unless ``out`` says otherwise::

      {"benchmark", "created", "code", "machine", "config", "arms", "summary", "keys", "reused", "wall_s"}

  ``arms`` holds each arm's figures, ``summary`` the ratios between them. ``BenchRun.cached`` may
  skip an arm only when the code version, the arm's config and its inputs hash to the key of a
  stored result; ``reused`` then names the file and the key each reused arm came from.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The package's folders (a checkout's top level, or the installed ``dreamgym/``): their sources are the code version.
SOURCE_ROOT = Path(__file__).resolve().parent.parent
SOURCE_PACKAGES = ("envs", "rollouts", "worldmodel", "policies", "avatars", "benchmarks", "app", "configs")
SOURCE_SUFFIXES = (".py", ".yaml")
VERSIONED = {
    "python": None,
    "torch": "torch",
    "mujoco": "mujoco",
    "mujoco_warp": "mujoco-warp",
    "warp": "warp-lang",
    "gymnasium": "gymnasium",
    "numpy": "numpy",
    "stable_baselines3": "stable-baselines3",
}
MIN_REPEATS = 3


# ------------------------------------------------------------------------------ timing
@dataclass(frozen=True)
class Timing:
    """How a rate is timed: ``warmup`` untimed calls, then ``repeats`` repeats, each at least
    ``min_calls`` calls and ``min_seconds`` long."""

    repeats: int = MIN_REPEATS
    warmup: int = 1
    min_seconds: float = 1.0
    min_calls: int = 1

    def __post_init__(self) -> None:
        if int(self.repeats) < MIN_REPEATS:
            raise ValueError(f"repeats must be at least {MIN_REPEATS} (a median and a spread), got {self.repeats}")
        if int(self.warmup) < 0 or int(self.min_calls) < 1 or float(self.min_seconds) < 0:
            raise ValueError(f"timing needs warmup >= 0, min_calls >= 1, min_seconds >= 0; got {self}")

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> Timing:
        """From a bench config's ``repeats``, ``warmup_calls``, ``measure_seconds`` and ``min_calls``."""
        return cls(
            repeats=int(cfg.get("repeats", MIN_REPEATS)),
            warmup=int(cfg.get("warmup_calls", 1)),
            min_seconds=float(cfg.get("measure_seconds", 1.0)),
            min_calls=int(cfg.get("min_calls", 1)),
        )


def summarise(rates: Sequence[float], unit: str = "per_s") -> dict[str, Any]:
    """Median, min, max and relative spread ((max - min) / median) of repeated rates."""
    if len(rates) == 0:
        raise ValueError("summarise: no rates given")
    med = statistics.median(rates)
    return {
        "median": med,
        "min": min(rates),
        "max": max(rates),
        "spread": (max(rates) - min(rates)) / med if med else None,
        "repeats": [float(r) for r in rates],
        "unit": unit,
    }


def timed(fn: Callable[[], Any], timing: Timing, per_call: float | None = 1, unit: str = "per_s") -> dict[str, Any]:
    """Rate of ``fn`` in units/s over ``timing.repeats`` repeats, after ``timing.warmup`` calls.

    Each call counts ``per_call`` units (a step of B worlds: B); with ``per_call=None`` ``fn``
    returns how many units it did (a data loader's last, short batch)."""
    for _ in range(int(timing.warmup)):
        fn()
    rates, calls, seconds = [], [], []
    for _ in range(int(timing.repeats)):
        n, units, t0 = 0, 0.0, time.perf_counter()
        while n < timing.min_calls or time.perf_counter() - t0 < timing.min_seconds:
            done = fn()
            units += float(done) if per_call is None else float(per_call)
            n += 1
        dt = time.perf_counter() - t0
        rates.append(units / dt)
        calls.append(n)
        seconds.append(dt)
    return summarise(rates, unit) | {"calls": calls, "seconds": seconds, "warmup_calls": int(timing.warmup)}


# ------------------------------------------------------------------------------ what ran it
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            phys = value.strip()
        elif key.strip() == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or None


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def versions() -> dict[str, str | None]:
    """Versions of Python and the libraries whose speed the figures depend on (None: not installed)."""
    out: dict[str, str | None] = {}
    for name, dist in VERSIONED.items():
        if dist is None:
            out[name] = platform.python_version()
            continue
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, cores, threads, RAM, load, library versions and the accelerator, if any."""
    import torch

    from dreamgym.worldmodel.sampling import native_bfloat16

    accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cores": _physical_cores(),
        "threads": os.cpu_count(),
        "usable_threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": _ram_gb(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the widest vector ISA torch uses (AVX2, AVX512, ...)
        "native_bfloat16": native_bfloat16("cpu"),  # AVX512-BF16 or AMX: what "auto" precision resolves by
        "device": "cuda" if accelerator else "cpu",
        "accelerator": accelerator,
        "versions": versions(),
    }


def source_files(root: Path = SOURCE_ROOT) -> list[Path]:
    """The package's source files (``.py``, ``.yaml``) whose hash is the code version."""
    files = []
    for pkg in SOURCE_PACKAGES:
        base = root / pkg
        for suffix in SOURCE_SUFFIXES:
            files += [p for p in base.rglob(f"*{suffix}") if "__pycache__" not in p.parts and "results" not in p.relative_to(base).parts]
    return sorted(set(files))


def source_hash(root: Path = SOURCE_ROOT) -> str:
    """sha256 over the package's source files' relative paths and contents."""
    h = hashlib.sha256()
    for p in source_files(root):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def _git(root: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def code_version(root: Path = SOURCE_ROOT) -> dict[str, Any]:
    """The git commit and whether the source files differ from it (None outside git), and the source hash."""
    commit = _git(root, "rev-parse", "HEAD")
    # the same files as the source hash: docs and results beside the code do not make it dirty
    paths = [f"{pkg}/*{suffix}" for pkg in SOURCE_PACKAGES for suffix in SOURCE_SUFFIXES] + [":(exclude)benchmarks/results"]
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *paths) if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None, "source_sha256": source_hash(root)}


# ------------------------------------------------------------------------------ cache keys
def hash_path(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative paths and contents): an arm's input."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"benchmark input {p} does not exist")
    h = hashlib.sha256()
    for f in sorted([p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]):
        h.update((f.relative_to(p).as_posix() if p.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def cache_key(code: str, config: Any, inputs: Mapping[str, str] | None = None) -> str:
    """The key of an arm: the code's source hash, the arm's config and its inputs' hashes."""
    blob = json.dumps({"code": code, "config": _plain(config), "inputs": dict(sorted((inputs or {}).items()))}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _plain(x: Any) -> Any:
    """A JSON-ready copy of a config (OmegaConf containers, paths, tuples)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(x):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:
        pass
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def _finite(x: Any) -> Any:
    """``x`` with every non-finite float (NaN, an interval's +-inf over one seed) as None, so that
    the file is strict JSON (``null``), which every JSON reader accepts."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` atomically (a temporary file renamed into place) as strict JSON: a
    non-finite float (an undefined figure) is written as ``null``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_finite(_plain(data)), indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------ a run
class BenchRun:
    """One run of a benchmark: its arms, what was reused, and the JSON they are written to.

    ``cache_dir`` (None: no cache) holds one folder per cached arm and key,
    ``<cache_dir>/<arm>/<key[:16]>/``, with the arm's result in ``arm.json`` beside whatever the
    arm wrote there (a trained policy, say). With ``reuse``, ``cached`` returns a stored result
    whose key matches instead of measuring again, and says so in ``reused``.
    """

    def __init__(self, name: str, config: Any = None, *, cache_dir: str | Path | None = None, reuse: bool = False):
        self.name = str(name)
        self.config = _plain(config) if config is not None else {}
        self.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.code = code_version()
        self.machine = machine_info()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.reuse = bool(reuse)
        self.arms: dict[str, Any] = {}
        self.keys: dict[str, str] = {}
        self.reused: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, Any] = {}
        self._t0 = time.time()

    def add(self, arm: str, figures: Mapping[str, Any]) -> dict[str, Any]:
        """Record an arm measured in this run."""
        if arm in self.arms:
            raise ValueError(f"benchmark {self.name}: arm {arm!r} recorded twice")
        self.arms[arm] = _plain(dict(figures))
        return self.arms[arm]

    def arm_dir(self, arm: str, key: str) -> Path:
        """Where arm ``arm`` with cache key ``key`` keeps its result and its files."""
        if self.cache_dir is None:
            raise ValueError(f"benchmark {self.name}: arm {arm!r} needs a cache_dir to keep its files")
        return self.cache_dir / arm / key[:16]

    def cached(
        self, arm: str, measure: Callable[[Path], Mapping[str, Any]], *, config: Any, inputs: Mapping[str, str | Path] | None = None
    ) -> dict[str, Any]:
        """The arm's figures: a stored result when code, ``config`` and ``inputs`` (paths, hashed by
        content) give its key and ``reuse`` is on, else ``measure(folder)``, then stored."""
        key = cache_key(self.code["source_sha256"], config, {k: hash_path(v) for k, v in (inputs or {}).items()})
        self.keys[arm] = key
        folder = self.arm_dir(arm, key)
        stored_file = folder / "arm.json"
        if self.reuse and stored_file.exists():
            stored = json.loads(stored_file.read_text())
            if stored.get("key") == key and stored.get("arm") == arm:
                self.reused[arm] = {"file": str(stored_file), "key": key, "created": stored.get("created")}
                return self.add(arm, stored["result"])
        folder.mkdir(parents=True, exist_ok=True)
        result = self.add(arm, measure(folder))
        record = {"benchmark": self.name, "arm": arm, "key": key, "created": self.created, "code": self.code, "config": _plain(config)}
        write_json(stored_file, record | {"inputs": {k: str(v) for k, v in (inputs or {}).items()}, "result": result})
        return result

    def result(self) -> dict[str, Any]:
        """The shared JSON layout."""
        return {
            "benchmark": self.name,
            "created": self.created,
            "code": self.code,
            "machine": self.machine | {"load_average_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None},
            "config": self.config,
            "arms": self.arms,
            "summary": _plain(self.summary),
            "keys": self.keys,
            "reused": self.reused,
            "wall_s": round(time.time() - self._t0, 2),
        }

    def write(self, out: str | Path | None = None) -> Path:
        """Write the result to ``out`` (None: ``benchmarks/results/<name>.json``); returns the path."""
        path = write_json(Path(out) if out else RESULTS_DIR / f"{self.name}.json", self.result())
        print(f"bench {self.name}: wrote {path}", flush=True)
        return path


def start(name: str, cfg: Any) -> BenchRun:
    """A ``BenchRun`` for ``dreamgym bench NAME`` from its config (``cache_dir`` and ``reuse`` if it has them)."""
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: d)
    return BenchRun(name, cfg, cache_dir=get("cache_dir", None), reuse=bool(get("reuse", False)))
