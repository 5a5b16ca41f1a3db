"""The one reader of a dataset's episodes: the stored keys and the keys derived from them.

Every reader of a ``dreamgym collect`` dataset -- the training windows (``loader``), the world
model's evaluation, the exports and the viewer -- goes through ``index_dataset`` and
``EpisodeReader``, so that an episode, a split and a derived key mean the same thing everywhere.

**Rows.** An episode of T steps has T+1 observation rows (row T is its final observation). Here
every key has T+1 rows: the step keys (``actions``, ``rewards``, ``terminations``,
``truncations``: those of the action taken after observation t) get a zero row T, as nothing
follows the final observation. In-memory episodes (``worldmodel.data.EpisodeWindows``) use the
same layout.

**Derived keys** (``DERIVED_KEYS``), computed here and nowhere else:

- ``props`` (T+1, 4, 3) float32: the props' positions (world, m), read from ``qpos``;
- ``partner_actions`` (T+1, 6) float32: the partner's controller commands after each observation,
  replayed from the room's script and the two recorded bodies (``envs.partner.replay_actions``),
  over the whole episode at once (a batched replay rounds a row the same whichever rows are
  asked for); row T is zero.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dataset import STATE_KEYS, STEP_KEYS, CorruptShardError, Manifest, check_shard, room_split

SPLITS = ("train", "heldout", "all")
VERIFY = ("sha256", "size")
# derived key -> the stored keys it is computed from
DERIVED_KEYS: dict[str, tuple[str, ...]] = {"props": ("qpos",), "partner_actions": ("motion", "partner_motion")}
FLAG_KEYS = ("terminations", "truncations")  # bool: HDF5 converts them slowly, so whole episodes are kept
OPEN_EPISODES = 128  # episodes whose HDF5 datasets stay open (an LRU), per process
CHUNK_CACHE_BYTES = 1 << 18  # HDF5 chunk cache per open dataset


# ---------------------------------------------------------------------------------------- derived keys
@lru_cache(maxsize=1)
def prop_qpos_addresses() -> tuple[int, ...]:
    """qpos addresses of the props' free joints (x, y, z first), from the compiled scene."""
    import mujoco

    from dreamgym.envs import scene
    from dreamgym.envs.layout import SceneIndex

    idx = SceneIndex.from_model(mujoco.MjModel.from_xml_string(scene.build_mjcf()))
    return tuple(int(a) for a in idx.prop_qpos)


