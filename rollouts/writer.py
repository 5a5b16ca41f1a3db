"""The dataset writer of ``dreamgym collect``: what a dataset records of its env, per-world episode
buffers, and the background thread that packs finished episodes into shards."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dataset import Episode, Manifest, write_shard


def env_spec(env, task_name: str) -> dict[str, Any]:
    """What a dataset records of the env that produced it (also in every shard's attrs)."""
    from dreamgym.envs import scene
    from dreamgym.envs.occupancy import CLASS_NAMES
    from dreamgym.envs.tasks import INSTRUCTIONS

    from .dataset import FORMAT_VERSION

    space = env.single_observation_space
    obs = {}
    for k, s in space.spaces.items():
        obs[k] = {"shape": list(getattr(s, "shape", ()) or ()), "dtype": str(np.dtype(s.dtype))}
    q = env.sim_state()
    return {
        "env_id": "dreamgym/EgoRoomVec-v0",
        "env_version": 0,
        "obs_layout_version": FORMAT_VERSION,
        "task": task_name,
        "max_episode_steps": int(env.core.task.max_steps),
        "resolution": list(env.resolution),
        "obs_keys": list(env.obs_keys),
        "observation_space": obs,
        "action_space": {"shape": [6], "dtype": "float32", "low": -1.0, "high": 1.0},
        "control_dt": float(scene.CONTROL_DT),
        "frame_skip": int(scene.FRAME_SKIP),
        "nq": int(q["qpos"].shape[1]),
        "nv": int(q["qvel"].shape[1]),
        "occupancy": {"size_xyz": list(env.grid.size), "voxel": float(env.grid.voxel), "classes": list(CLASS_NAMES)},
        "instructions": list(INSTRUCTIONS),
        "env_kwargs": {
            "task": task_name,
            "resolution": list(env.resolution),
            "obs_keys": list(env.obs_keys),
            "occupancy_size": list(env.grid.size),
            "occupancy_voxel": float(env.grid.voxel),
        },
    }


# ---------------------------------------------------------------------------------------- writer
class ShardWriter:
    """Packs finished episodes into shards on a background thread, behind a bounded queue.

    Owns the manifest while it runs: a shard is listed (and the manifest replaced) only once the
    shard file is complete on disk.
    """

    def __init__(self, root: Path, manifest: Manifest, shard_episodes: int, queue_episodes: int, shard_kwargs: Mapping[str, Any]):
        self.root, self.manifest = root, manifest
        self.shard_episodes = max(1, int(shard_episodes))
        self.shard_kwargs = dict(shard_kwargs)
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, int(queue_episodes)))
        self.error: BaseException | None = None
        self.pending: list[Episode] = []
        self.written_episodes = 0
        self.written_steps = 0
        self.busy_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="dreamgym-shard-writer", daemon=True)
        self._thread.start()

    # ---- called from the collecting thread
    def put(self, kind: str, item: Any = None) -> None:
        while True:
            if self.error is not None:
                raise RuntimeError(f"writing shards to {self.root} failed: {self.error}") from self.error
            try:
                self.queue.put((kind, item), timeout=0.5)
                return
            except queue.Full:
                continue

    def sync(self) -> None:
        """Wait until the writer has handled everything queued so far."""
        done = threading.Event()
        self.put("sync", done)
        while not done.wait(0.5):
            if self.error is not None or not self._thread.is_alive():
                break
        if self.error is not None:
            raise RuntimeError(f"writing shards to {self.root} failed: {self.error}") from self.error

    def close(self) -> None:
        """Write whatever is pending and stop; raises if writing failed."""
        if self._thread.is_alive():
            self.put("close")
            self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"writing shards to {self.root} failed: {self.error}") from self.error

    # ---- the writer thread
    def _run(self) -> None:
        try:
            while True:
                kind, item = self.queue.get()
                if kind == "episode":
                    self.pending.append(item)
                    if len(self.pending) >= self.shard_episodes:
                        self._flush()
                elif kind == "round_start":
                    rounds = self.manifest.data["rounds"]
                    if not any(r["index"] == item["index"] for r in rounds):
                        rounds.append(dict(item, complete=False))
                elif kind == "round_end":
                    self._flush()
                    for r in self.manifest.data["rounds"]:
                        if r["index"] == item:
                            r["complete"] = True
                    self.manifest.save()
                elif kind == "sync":
                    item.set()
                elif kind == "close":
                    self._flush()
                    self.manifest.save()
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the collecting thread
            self.error = e

    def _flush(self) -> None:
        if not self.pending:
            return
        t0 = time.perf_counter()
        first = self.manifest.num_episodes
        episodes = list(enumerate(self.pending, start=first))
        entry = write_shard(self.root, self.manifest.next_shard_name(), episodes, self.manifest.data["env"], **self.shard_kwargs)
        self.manifest.shards.append(entry)
        self.manifest.save()
        self.written_episodes += len(self.pending)
        self.written_steps += entry["steps"]
        self.pending = []
        self.busy_seconds += time.perf_counter() - t0


