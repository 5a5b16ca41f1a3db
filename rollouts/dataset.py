"""The on-disk rollout dataset: HDF5 shards listed, with checksums, in a JSON manifest.

Why not Minari: Minari keeps a dataset in one HDF5 file that grows while it is written, so a
``SIGKILL`` mid-write can leave the whole file unreadable, and it has no checksums. Here every
shard holds a few complete episodes and is written to a temporary name, fsynced and renamed; only
then does the manifest (itself replaced atomically) list it with its sha256. A crash therefore
loses at most the episodes not yet in a shard, and any later damage is found by name. Inside a
shard the layout follows Minari's episode groups, so ``h5py`` alone reads it::

    <dir>/manifest.json                 format, env spec, collection settings, split, shards
    <dir>/shard-000000.h5               root attrs: format, format_version, env (JSON)
        episode_000000/                 attrs: id, key, task, instruction, instruction_text,
                                               room_seed, behaviour, partner_behaviour, utterance,
                                               success, terminated, truncated, cut, steps, split
            observations/ego_rgb        (T+1, 3, H, W) uint8     obs 0 .. T (T = final obs)
            observations/ego_depth      (T+1, 1, H, W) float32   metres
            observations/motion         (T+1, 227) float32
            observations/occupancy      (T+1, Z, X, Y) uint8
            observations/partner_motion (T+1, 227) float32
            observations/instruction    (T+1,) int64
            observations/task_obs       (T+1, 8) float32
            actions                     (T, 6) float32           action t follows obs t
            rewards                     (T,) float32             reward of action t
            terminations, truncations   (T,) bool
            qpos, qvel                  (T+1, nq), (T+1, nv) float32  physics state at obs t

Images are gzip-compressed in chunks of a few steps, everything carries HDF5's Fletcher-32
checksum per chunk, so a damaged chunk fails to read instead of returning garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "dreamgym-rollouts"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = re.compile(r"^shard-(\d{6})\.h5$")
TEMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<pid>"
STEP_KEYS = ("actions", "rewards", "terminations", "truncations")
STATE_KEYS = ("qpos", "qvel")
IMAGE_KEYS = ("ego_rgb", "ego_depth", "occupancy")
SPLIT_RULE = "heldout if int(sha256(b'dreamgym-room:%d' % room_seed)[:8 bytes], big-endian) / 2**64 < heldout_fraction"


class CorruptShardError(RuntimeError):
    """A shard is missing, truncated, or does not match its manifest checksum."""

    def __init__(self, shard: str | Path, reason: str):
        self.shard, self.reason = str(shard), reason
        super().__init__(
            f"shard {self.shard} is corrupt: {reason}; run `dreamgym dataset verify {Path(shard).parent}`, "
            "re-collect into a new directory, or load with skip_bad=True to skip it"
        )


# ---------------------------------------------------------------------------------------- split
def room_split(room_seed: int, heldout_fraction: float) -> str:
    """``"heldout"`` or ``"train"`` for a room, a pure function of its seed (see ``SPLIT_RULE``).

    A room seed always falls on the same side, so held-out rooms are never trained on, whatever
    run collected them.
    """
    digest = hashlib.sha256(b"dreamgym-room:%d" % int(room_seed)).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") / 2**64 < float(heldout_fraction) else "train"


# ---------------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    """One recorded episode of T steps, as numpy arrays (the in-memory form of an episode group)."""

    observations: dict[str, np.ndarray]  # key -> (T+1, ...)
    actions: np.ndarray  # (T, 6) float32 for the room; (T, *shape) float32 or (T,) int64 for a Gymnasium env
    rewards: np.ndarray  # (T,) float32
    terminations: np.ndarray  # (T,) bool
    truncations: np.ndarray  # (T,) bool
    qpos: np.ndarray | None = None  # (T+1, nq) float32; None for a Gymnasium env (not stored)
    qvel: np.ndarray | None = None  # (T+1, nv) float32; None for a Gymnasium env
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.actions.shape[0])


# ---------------------------------------------------------------------------------------- atomic files
def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old or the new file."""
    tmp = temp_name(path)
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_of(path: Path, fsync: bool = False) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file; ``fsync`` also flushes it to disk."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest(), size


