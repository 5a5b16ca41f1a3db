"""Where dreamed episodes begin: real K-step contexts, from the simulator or from recorded data.

A dream env starts each episode from K real observations (the world model's context) and the
episode's bookkeeping (the room's task parameters, the partner's script and its progress). A
*start source* provides them:

- ``SimulatorStarts``: fresh rooms (random training rooms, or the room seeds it is given) in a
  batched ``EgoRoomVecEnv``, K-1 steps of a context policy.
  Every simulator step it runs is counted in ``real_steps`` (the real experience a dream-trained
  policy spent, as the DIAMOND-style loop accounts for it).
- ``DatasetStarts``: K-step windows of the episodes of a ``dreamgym collect`` directory (its train,
  held-out or whole split). They cost no new real steps; ``describe()`` names the data.

``make_start_source`` turns the dream env's ``starts`` argument (``"simulator"``,
``"dataset:<dir>"``, ``"dataset:<dir>:<split>"`` or a ``StartSource``) into a source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch

from dreamgym.envs import partner as P
from dreamgym.envs.occupancy import GridSpec
from dreamgym.envs.tasks import Task

CONTEXT_POLICIES = ("noisy_expert", "expert", "random", "still")
SPLITS = ("train", "heldout", "all")
SCRIPT_FIELDS = ("behaviour", "duration", "target", "cursor", "timer")


@dataclass(frozen=True)
class StartSpec:
    """What a dream env needs of its starts (given to ``StartSource.bind``)."""

    task: Task
    context: int  # K observations per start
    keys: tuple[str, ...]  # context keys: motion, partner_motion, props and the model's frame / grid inputs
    resolution: int  # ego frame side, for ``ego_rgb`` / ``ego_depth`` in ``keys``
    grid: GridSpec  # the occupancy grid, for ``occupancy`` in ``keys``
    num_envs: int  # the dream env's batch size (a simulator source runs this many worlds at a time)


@dataclass
class Starts:
    """N real episode starts: K-step contexts and the episodes' bookkeeping, (N, ...) each, on the CPU."""

    context: dict[str, torch.Tensor]  # key -> (N, K, ...) in env dtypes; ``props`` (N, K, 4, 3)
    actions: torch.Tensor  # (N, K-1, 6) the agent's actions after context steps 0..K-2
    target: torch.Tensor  # (N,) the task's target prop
    instruction: torch.Tensor  # (N,) index into ``envs.tasks.INSTRUCTIONS``
    goal: torch.Tensor  # (N, 2)
    mat_pos: torch.Tensor  # (N, 2)
    room_half: torch.Tensor  # (N, 2)
    room_seed: torch.Tensor  # (N,)
    script: dict[str, torch.Tensor]  # the partner's script and its progress (``SCRIPT_FIELDS``)
    step: torch.Tensor  # (N,) episode step of the last context observation
    partner_actions: torch.Tensor  # (N, K-1, 6) the partner's commands after context steps 0..K-2

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def take(self, idx: torch.Tensor) -> Starts:
        """The starts at ``idx`` (a row may repeat)."""
        return _map(self, lambda t: t[idx])

    @staticmethod
    def cat(parts: Sequence[Starts]) -> Starts:
        """``parts`` one after the other."""
        if len(parts) == 1:
            return parts[0]
        out = {}
        for f in fields(Starts):
            vals = [getattr(p, f.name) for p in parts]
            out[f.name] = {k: torch.cat([v[k] for v in vals]) for k in vals[0]} if isinstance(vals[0], dict) else torch.cat(vals)
        return Starts(**out)


def _map(st: Starts, fn: Callable[[torch.Tensor], torch.Tensor]) -> Starts:
    out = {}
    for f in fields(Starts):
        v = getattr(st, f.name)
        out[f.name] = {k: fn(x) for k, x in v.items()} if isinstance(v, dict) else fn(v)
    return Starts(**out)


@runtime_checkable
class StartSource(Protocol):
    """Provides real starts to a dream env (see the module docstring)."""

    real_steps: int  # simulator steps run so far to make starts (0 for recorded data)

    def bind(self, spec: StartSpec) -> None:
        """Prepare to draw starts as ``spec`` asks; raises ``ValueError`` naming what cannot be met."""
        ...

    def draw(self, n: int) -> Starts:
        """``n`` starts."""
        ...

    def reseed(self, seed: int | None) -> None:
        """Restart the sequence of starts from ``seed``."""
        ...

    def describe(self) -> dict[str, Any]:
        """Where the starts come from (JSON-serialisable), with ``kind`` and ``real_steps``."""
        ...

    def close(self) -> None:
        """Release what the source holds (a simulator, open files)."""
        ...