# ---------------------------------------------------------------------------------------- buffers
class EpisodeBuffers:
    """Per-world episode buffers, written for all B worlds at once each step (no per-world loop).

    ``obs_space``: a Dict space (or a mapping key -> space) of one world's observation. ``nq`` and
    ``nv`` None: no physics state is kept (a Gymnasium env's episodes). ``action_shape`` and
    ``action_dtype``: one action's (the room's (6,) float32 by default).
    """

    def __init__(
        self,
        B: int,
        capacity: int,
        obs_space,
        nq: int | None,
        nv: int | None,
        action_shape: tuple[int, ...] = (6,),
        action_dtype=np.float32,
    ):
        self.B, self.capacity = B, int(capacity)
        n = self.capacity + 1
        spaces = getattr(obs_space, "spaces", obs_space)
        self.obs = {k: np.zeros((B, n, *s.shape), dtype=s.dtype) for k, s in spaces.items()}
        self.qpos = None if nq is None else np.zeros((B, n, nq), np.float32)
        self.qvel = None if nv is None else np.zeros((B, n, nv), np.float32)
        self.actions = np.zeros((B, self.capacity, *action_shape), action_dtype)
        self.rewards = np.zeros((B, self.capacity), np.float32)
        self.terminations = np.zeros((B, self.capacity), bool)
        self.truncations = np.zeros((B, self.capacity), bool)
        self.pos = np.zeros(B, np.int64)  # steps taken in each world's current episode
        self.rows = np.arange(B)

    def put_obs(self, rows: np.ndarray, obs: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray] | None = None) -> None:
        """Observation (and physics state, if kept) of ``rows`` at their current position."""
        t = self.pos[rows]
        for k, v in obs.items():
            self.obs[k][rows, t] = v[rows]
        if self.qpos is not None:
            self.qpos[rows, t] = state["qpos"][rows]
            self.qvel[rows, t] = state["qvel"][rows]

    def put_transition(self, actions: np.ndarray, rewards: np.ndarray, term: np.ndarray, trunc: np.ndarray) -> None:
        if int(self.pos.max()) >= self.capacity:
            raise RuntimeError(f"an episode ran past {self.capacity} steps, the task's max_steps; the env did not truncate it")
        r, t = self.rows, self.pos
        self.actions[r, t] = actions
        self.rewards[r, t] = rewards
        self.terminations[r, t] = term
        self.truncations[r, t] = trunc
        self.pos += 1

    def take(self, w: int, attrs: dict[str, Any]) -> Episode:
        """A copy of world ``w``'s current episode (its ``pos`` steps)."""
        T = int(self.pos[w])
        return Episode(
            observations={k: v[w, : T + 1].copy() for k, v in self.obs.items()},
            actions=self.actions[w, :T].copy(),
            rewards=self.rewards[w, :T].copy(),
            terminations=self.terminations[w, :T].copy(),
            truncations=self.truncations[w, :T].copy(),
            qpos=None if self.qpos is None else self.qpos[w, : T + 1].copy(),
            qvel=None if self.qvel is None else self.qvel[w, : T + 1].copy(),
            attrs=attrs,
        )


def _np(tree: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in tree.items()}


# ---------------------------------------------------------------------------------------- collect