def props_from_qpos(qpos: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Prop positions (..., 4, 3) float32, world metres, from physics states (..., nq); a numpy
    array gives a numpy array."""
    if isinstance(qpos, np.ndarray):
        return props_from_qpos(torch.from_numpy(qpos)).numpy()
    return torch.stack([qpos[..., a : a + 3] for a in prop_qpos_addresses()], dim=-2).float()


@lru_cache(maxsize=4096)
def _room_script(task: str, room_seed: int) -> dict[str, np.ndarray]:
    from dreamgym.envs import partner as P

    return P.room_script(task, room_seed)


def partner_commands(task: str, room_seed: int, motion, partner_motion) -> np.ndarray:
    """The partner's commands (T+1, 6) float32 of an episode recorded from its reset, from the
    agent's and the partner's motions (T+1, 227); row T (after the final observation) is zero."""
    from dreamgym.envs import partner as P

    if not task:
        raise ValueError(f"room {room_seed}: the dataset names no task, so the partner's script cannot be replayed")
    a = torch.as_tensor(np.asarray(motion))
    pa = P.replay_actions(_room_script(str(task), int(room_seed)), np.arange(a.shape[0]), a, torch.as_tensor(np.asarray(partner_motion)))
    pa = pa.numpy().astype(np.float32, copy=False)
    pa[-1] = 0.0
    return pa


# ---------------------------------------------------------------------------------------- index
@dataclass(frozen=True)
class EpisodeRef:
    """One episode of a dataset: where it is stored and what the manifest says of it."""

    shard: str  # path of its shard file
    group: str  # its HDF5 group in the shard
    id: int
    steps: int  # T: actions taken (the episode has T+1 observations)
    room_seed: int
    instruction: int  # -1 when the manifest has none
    behaviour: str
    task: str
    split: str  # "train" or "heldout" (``dataset.room_split``)

    def as_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "group": self.group,
            "id": self.id,
            "steps": self.steps,
            "room_seed": self.room_seed,
            "instruction": self.instruction,
            "behaviour": self.behaviour,
            "task": self.task,
            "split": self.split,
        }


@dataclass
class DatasetIndex:
    """The chosen episodes of one or more datasets (from their manifests; no episode is read)."""

    dirs: list[Path]
    manifests: list[Manifest]
    heldout_fraction: float
    episodes: list[EpisodeRef]
    shards: list[str] = field(default_factory=list)  # the shards checked and used
    skipped: dict[str, str] = field(default_factory=dict)  # shard -> why it was left out


def _as_dirs(dirs: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(dirs, (str, Path)):
        return [Path(dirs)]
    return [Path(d) for d in dirs]


def index_dataset(
    dirs: str | Path | Iterable[str | Path],
    split: str = "all",
    heldout_fraction: float | None = None,
    verify: str = "sha256",
    skip_bad: bool = False,
    ids: Sequence[int] | None = None,
    max_episodes: int | None = None,
) -> DatasetIndex:
    """The episodes of ``split`` (train, heldout or all) in collection order.

    ``heldout_fraction``: default the largest of the manifests' (held-out sets are nested, so a room
    held out in any of the datasets is held out everywhere). ``verify``: every shard that holds a
    chosen episode is checked first, by ``"sha256"`` (its checksum) or ``"size"`` (size and HDF5
    structure); a bad one raises ``CorruptShardError`` naming it, or with ``skip_bad`` is left out
    (``skipped``). ``ids``: only these manifest episode ids; ``max_episodes``: at most this many.
    """
    import warnings

    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if verify not in VERIFY:
        raise ValueError(f"verify must be one of {list(VERIFY)}, got {verify!r}")
    roots = _as_dirs(dirs)
    if not roots:
        raise ValueError("no dataset directories given")
    manifests = [Manifest.load(d) for d in roots]
    frac = max(m.heldout_fraction for m in manifests) if heldout_fraction is None else float(heldout_fraction)
    wanted = None if ids is None else {int(i) for i in ids}
    index = DatasetIndex(roots, manifests, frac, [])
    for root, m in zip(roots, manifests):
        task = str(m.data["env"].get("task", "") or "")
        for entry in m.shards:
            if max_episodes is not None and len(index.episodes) >= int(max_episodes):
                break
            path = str(root / entry["file"])
            chosen = []
            for e in entry["episodes"]:
                side = room_split(e["room_seed"], frac)
                if (split != "all" and side != split) or (wanted is not None and int(e["id"]) not in wanted):
                    continue
                ins = e.get("instruction", -1)
                chosen.append(
                    EpisodeRef(path, e["group"], int(e["id"]), int(e["steps"]), int(e["room_seed"]), int(-1 if ins is None else ins),
                               str(e.get("behaviour", "")), task, side)
                )  # fmt: skip
            if not chosen:
                continue
            why = check_shard(root, entry, checksum=verify == "sha256")
            if why is not None:
                if not skip_bad:
                    raise CorruptShardError(path, why)
                warnings.warn(f"skipping shard {path}: {why}", stacklevel=2)
                index.skipped[path] = why
                continue
            index.shards.append(path)
            room = None if max_episodes is None else int(max_episodes) - len(index.episodes)
            index.episodes += chosen[:room]
    if wanted is not None and max_episodes is None:
        missing = sorted(wanted - {r.id for r in index.episodes})
        if missing:
            where = ", ".join(map(str, roots))
            raise ValueError(f"{where} has no {split} episode(s) {missing} (see `dreamgym dataset info {roots[0]}`)")
    return index


# ---------------------------------------------------------------------------------------- reading
def stored_keys(keys: Iterable[str]) -> tuple[str, ...]:
    """The stored observation and state keys that ``keys`` (stored or derived) are read from."""
    out: list[str] = []
    for k in keys:
        for s in DERIVED_KEYS.get(k, (k,)):
            if s not in out:
                out.append(s)
    return tuple(out)


class MissingKeyError(LookupError):
    """A key asked of an ``EpisodeReader`` that the episode does not store (nor derive)."""


class EpisodeReader:
    """Reads rows of a dataset's episodes: the observation keys, ``qpos``/``qvel`` and derived keys
    asked for (``keys``), and always the step keys, in the row layout (see the module docstring).

    HDF5 handles stay open (per process: a forked or spawned worker opens its own). Whole episodes
    are kept in memory while they fit in ``cache_bytes`` (None: no limit; 0: every read goes to the
    file); an episode that does not fit is read slice by slice, so a dataset larger than memory
    reads too. Whatever is cached, ``rows`` returns the same arrays.
    """

    def __init__(self, episodes: Sequence[EpisodeRef], keys: Sequence[str], cache_bytes: int | None = 0):
        if cache_bytes is not None and int(cache_bytes) < 0:
            raise ValueError(f"cache_bytes must be >= 0 or None (no limit), got {cache_bytes}")
        self.refs = list(episodes)
        self.keys = tuple(k for k in keys if k not in STEP_KEYS)  # the step keys are always read
        read = stored_keys(self.keys)
        self._state = tuple(k for k in read if k in STATE_KEYS)
        self._obs = tuple(k for k in read if k not in STATE_KEYS)
        self.cache_bytes = None if cache_bytes is None else int(cache_bytes)
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._too_big: set[int] = set()
        self.cached_bytes = 0
        self._flags: dict[int, dict[str, np.ndarray]] = {}
        self._pa: dict[int, np.ndarray] = {}
        self._handles: dict[str, Any] = {}
        self._open: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.refs)

    def rows(self, e: int, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Rows ``start .. stop-1`` (stop <= T+1; None: T+1) of episode ``e``: every key asked for
        and the step keys, each (stop - start, ...)."""
        T = self.refs[e].steps
        stop = T + 1 if stop is None else int(stop)
        if not 0 <= start <= stop <= T + 1:
            raise IndexError(f"rows {start}..{stop} outside episode {e} of {T + 1} rows")
        whole = self._cache.get(e)
        if whole is None and e not in self._too_big and self.cache_bytes != 0:
            size = self.episode_bytes(e)
            if self.cache_bytes is None or self.cached_bytes + size <= self.cache_bytes:
                whole = self._cache[e] = self._read(e, 0, T + 1)
                self.cached_bytes += size
            else:
                self._too_big.add(e)
        if whole is not None:
            return {k: v[start:stop] for k, v in whole.items()}
        return self._read(e, start, stop)

    def episode(self, e: int) -> dict[str, np.ndarray]:
        """All T+1 rows of episode ``e``."""
        return self.rows(e)

    def attrs(self, e: int) -> dict[str, Any]:
        """The attributes of episode ``e``'s HDF5 group (task, room_seed, instruction_text, ...)."""
        ref = self.refs[e]
        try:
            return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._file(ref.shard)[ref.group].attrs.items()}
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            raise CorruptShardError(ref.shard, f"reading {ref.group} failed ({err})") from None

    def preload(self) -> None:
        """Read every episode into memory now (no limit), e.g. before worker processes fork."""
        self.cache_bytes = None
        for e in range(len(self.refs)):
            self.rows(e, 0, 0)

    # ------------------------------------------------------------------ internals
    def _read(self, e: int, start: int, stop: int) -> dict[str, np.ndarray]:
        ref = self.refs[e]
        T = ref.steps
        try:
            ds = self._datasets(e)
            raw = {k: ds[k][start:stop] for k in (*self._obs, *self._state)}
            end = min(stop, T)
            for k in STEP_KEYS:
                v = self._flags[e][k][start:end] if k in FLAG_KEYS else ds[k][start:end]
                raw[k] = np.concatenate([v, np.zeros((stop - start - len(v), *v.shape[1:]), v.dtype)]) if len(v) < stop - start else v
            pa = self._partner_actions(e, ds) if "partner_actions" in self.keys else None
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            raise CorruptShardError(ref.shard, f"reading {ref.group} failed ({err})") from None
        out = {k: raw[k] for k in self.keys if k in raw}
        out.update({k: raw[k] for k in STEP_KEYS})
        if "props" in self.keys:
            out["props"] = props_from_qpos(raw["qpos"])
        if pa is not None:
            out["partner_actions"] = pa[start:stop]
        return out

    def _partner_actions(self, e: int, ds: Mapping[str, Any]) -> np.ndarray:
        pa = self._pa.get(e)
        if pa is None:
            ref = self.refs[e]
            pa = self._pa[e] = partner_commands(ref.task, ref.room_seed, ds["motion"][()], ds["partner_motion"][()])
        return pa

    def episode_bytes(self, e: int) -> int:
        """Bytes that episode ``e`` takes in memory with the keys asked for (what the cache counts)."""
        ds = self._datasets(e)
        T = self.refs[e].steps
        n = sum(int(np.prod(ds[k].shape)) * ds[k].dtype.itemsize for k in (*self._obs, *self._state) if k in self.keys)
        n += sum(self._flags[e][k].nbytes if k in FLAG_KEYS else int(np.prod(ds[k].shape)) * ds[k].dtype.itemsize for k in STEP_KEYS)
        n += (T + 1) * (4 * 3 * 4 if "props" in self.keys else 0) + (T + 1) * (6 * 4 if "partner_actions" in self.keys else 0)
        return n

    def _file(self, path: str):
        import h5py

        if self._pid != os.getpid():  # a forked worker: open its own handles, leave the parent's alone
            self._handles, self._open, self._pid = {}, OrderedDict(), os.getpid()
        f = self._handles.get(path)
        if f is None:
            try:
                f = self._handles[path] = h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
            except OSError as err:
                raise CorruptShardError(path, f"HDF5 cannot open it ({err})") from None
        return f

    def _datasets(self, e: int) -> dict[str, Any]:
        """The open HDF5 datasets of episode ``e`` (looking a dataset up costs more than reading it)."""
        f = self._file(self.refs[e].shard)
        found = self._open.get(e)
        if found is None:
            g = f[self.refs[e].group]
            obs = g["observations"]
            unknown = [k for k in self._obs if k not in obs] + [k for k in self._state if k not in g]
            if unknown:
                have = sorted(obs) + sorted(k for k in STATE_KEYS if k in g) + sorted(DERIVED_KEYS)
                raise MissingKeyError(f"{self.refs[e].shard} {self.refs[e].group} does not store {unknown}; it has {have}")
            found = {k: obs[k] for k in self._obs}
            found.update({k: g[k] for k in (*self._state, *STEP_KEYS) if k not in FLAG_KEYS})
            if "partner_actions" in self.keys:
                found.update({k: obs[k] for k in ("motion", "partner_motion")})
            if e not in self._flags:
                self._flags[e] = {k: g[k][()] for k in FLAG_KEYS}
            self._open[e] = found
            if len(self._open) > OPEN_EPISODES:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(e)
        return found

    def close(self) -> None:
        """Close the HDF5 files (the in-memory cache stays)."""
        self._open = OrderedDict()
        for f in self._handles.values():
            f.close()
        self._handles = {}

    def __getstate__(self):  # workers started by spawn reopen their own handles
        state = dict(self.__dict__)
        state["_handles"], state["_open"] = {}, OrderedDict()
        return state