# ----------------------------------------------------------------------------------- simulator
def _check_rooms(rooms: Sequence[int] | None) -> list[int] | None:
    """``rooms`` as a list of whole-number room seeds >= 0, or None; refuses an empty or bad list."""
    if rooms is None:
        return None
    out = list(rooms)
    if not out:
        raise ValueError("rooms=[] gives no room to start in; pass room seeds, or None for random training rooms")
    bad = [r for r in out if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0]
    if bad:
        raise ValueError(f"rooms must be whole-number room seeds >= 0, got {bad[:3]}")
    return [int(r) for r in out]


class SimulatorStarts:
    """Fresh simulator rooms, each run K-1 steps by a context policy (``noisy_expert`` by default).

    Starts are made ``pool`` at a time (default: the dream env's ``num_envs``) in one batched
    ``EgoRoomVecEnv``; a world whose episode ends within those steps is dropped. A reseed to the seed
    of the last reseed hands out that seed's first batch again instead of re-running the simulator
    (the same starts, no new real steps).

    The rooms are random training rooms (seeds below 2**31 - 1) unless ``rooms`` lists the room
    seeds to use: they are handed out in that order, cyclically, and every reseed starts again at
    the first, so a dream can begin in the same (e.g. held-out) rooms as a simulator evaluation.
    """

    def __init__(
        self,
        policy: str = "noisy_expert",
        noise: float = 0.3,
        pool: int | None = None,
        seed: int | None = None,
        rooms: Sequence[int] | None = None,
    ):
        if policy not in CONTEXT_POLICIES:
            raise ValueError(f"unknown context policy {policy!r}; valid: {list(CONTEXT_POLICIES)}")
        if pool is not None and int(pool) < 1:
            raise ValueError(f"pool must be at least 1, got {pool}")
        self.rooms = _check_rooms(rooms)
        self._room_cursor = 0
        self.policy, self.noise, self.pool = policy, float(noise), pool
        self.real_steps = 0
        self.env = None
        self.spec: StartSpec | None = None
        self._buffer: Starts | None = None
        self._next = 0
        # (seed, batch, rng state, gen state, room cursor) after the first batch of that seed
        self._first: tuple[int | None, Starts, dict, torch.Tensor, int] | None = None
        self._seed: int | None = None
        self.reseed(seed)

    def bind(self, spec: StartSpec) -> None:
        from dreamgym.envs.vec_env import EgoRoomVecEnv

        if self.spec == spec:
            return
        if self.env is not None:
            self.env.close()
        obs_keys = [k for k in spec.keys if k != "props"] + ["instruction"]
        n = max(spec.num_envs, int(self.pool or spec.num_envs))
        self.env = EgoRoomVecEnv(
            num_envs=n,
            task=spec.task,
            resolution=spec.resolution,
            obs_keys=obs_keys,
            occupancy_size=spec.grid.size,
            occupancy_voxel=spec.grid.voxel,
            seed=self._seed,
            return_tensors=True,
        )
        self.spec, self._first = spec, None
        self.reseed(self._seed)

    def reseed(self, seed: int | None) -> None:
        self._seed = seed
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device="cpu").manual_seed(0 if seed is None else int(seed))
        self._buffer, self._next = None, 0
        self._room_cursor = 0
        if self._first is not None and (seed is None or self._first[0] != seed):
            self._first = None

    def draw(self, n: int) -> Starts:
        parts, got = [], 0
        while got < n:
            if self._buffer is None or self._next >= len(self._buffer):
                self._buffer, self._next = self._batch(), 0
            take = min(n - got, len(self._buffer) - self._next)
            parts.append(self._buffer.take(torch.arange(self._next, self._next + take)))
            self._next += take
            got += take
        return Starts.cat(parts)

    def describe(self) -> dict[str, Any]:
        rooms = None if self.rooms is None else {"count": len(self.rooms), "first": self.rooms[0], "last": self.rooms[-1]}
        return {"kind": "simulator", "context_policy": self.policy, "noise": self.noise, "rooms": rooms, "real_steps": self.real_steps}

    def close(self) -> None:
        if self.env is not None:
            self.env.close()

    def _batch(self) -> Starts:
        """A new batch of starts, or the first batch of this seed again (see the class docstring)."""
        if self._first is not None and self._first[0] == self._seed and self._buffer is None:
            _, batch, rng_state, gen_state, self._room_cursor = self._first
            self.rng.bit_generator.state = rng_state
            self.gen.set_state(gen_state)
            return batch
        first = self._buffer is None
        batch = self._run()
        if first and self._seed is not None:
            self._first = (self._seed, batch, self.rng.bit_generator.state, self.gen.get_state(), self._room_cursor)
        return batch

    def _room_seeds(self, n: int) -> list[int]:
        """The next ``n`` rooms: from ``rooms`` in order (cyclically), else random training rooms."""
        if self.rooms is None:
            return [int(s) for s in self.rng.integers(2**31 - 1, size=n)]
        at = self._room_cursor
        self._room_cursor = (at + n) % len(self.rooms)
        return [self.rooms[(at + i) % len(self.rooms)] for i in range(n)]

    def _props(self) -> torch.Tensor:
        from .data import props_from_qpos

        return props_from_qpos(self.env.sim_state()["qpos"].cpu())

    def _action(self) -> torch.Tensor:
        B = self.env.num_envs
        rand = torch.rand(B, 6, generator=self.gen) * 2 - 1
        if self.policy == "random":
            return rand
        if self.policy == "still":
            return torch.zeros(B, 6)
        a = self.env.expert_actions().cpu()
        if self.policy == "noisy_expert":
            a = a + self.noise * torch.randn(B, 6, generator=self.gen)
        return a.clamp(-1, 1)

    def _run(self) -> Starts:
        if self.env is None or self.spec is None:
            raise RuntimeError("SimulatorStarts.draw called before bind")
        env, K = self.env, self.spec.context
        seeds = self._room_seeds(env.num_envs)
        obs, _ = env.reset_tensors(room_seeds=seeds)
        frames = [dict(obs, props=self._props())]
        acts, pacts, alive = [], [], torch.ones(env.num_envs, dtype=torch.bool)
        for _ in range(K - 1):
            a = self._action()
            obs, _, term, trunc, _ = env.step_tensors(a.to(env.device))
            alive &= ~(term | trunc).cpu()
            acts.append(a)
            pacts.append(env.core.partner_action.cpu().clone())
            frames.append(dict(obs, props=self._props()))
        self.real_steps += env.num_envs * (K - 1)
        core, s = env.core, env.core.scripts
        none = torch.zeros(env.num_envs, 0, 6)
        st = Starts(
            context={k: torch.stack([f[k].cpu() for f in frames], 1) for k in self.spec.keys},
            actions=torch.stack(acts, 1) if acts else none,
            target=core.params.target.cpu(),
            instruction=core.params.instruction.cpu(),
            goal=core.params.goal.cpu(),
            mat_pos=core.mat_pos.cpu(),
            room_half=core.room_half.cpu(),
            room_seed=torch.tensor(seeds),
            script={k: getattr(s, k).cpu() for k in SCRIPT_FIELDS},
            step=core.steps.cpu(),
            partner_actions=torch.stack(pacts, 1) if pacts else none,
        )
        return st.take(alive.nonzero()[:, 0])


