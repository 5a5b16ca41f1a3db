"""eval-wm's sampling plan: held-out episodes per task, evaluation starts, each task's target object.

**Starts.** Every row ``t0`` of an episode from ``K - 1`` (a full context) to ``T - 2`` (one future
step left) is a valid start. ``sample_starts`` draws starts uniformly (seeded, without replacement)
from all valid ``(episode, t0)`` rows of a task, so an episode weighs in proportion to its length
and no start is favoured for reaching far: a horizon ``h`` is scored on the starts that have ``h``
future steps, and its ``n`` is reported beside it.

**Target object.** The object whose visibility a policy of the task needs most (index into
``OBJECT_NAMES``: the four props, then the partner): in reach and push the episode's target prop,
which the task draws at reset from the room seed (``Task.setup``, as ``EgoRoomCore`` does); in
social and avoid the partner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .eval_episodes import Episode

# The objects of the video metrics: the four props, then the partner.
OBJECT_NAMES: tuple[str, ...] = ("prop0", "prop1", "prop2", "prop3", "partner")
PARTNER_OBJECT = 4
PROP_TARGET_TASKS = ("reach", "push")


@dataclass(frozen=True)
class Start:
    """One evaluation start: the model sees rows ``t0-K+1 .. t0`` and dreams ``length`` steps."""

    episode: int  # index into the episode list
    t0: int  # row of the last context observation
    length: int  # how many future steps the episode has after t0 (capped at the largest horizon)


def split_by_task(episodes: Sequence[Episode]) -> dict[str, list[int]]:
    """Indices of ``episodes`` per task (``Episode.task``; ``""`` reads as ``unknown``), tasks sorted."""
    out: dict[str, list[int]] = {}
    for i, e in enumerate(episodes):
        out.setdefault(e.task or "unknown", []).append(i)
    return dict(sorted(out.items()))


def valid_rows(episodes: Sequence[Episode], indices: Sequence[int], context: int) -> list[tuple[int, int]]:
    """Every ``(episode index, t0)`` with a full context before and at least one step after."""
    return [(i, t) for i in indices for t in range(context - 1, episodes[i].length - 1)]


def sample_starts(
    episodes: Sequence[Episode], indices: Sequence[int], context: int, max_horizon: int, num: int | None, seed: int = 0
) -> list[Start]:
    """``num`` starts (all when ``num`` is None or the rows are fewer) drawn uniformly without
    replacement from the valid rows of ``episodes[indices]``, seeded. Returned longest rollout
    first (batches then hold rollouts of similar lengths)."""
    rows = valid_rows(episodes, indices, context)
    if num is not None and num < len(rows):
        pick = np.random.default_rng(seed).choice(len(rows), size=int(num), replace=False)
        rows = [rows[j] for j in pick]
    starts = [Start(i, t, min(max_horizon, episodes[i].length - 1 - t)) for i, t in rows]
    return sorted(starts, key=lambda s: (-s.length, s.episode, s.t0))


def task_seed(seed: int, task: str) -> int:
    """A seed per task, so that adding a task's data does not change another task's starts."""
    return int(np.random.default_rng([int(seed), sum(map(ord, task))]).integers(2**31))


def target_object(episode: Episode) -> int | None:
    """The episode's target object (index into ``OBJECT_NAMES``), or None when the task has none
    or the room is unknown. reach/push: the prop the task drew at reset from the room seed."""
    if episode.task in ("social", "avoid"):
        return PARTNER_OBJECT
    if episode.task not in PROP_TARGET_TASKS or episode.room_seed < 0:
        return None
    from dreamgym.envs import scene
    from dreamgym.envs.core import _rng_for
    from dreamgym.envs.tasks import INSTRUCTIONS, make_task

    task = make_task(episode.task)
    spec, target, instruction, *_ = task.setup(scene.generate_room(int(episode.room_seed)), _rng_for(int(episode.room_seed), task))
    if episode.instruction is not None and episode.instruction != instruction:
        raise ValueError(
            f"episode {episode.name or episode.room_seed}: its instruction {INSTRUCTIONS[episode.instruction]!r} is not the one "
            f"its room draws ({INSTRUCTIONS[instruction]!r}); the dataset's room seeds do not match its task"
        )
    return int(target)