def is_temp_file(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name


# ---------------------------------------------------------------------------------------- manifest
def check_shard_name(manifest: Path, name: Any) -> None:
    """Refuse a shard entry that is not a plain file name inside the dataset directory (such as
    ``../other/shard-000001.h5`` or an absolute path): a dataset reads only its own files."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(
            f"{manifest} lists the shard {name!r}, which is not a file of the dataset directory {manifest.parent}; "
            "a manifest lists shards by their file name alone"
        )


class Manifest:
    """The JSON manifest of a dataset directory: what was collected, how, and which shards hold it.

    Only shards listed here belong to the dataset; any other file in the directory (a temporary
    file or a shard renamed just before a crash) is ignored.
    """

    def __init__(self, root: str | Path, data: dict[str, Any]):
        self.root = Path(root)
        self.data = data

    @classmethod
    def new(cls, root: str | Path, env: dict[str, Any], collection: dict[str, Any], heldout_fraction: float) -> Manifest:
        return cls(
            root,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "env": env,
                "collection": collection,
                "split": {"heldout_fraction": float(heldout_fraction), "rule": SPLIT_RULE},
                "rounds": [],
                "shards": [],
            },
        )

    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{root} is not a dreamgym dataset: {MANIFEST} not found (collect one with `dreamgym collect out={root}`)"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a dataset manifest (an object with format, env, shards)")
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} has format {data.get('format')!r}, expected {FORMAT!r}")
        if int(data.get("format_version", -1)) > FORMAT_VERSION:
            raise ValueError(f"{path} has format_version {data['format_version']}; this dreamgym reads up to {FORMAT_VERSION}, upgrade it")
        for entry in data.get("shards", []):
            check_shard_name(path, entry.get("file") if isinstance(entry, dict) else entry)
        return cls(root, data)

    def save(self) -> None:
        self.data["totals"] = {"episodes": self.num_episodes, "steps": self.num_steps, "shards": len(self.shards)}
        atomic_write_text(self.root / MANIFEST, json.dumps(self.data, indent=1))

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.data["shards"]

    @property
    def heldout_fraction(self) -> float:
        return float(self.data["split"]["heldout_fraction"])

    @property
    def num_episodes(self) -> int:
        return sum(len(s["episodes"]) for s in self.shards)

    @property
    def num_steps(self) -> int:
        return sum(s["steps"] for s in self.shards)

    def episodes(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(shard entry, episode entry) for every episode, in collection order."""
        for s in self.shards:
            for e in s["episodes"]:
                yield s, e

    def next_shard_name(self) -> str:
        return f"shard-{len(self.shards):06d}.h5"


# ---------------------------------------------------------------------------------------- writing
def _create(group, name: str, data: np.ndarray, chunk_steps: int, compression: str | None, level: int | None) -> None:
    data = np.ascontiguousarray(data)
    chunks = (max(1, min(chunk_steps, data.shape[0])), *data.shape[1:])
    opts: dict[str, Any] = {"chunks": chunks, "fletcher32": True}
    if compression:
        opts["compression"] = compression
        if compression == "gzip" and level is not None:
            opts["compression_opts"] = int(level)
        opts["shuffle"] = data.dtype.itemsize > 1  # byte-shuffle helps floats compress
    group.create_dataset(name, data=data, **opts)


def write_shard(
    root: Path,
    name: str,
    episodes: Sequence[tuple[int, Episode]],
    env: Mapping[str, Any],
    compression: str | None = "gzip",
    compression_level: int | None = 1,
    image_chunk_steps: int = 4,
    vector_chunk_steps: int = 64,
) -> dict[str, Any]:
    """Write ``episodes`` ((id, Episode) pairs) as shard ``root/name`` atomically; returns its
    manifest entry (file, sha256, bytes, steps, episodes)."""
    import h5py

    path = root / name
    tmp = temp_name(path)
    entries = []
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["env"] = json.dumps(dict(env))
        images = image_keys(env)
        for ep_id, ep in episodes:
            g = f.create_group(f"episode_{ep_id:06d}")
            obs = g.create_group("observations")
            for k, v in ep.observations.items():
                image = k in images
                _create(obs, k, v, image_chunk_steps if image else vector_chunk_steps, compression if image else None, compression_level)
            for k in STEP_KEYS + STATE_KEYS:
                if getattr(ep, k) is not None:
                    _create(g, k, getattr(ep, k), vector_chunk_steps, None, None)
            attrs = {"id": int(ep_id), "steps": ep.steps, **ep.attrs}
            for k, v in attrs.items():
                g.attrs[k] = v
            entries.append(
                {
                    "id": int(ep_id),
                    "group": g.name.lstrip("/"),
                    **{k: _json_value(attrs[k]) for k in MANIFEST_EPISODE_ATTRS if k in attrs},
                }
            )
    digest, size = sha256_of(tmp, fsync=True)
    os.replace(tmp, path)
    fsync_dir(root)
    return {"file": name, "sha256": digest, "bytes": size, "steps": sum(ep.steps for _, ep in episodes), "episodes": entries}


def is_gym(env: Mapping[str, Any]) -> bool:
    """Whether a dataset's env spec is of a Gymnasium env (``collect env=...``), not the room."""
    return env.get("kind") == "gym"


def require_room(root: str | Path, command: str) -> None:
    """Refuse a dataset of a Gymnasium env in a command that reads the room's episodes (its
    bodies, cameras, physics state)."""
    env = Manifest.load(root).data["env"]
    if is_gym(env):
        raise ValueError(
            f"{root} holds episodes of the Gymnasium env {env['env_id']}; `dreamgym {command}` reads the room's "
            "datasets (collected without env=)"
        )


def image_keys(env: Mapping[str, Any]) -> tuple[str, ...]:
    """The observation keys stored compressed, in image-sized chunks."""
    if is_gym(env):
        return tuple(k for k, v in env["observations"].items() if v.get("image"))
    return IMAGE_KEYS


def observation_specs(env: Mapping[str, Any]) -> dict[str, Any]:
    """Stored observation key -> its per-step shape and dtype, for the room and Gymnasium envs."""
    return env["observations"] if is_gym(env) else env["observation_space"]


# What the manifest repeats of each episode, so that splits and statistics need no shard opened.
MANIFEST_EPISODE_ATTRS = ("key", "steps", "room_seed", "split", "behaviour", "instruction", "success", "terminated", "truncated", "cut")


def _json_value(v):
    return v.item() if isinstance(v, np.generic) else v


# ---------------------------------------------------------------------------------------- reading
def read_episode(path: str | Path, group: str, keys: Iterable[str] | None = None) -> Episode:
    """Read one episode group of a shard into memory (observation ``keys``: None for all)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            g = f[group]
            names = list(g["observations"].keys()) if keys is None else list(keys)
            return Episode(
                observations={k: g["observations"][k][()] for k in names},
                **{k: g[k][()] for k in STEP_KEYS + STATE_KEYS if k in g},
                attrs={k: _json_value(v) for k, v in g.attrs.items()},
            )
    except (OSError, ValueError, RuntimeError) as err:  # h5py's errors for unreadable chunks and files
        raise CorruptShardError(path, f"reading {group} failed ({err})") from None


@dataclass
class VerifyReport:
    """What ``verify`` found: shards that are fine, shards that are not (with why), stray files."""

    root: Path
    good: list[str]
    bad: dict[str, str]
    ignored: list[str]
    episodes: int
    steps: int

    @property
    def ok(self) -> bool:
        return not self.bad

    def summary(self) -> str:
        lines = [f"{self.root}: {len(self.good)} good shard(s), {len(self.bad)} bad, {self.episodes} episodes, {self.steps} steps"]
        lines += [f"  BAD {name}: {why}" for name, why in self.bad.items()]
        lines += [f"  ignored (not in the manifest): {name}" for name in self.ignored]
        return "\n".join(lines)


def check_shard(root: Path, entry: Mapping[str, Any], checksum: bool = True) -> str | None:
    """Why shard ``entry`` of dataset ``root`` is bad, or None if it is fine.

    Checks existence and size, then the sha256 (``checksum``), then that HDF5 opens it and it
    holds the episode groups the manifest lists.
    """
    import h5py

    path = root / entry["file"]
    if not path.is_file():
        return "file is missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"size is {size} bytes, the manifest says {entry['bytes']} (truncated or overwritten)"
    if checksum:
        digest, _ = sha256_of(path)
        if digest != entry["sha256"]:
            return f"sha256 is {digest[:16]}..., the manifest says {entry['sha256'][:16]}... (contents changed)"
    try:
        with h5py.File(path, "r") as f:
            missing = [e["group"] for e in entry["episodes"] if e["group"] not in f]
    except Exception as e:  # noqa: BLE001 -- any HDF5 failure means the shard is unreadable
        return f"HDF5 cannot open it ({type(e).__name__}: {e})"
    if missing:
        return f"episode groups {missing} are missing"
    return None


def verify(root: str | Path, checksum: bool = True) -> VerifyReport:
    """Check every shard the manifest of ``root`` lists (sha256 with ``checksum``)."""
    root = Path(root)
    manifest = Manifest.load(root)
    good, bad = [], {}
    for entry in manifest.shards:
        why = check_shard(root, entry, checksum)
        if why is None:
            good.append(entry["file"])
        else:
            bad[entry["file"]] = why
    listed = {s["file"] for s in manifest.shards} | {MANIFEST}
    ignored = sorted(p.name for p in root.iterdir() if p.name not in listed and p.name != ".lock")
    return VerifyReport(root, good, bad, ignored, manifest.num_episodes, manifest.num_steps)


def run_verify(cfg) -> int:
    """``dreamgym dataset verify <dir>``: check every shard's checksum; exit status 1 if any is bad."""
    if not cfg.get("path"):
        raise SystemExit("dreamgym dataset verify: give the dataset directory, e.g. `dreamgym dataset verify data/reach`")
    try:
        report = verify(cfg.path, checksum=bool(cfg.get("checksum", True)))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"dreamgym dataset verify: {e}") from None
    print(report.summary())
    return 0 if report.ok else 1