# ----------------------------------------------------------------------------------- dataset
class RecordedWindows(NamedTuple):
    """K-step windows of a dataset split: how many, the tasks recorded, and a reader of window i."""

    count: int
    tasks: set[str]
    read: Callable[[int], dict[str, torch.Tensor]]
    close: Callable[[], None]


def open_windows(path: str | Path, split: str, context: int, keys: Sequence[str]) -> RecordedWindows:
    """The K-step windows of ``path``'s ``split`` through the dataset reader (``rollouts.loader``).

    A window holds each of ``keys`` (K, ...), ``qpos`` (K, nq), ``actions`` and ``partner_actions``
    (K, 6), and ``room_seed`` and ``t0`` (its first step in its episode) as scalars.
    """
    from dreamgym.rollouts.loader import WindowDataset

    ds = WindowDataset(path, context=context, horizon=0, split=split, keys=[*keys, "qpos", "partner_actions"])
    return RecordedWindows(len(ds), {str(e["task"]) for e in ds.episodes}, ds.__getitem__, ds.close)


class DatasetStarts:
    """K-step windows of the episodes recorded in a ``dreamgym collect`` directory.

    Windows are drawn uniformly (with replacement) from the ``split`` (``train``, ``heldout`` or
    ``all``; rooms are split by seed, as for world-model training). The dataset's task must be the
    dream env's and its ego frames the world model's size. Recorded starts cost no new real steps.
    """

    def __init__(self, path: str | Path, split: str = "train", seed: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        self.path, self.split = Path(path), split
        self.real_steps = 0
        self.spec: StartSpec | None = None
        self.windows: RecordedWindows | None = None
        self._core = None
        self.reseed(seed)

    def bind(self, spec: StartSpec) -> None:
        from dreamgym.envs.core import EgoRoomCore

        if self.spec == spec:
            return
        self.close()
        keys = [k for k in spec.keys if k != "props"]
        w = open_windows(self.path, self.split, spec.context, keys)
        if w.count == 0:
            raise ValueError(f"{self.path} has no {spec.context}-step windows in its {self.split!r} split")
        if w.tasks != {spec.task.name}:
            raise ValueError(f"{self.path} records task {sorted(w.tasks)}, but the dream env runs {spec.task.name!r}")
        first = w.read(0)
        for k in ("ego_rgb", "ego_depth"):
            if k in first and tuple(first[k].shape[-2:]) != (spec.resolution, spec.resolution):
                h, wd = first[k].shape[-2:]
                raise ValueError(f"{self.path} holds {h}x{wd} ego frames, the world model takes {spec.resolution}x{spec.resolution}")
        if "occupancy" in first and tuple(first["occupancy"].shape[1:]) != spec.grid.shape:
            raise ValueError(
                f"{self.path} holds occupancy grids of {tuple(first['occupancy'].shape[1:])}, the world model's are {spec.grid.shape}"
            )
        self.windows, self.spec = w, spec
        self._core = EgoRoomCore(spec.task, 1, "cpu", spec.grid)  # the rooms' task parameters, as the simulator sets them
        self._rooms: dict[int, dict[str, Any]] = {}

    def reseed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int) -> Starts:
        if self.windows is None or self.spec is None:
            raise RuntimeError("DatasetStarts.draw called before bind")
        K = self.spec.context
        rows = [self.windows.read(int(i)) for i in self.rng.integers(self.windows.count, size=int(n))]
        book = [self._episode(int(r["room_seed"]), int(r["t0"]) + K - 1) for r in rows]
        from .data import props_from_qpos

        ctx = {k: torch.stack([r[k] for r in rows]) for k in self.spec.keys if k != "props"}
        ctx["props"] = props_from_qpos(torch.stack([r["qpos"] for r in rows]))
        return Starts(
            context={k: ctx[k] for k in self.spec.keys},
            actions=torch.stack([r["actions"][: K - 1] for r in rows]).float(),
            room_seed=torch.tensor([int(r["room_seed"]) for r in rows]),
            partner_actions=torch.stack([r["partner_actions"][: K - 1] for r in rows]).float(),
            **{k: torch.stack([b[k] for b in book]) for k in ("target", "instruction", "goal", "mat_pos", "room_half", "step")},
            script={k: torch.stack([b["script"][k] for b in book]) for k in SCRIPT_FIELDS},
        )

    def _episode(self, room_seed: int, step: int) -> dict[str, Any]:
        """The bookkeeping of room ``room_seed``'s episode at ``step``, as the simulator had it."""
        room = self._rooms.get(room_seed)
        if room is None:  # a room's task parameters and script are a function of its seed: set it up once
            core = self._core
            core.start_episodes([0], [room_seed])
            s = core.scripts
            room = self._rooms[room_seed] = {
                "target": core.params.target[0].clone(),
                "instruction": core.params.instruction[0].clone(),
                "goal": core.params.goal[0].clone(),
                "mat_pos": core.mat_pos[0].clone(),
                "room_half": core.room_half[0].clone(),
                "packed": {"behaviour": s.behaviour[0].clone(), "duration": s.duration[0].clone(), "target": s.target[0].clone()},
            }
        at = P.scripts_at(room["packed"], [step])
        return {k: v for k, v in room.items() if k != "packed"} | {
            "step": torch.tensor(step),
            "script": {k: getattr(at, k)[0] for k in SCRIPT_FIELDS},
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "dataset",
            "path": str(self.path),
            "split": self.split,
            "windows": None if self.windows is None else self.windows.count,
            "real_steps": 0,
        }

    def close(self) -> None:
        if self.windows is not None:
            self.windows.close()
        self.windows, self.spec = None, None


