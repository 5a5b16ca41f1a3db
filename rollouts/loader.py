"""Training windows from rollout datasets: a torch ``Dataset`` and ``DataLoader``.

A window is ``context + horizon`` consecutive steps of one episode (windows never cross an
episode's end): every requested observation key with a leading time axis, the action taken
after each of those observations, and its reward, termination and truncation. Episodes are split
into train and held-out by room seed (``dataset.room_split``), so held-out windows come from rooms
no training window shows. Episodes are read by ``episodes.EpisodeReader``, which also computes
the derived keys (``props``, ``partner_actions``).

Speed and memory: the index of windows comes from the manifests alone; each worker process keeps
its own HDF5 handles open and reads a window as one contiguous slice per key. ``cache_bytes``
keeps whole episodes in memory up to that many bytes (None: all of them) and reads the rest from
disk window by window, so a dataset larger than memory trains; ``in_memory=True`` reads every
episode up front, before the workers fork, and the workers then share them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .dataset import STATE_KEYS, Manifest, is_gym, observation_specs
from .episodes import DERIVED_KEYS, EpisodeReader, index_dataset

SPLITS = ("train", "heldout", "all")


class WindowDataset(Dataset):
    """Windows of ``context + horizon`` steps from one or more dataset directories.

    Args:
        dirs: dataset directory or directories (written by ``dreamgym collect``).
        context, horizon: window length is ``context + horizon`` (K + H) steps.
        split: ``"train"``, ``"heldout"`` or ``"all"``.
        keys: observation keys to read (default: all the datasets have); ``"qpos"`` and ``"qvel"``
            may be added for the physics state, and the derived keys ``"props"`` and
            ``"partner_actions"`` (the latter also brings ``motion`` and ``partner_motion``).
        stride: steps between the starts of consecutive windows of an episode.
        heldout_fraction: default the largest of the manifests' (held-out sets are nested, so a
            room held out in any of the datasets is held out everywhere).
        skip_bad: leave out shards that fail the check (with a warning naming them) instead of
            raising ``CorruptShardError``.
        verify: ``"sha256"`` recomputes each shard's checksum when the dataset is opened;
            ``"size"`` only checks sizes and HDF5 structure (for very large datasets).
        in_memory: read the selected episodes into RAM up front.
        cache_bytes: keep whole episodes in RAM, as they are first read, up to this many bytes
            (None: no limit; 0: none); the other episodes' windows are read from disk.
        include_final: windows may end at an episode's final observation (row T, whose action,
            reward and flags are zero): the world model's training windows, K context steps and
            the next observation.

    Item ``i`` is a dict of tensors: each observation key ``(K+H, ...)`` in its stored dtype;
    ``actions`` (K+H, 6), action t taken after observation t; ``rewards``, ``terminations``,
    ``truncations`` (K+H,), those of action t; ``instruction``, ``room_seed``, ``episode`` (index
    into ``self.episodes``), ``t0`` (the window's first step in its episode) and ``behaviour``
    (index into ``collect.BEHAVIOURS``) as scalars. Unless ``include_final``, the final
    observation of an episode (index T) follows its last action and is in no window.
    """

    def __init__(
        self,
        dirs: str | Path | Iterable[str | Path],
        context: int = 8,
        horizon: int = 8,
        split: str = "train",
        keys: Sequence[str] | None = None,
        stride: int = 1,
        heldout_fraction: float | None = None,
        skip_bad: bool = False,
        verify: str = "sha256",
        in_memory: bool = False,
        cache_bytes: int | None = 0,
        include_final: bool = False,
    ):
        from .collect import BEHAVIOURS

        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if int(context) < 0 or int(horizon) < 0 or int(context) + int(horizon) < 1:
            raise ValueError(f"context and horizon must be >= 0 with a positive sum, got {context}, {horizon}")
        if int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.context, self.horizon, self.length = int(context), int(horizon), int(context) + int(horizon)
        self.split = split
        self.include_final = bool(include_final)
        index = index_dataset(dirs, split, heldout_fraction, verify, skip_bad)
        self.dirs, self.heldout_fraction = index.dirs, index.heldout_fraction
        self.keys = self._choose_keys(index.manifests, keys)
        self.obs_keys = tuple(k for k in self.keys if k not in STATE_KEYS and k != "instruction" and k not in DERIVED_KEYS)
        self.state_keys = tuple(k for k in self.keys if k in STATE_KEYS)
        self.skipped, self.shards = index.skipped, index.shards
        self.refs = index.episodes
        self.episodes = [r.as_dict() for r in self.refs]
        read = tuple(k for k in self.keys if k != "instruction")
        self.reader = EpisodeReader(self.refs, read, cache_bytes=cache_bytes)

        rows = self.refs
        steps = np.array([r.steps + (1 if self.include_final else 0) for r in rows], np.int64)
        counts = np.maximum(0, (steps - self.length) // int(stride) + 1)
        self._ep = np.repeat(np.arange(len(rows)), counts).astype(np.int64)
        first = np.cumsum(counts) - counts
        self._t0 = ((np.arange(len(self._ep)) - np.repeat(first, counts)) * int(stride)).astype(np.int64)
        beh = [BEHAVIOURS.index(r.behaviour) if r.behaviour in BEHAVIOURS else -1 for r in rows]
        self._scalars = np.array([(r.room_seed, r.instruction, b) for r, b in zip(rows, beh)], np.int64).reshape(-1, 3)
        self.in_memory = bool(in_memory)
        if in_memory:
            self.reader.preload()

    def _choose_keys(self, manifests: list[Manifest], keys: Sequence[str] | None) -> tuple[str, ...]:
        sources = [_source(m.data["env"]) for m in manifests]
        if len(set(sources)) > 1:
            mixed = ", ".join(f"{d}: {s}" for d, s in zip(self.dirs, sources))
            raise ValueError(f"the datasets come from different envs ({mixed}); load datasets of one env together")
        order = list(manifests[0].data["env"]["obs_keys"])
        available = set.intersection(*(set(m.data["env"]["obs_keys"]) for m in manifests))
        chosen = tuple(sorted(available, key=order.index)) if keys is None else tuple(keys)
        unknown = [k for k in chosen if k not in available and k not in STATE_KEYS and k not in DERIVED_KEYS]
        if unknown:
            raise ValueError(
                f"keys {unknown} are not in every dataset; available: {sorted(available) + list(STATE_KEYS) + list(DERIVED_KEYS)}"
            )
        for k in chosen:
            lacking = [s for s in DERIVED_KEYS.get(k, ()) if s not in available and s not in STATE_KEYS]
            if lacking:
                raise ValueError(f"{k!r} is computed from {list(DERIVED_KEYS[k])}, which the datasets lack ({lacking})")
        if "partner_actions" in chosen:  # the bodies it is replayed from come along
            chosen += tuple(k for k in ("motion", "partner_motion") if k not in chosen)
        self._check_shapes(manifests, chosen)
        return chosen

    # ------------------------------------------------------------------ dataset protocol
    def __len__(self) -> int:
        return len(self._ep)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        e, t0 = int(self._ep[i]), int(self._t0[i])
        arrays = self.reader.rows(e, t0, t0 + self.length)
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        seed, instruction, behaviour = self._scalars[e]
        out["instruction"] = torch.tensor(instruction)
        out["room_seed"] = torch.tensor(seed)
        out["behaviour"] = torch.tensor(behaviour)
        out["episode"] = torch.tensor(e)
        out["t0"] = torch.tensor(t0)
        return out

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The windows ``indices`` stacked, as the ``DataLoader`` would batch them, key by key
        (much faster for the large batches of state-only windows)."""
        idx = np.asarray(indices, np.int64)
        eps, t0s = self._ep[idx], self._t0[idx]
        parts = [self.reader.rows(int(e), int(t), int(t) + self.length) for e, t in zip(eps, t0s)]
        out = {k: torch.from_numpy(np.stack([p[k] for p in parts])) for k in parts[0]}
        sc = self._scalars[eps]
        out |= {"instruction": sc[:, 1], "room_seed": sc[:, 0], "behaviour": sc[:, 2], "episode": eps, "t0": t0s}
        return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in out.items()}

    # ------------------------------------------------------------------ helpers
    @property
    def room_seeds(self) -> set[int]:
        """Room seeds of the episodes in this split."""
        return {ep["room_seed"] for ep in self.episodes}

    def window_bounds(self) -> np.ndarray:
        """(N, 3) int64: episode index, first step and end step (exclusive) of every window."""
        return np.stack((self._ep, self._t0, self._t0 + self.length), 1)

    def _check_shapes(self, manifests: list[Manifest], keys: Sequence[str]) -> None:
        ref = manifests[0].data["env"]
        for d, m in zip(self.dirs[1:], manifests[1:]):
            for k in keys:
                if k in DERIVED_KEYS:
                    continue
                if k in STATE_KEYS:
                    n = "nq" if k == "qpos" else "nv"
                    if m.data["env"][n] != ref[n]:
                        raise ValueError(f"{k} has {m.data['env'][n]} entries in {d} but {ref[n]} in {self.dirs[0]}")
                elif observation_specs(m.data["env"])[k] != observation_specs(ref)[k]:
                    raise ValueError(
                        f"observation {k!r} is {observation_specs(m.data['env'])[k]} in {d} but "
                        f"{observation_specs(ref)[k]} in {self.dirs[0]}; load datasets of one resolution together"
                    )

    def close(self) -> None:
        self.reader.close()


def _source(env: dict) -> str:
    """The env a dataset was collected from: the room, or a Gymnasium id."""
    return f"Gymnasium env {env['env_id']}" if is_gym(env) else "the room"


def make_loader(
    dataset: Dataset,
    batch_size: int = 32,
    num_workers: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    batches: Iterable[Sequence[int]] | None = None,
    **kwargs,
) -> DataLoader:
    """A ``DataLoader`` of batched windows: each value gains a leading batch axis, (B, K+H, ...).

    ``num_workers`` defaults to 2 for windows read from disk (decompression runs beside training)
    and to 0 for an ``in_memory`` dataset, whose windows are cheaper to slice than to pass
    between processes. ``batches``: the window indices of each batch, in order (a batch sampler;
    ``batch_size``, ``shuffle`` and ``drop_last`` are then unused).
    """
    if num_workers is None:
        num_workers = 0 if getattr(dataset, "in_memory", False) else 2
    gen = torch.Generator().manual_seed(int(seed))
    common = dict(num_workers=int(num_workers), generator=gen, persistent_workers=int(num_workers) > 0, **kwargs)
    if batches is not None:
        return DataLoader(dataset, batch_sampler=batches, **common)
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, drop_last=drop_last, **common)