def run_info(cfg) -> int:
    """``dreamgym dataset info <dir>``: episodes, steps, splits, behaviours and success rates."""
    if not cfg.get("path"):
        raise SystemExit("dreamgym dataset info: give the dataset directory, e.g. `dreamgym dataset info data/reach`")
    try:
        m = Manifest.load(cfg.path)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"dreamgym dataset info: {e}") from None
    env = m.data["env"]
    if is_gym(env):
        source = {"env_id": env["env_id"], "env_kwargs": env.get("env_kwargs", {})}
    else:
        source = {"task": env.get("task"), "resolution": env.get("resolution")}
    stats: dict[str, Any] = {
        "episodes": m.num_episodes,
        "steps": m.num_steps,
        "shards": len(m.shards),
        **source,
        "heldout_fraction": m.heldout_fraction,
        "by_split": {},
        "by_behaviour": {},
    }
    for _, e in m.episodes():
        for group, name in (("by_split", e["split"]), ("by_behaviour", e["behaviour"])):
            s = stats[group].setdefault(name, {"episodes": 0, "steps": 0, **({"successes": 0} if "success" in e else {})})
            s["episodes"] += 1
            s["steps"] += e["steps"]
            if "success" in e:  # a Gymnasium env's episodes have no success
                s["successes"] = s.get("successes", 0) + int(bool(e["success"]))
    rounds = m.data.get("rounds", [])
    stats["rounds_complete"] = sum(bool(r.get("complete")) for r in rounds)
    stats["rounds_started"] = len(rounds)
    print(json.dumps(stats, indent=2))
    return 0