def make_start_source(
    starts: str | StartSource, context_policy: str | None = None, pool: int | None = None, seed: int | None = None
) -> StartSource:
    """The start source that ``starts`` names: ``"simulator"``, ``"dataset:<dir>"`` (train split),
    ``"dataset:<dir>:<split>"`` or a ``StartSource`` (returned as it is).

    ``context_policy`` and ``pool`` configure a simulator source and are refused with any other.
    """
    if isinstance(starts, StartSource):
        if context_policy is not None or pool is not None:
            raise ValueError("context_policy and starts_pool configure simulator starts; set them on the StartSource passed as starts=")
        return starts
    if not isinstance(starts, str):
        raise TypeError(f"starts must be 'simulator', 'dataset:<dir>[:<split>]' or a StartSource, got {type(starts).__name__}")
    if starts == "simulator":
        return SimulatorStarts(context_policy or "noisy_expert", pool=pool, seed=seed)
    if starts.startswith("dataset:") and len(starts) > len("dataset:"):
        if context_policy is not None or pool is not None:
            raise ValueError(
                "context_policy and starts_pool configure simulator starts; recorded starts (starts='dataset:...') take neither"
            )
        path, split = starts[len("dataset:") :], "train"
        head, _, tail = path.rpartition(":")
        if head and tail in SPLITS:
            path, split = head, tail
        return DatasetStarts(path, split, seed=seed)
    raise ValueError(f"starts must be 'simulator', 'dataset:<dir>' or 'dataset:<dir>:<split>' (split in {list(SPLITS)}), got {starts!r}")
