"""What ``train-policy`` does while SB3 learns: count episodes, checkpoint, show progress.

``TrainCallback`` is an SB3 callback. At the start of a rollout (after the previous update, the one
point where an SB3 run holds no half-collected data) it checks whether ``checkpoint_every`` more
env steps have passed; if so it **starts fresh episodes** in every world from a seed derived from
the run's seed and the step (``episode_seed``) and writes a checkpoint (``train_state``). An
uninterrupted run and a run resumed from that checkpoint therefore continue from the same env
state, optimizer, counters and RNG: their results are equal. The cost is that the episodes running
at a checkpoint are cut short (their last transitions stay in the data, as at a rollout's end).

Progress: a tqdm bar when stderr is a terminal; otherwise (output to a file) one line every
``log_every`` env steps with the steps, steps/s and the mean return of the recent episodes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from .train_state import TrainState, save_train_state


def episode_seed(seed: int, step: int, num_envs: int) -> int:
    """Room seed of the episodes started at checkpoint ``step``: below 2**31 - 1 - B like every
    training room (the held-out evaluation rooms start at 2**31)."""
    s = np.random.SeedSequence([int(seed), int(step), 11]).generate_state(1, np.uint64)[0]
    return int(s % np.uint64(2**31 - 1 - num_envs))


def restart_episodes(model: Any, seed: int, step: int) -> None:
    """Start fresh episodes in every world of the model's env, seeded by ``episode_seed``."""
    env = model.get_env()
    env.seed(episode_seed(seed, step, env.num_envs))
    model._last_obs = env.reset()
    model._last_episode_starts = np.ones((env.num_envs,), dtype=bool)


def recent_return(model: Any) -> tuple[float | None, int]:
    """Mean return of the episodes in SB3's recent-episode buffer (float64), and how many."""
    r = [float(e["r"]) for e in (model.ep_info_buffer or [])]
    return (float(np.mean(np.asarray(r, dtype=np.float64))) if r else None), len(r)


class TrainCallback(BaseCallback):
    """Episode counting, checkpoints with episode restarts, and progress (see the module docstring).

    Args:
        algo: ``ppo`` or ``sac`` (for the checkpoint's policy.json).
        out: the run folder (checkpoints go to ``<out>/checkpoints``).
        seed, steps, num_envs, checkpoint_every, log_every: as in ``configs/train_policy.yaml``.
        progress: show progress at all.
        meta: ``meta()`` gives what a checkpoint's policy.json records beside the network.
    """

    def __init__(
        self,
        algo: str,
        out: Path,
        seed: int,
        steps: int,
        num_envs: int,
        checkpoint_every: int,
        log_every: int,
        progress: bool,
        meta: Callable[[], dict[str, Any]],
    ):
        super().__init__()
        self.algo, self.out, self.seed, self.steps = algo, Path(out), int(seed), int(steps)
        self.every, self.log_every, self.progress, self.meta = int(checkpoint_every), int(log_every), bool(progress), meta
        self.episodes = 0  # finished episodes
        self.starts = int(num_envs)  # episodes started by resets (the first one; each checkpoint adds num_envs)
        self.wall_before = 0.0  # seconds spent by earlier runs of a resumed run
        self.last_checkpoint = 0
        self._pending: TrainState | None = None
        self._t0 = time.time()
        self._steps0 = 0
        self._last_line = 0
        self._bar = None
        self.real_steps_before = 0  # real simulator steps of the dream's starts before a resume
        self.real_steps_now: Callable[[], int] = lambda: 0  # ... and in this process (set by the trainer)

    # ------------------------------------------------------------------ resume
    def resume_from(self, state: TrainState) -> None:
        """Continue the counters of a checkpoint; its RNG states are put back at the first rollout."""
        self.episodes = int(state.extra["episodes"])
        self.starts = int(state.extra["starts"])
        self.real_steps_before = int(state.extra.get("real_steps", 0))
        self.wall_before = float(state.extra["wall_s"])
        self.last_checkpoint = state.step
        self._pending = state

    def counters(self) -> dict[str, Any]:
        real = self.real_steps_before + int(self.real_steps_now())
        return {"episodes": self.episodes, "starts": self.starts, "wall_s": self.wall_s(), "real_steps": real}

    def wall_s(self) -> float:
        return self.wall_before + time.time() - self._t0

    # ------------------------------------------------------------------ SB3 hooks
    def _on_training_start(self) -> None:
        self._t0 = time.time()
        self._steps0 = self._last_line = int(self.model.num_timesteps)
        if self.progress and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.steps, initial=self._steps0, desc=f"train-policy {self.algo}", unit="step", dynamic_ncols=True)

    def _on_rollout_start(self) -> None:
        t = int(self.model.num_timesteps)
        if self._pending is not None and t == self._pending.step:
            self._pending.restore_later(self.model)  # the moment the checkpoint was taken
            self._pending = None
            return
        if t // self.every > self.last_checkpoint // self.every:
            restart_episodes(self.model, self.seed, t)
            self.starts += self.model.get_env().num_envs
            save_train_state(self.model, self.algo, self.out, self.counters(), self.meta())
            self.last_checkpoint = t

    def _on_step(self) -> bool:
        dones = self.locals.get("dones")
        if dones is not None:
            self.episodes += int(np.sum(dones))
        if self.progress:
            self._show(int(self.model.num_timesteps))
        return True

    def _on_training_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.progress and self._last_line != int(self.model.num_timesteps):
            self._line(int(self.model.num_timesteps))

    # ------------------------------------------------------------------ progress
    def _show(self, t: int) -> None:
        if self._bar is not None:
            self._bar.update(t - self._bar.n)
            if t // 1000 > (t - self.model.get_env().num_envs) // 1000:
                mean, n = recent_return(self.model)
                self._bar.set_postfix_str(f"return {mean:.3f} ({n} ep)" if mean is not None else "no episode yet", refresh=False)
            return
        if t // self.log_every > self._last_line // self.log_every:
            self._line(t)

    def _line(self, t: int) -> None:
        self._last_line = t
        fps = (t - self._steps0) / max(1e-9, time.time() - self._t0)
        mean, n = recent_return(self.model)
        ret = f"mean episode return {mean:.3f} over the last {n} episodes" if mean is not None else "no episode finished yet"
        print(f"train-policy: {t}/{self.steps} steps, {fps:.0f} steps/s, {ret}", file=sys.stderr, flush=True)
