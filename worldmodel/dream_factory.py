"""What ``gym.make("dreamgym/Dream-v0", ...)`` and ``gym.make_vec`` build: the room's dream or a Gymnasium env's.

With ``source_env=<id>``, or a checkpoint of a vector world model (trained on a ``collect env=<id>``
dataset), the dream is that env's (``worldmodel.vector_dream``); otherwise the room's
(``worldmodel.dream_env``), as before.
"""

from __future__ import annotations

from typing import Any


def _is_vector(source_env: Any, model: Any) -> bool:
    if source_env is not None:
        return True
    from .vector import VectorWorldModel

    if isinstance(model, VectorWorldModel):
        return True
    if model is None or not isinstance(model, (str, bytes)) and not hasattr(model, "__fspath__"):
        return False
    from .load import checkpoint_kind

    try:
        return checkpoint_kind(model) == "vector"
    except (FileNotFoundError, ValueError):
        return False  # the room's env reports the problem with the path


def make_dream_env(world_model: Any = None, *args: Any, source_env: str | None = None, checkpoint: Any = None, **kwargs: Any):
    """One dreamed world: ``VectorDreamEnv`` for a Gymnasium env's model, else the room's ``DreamEnv``."""
    if _is_vector(source_env, world_model if world_model is not None else checkpoint):
        from .vector_dream import VectorDreamEnv

        if args:
            raise TypeError(f"a Gymnasium env's dream takes keyword arguments only (got {args!r}; the room's task does not apply)")
        return VectorDreamEnv(world_model, source_env=source_env, checkpoint=checkpoint, **kwargs)
    from .dream_env import DreamEnv

    return DreamEnv(world_model, *args, checkpoint=checkpoint, **kwargs)


def make_dream_vec_env(num_envs: int = 1, world_model: Any = None, *, source_env: str | None = None, checkpoint: Any = None, **kwargs: Any):
    """B dreamed worlds (``gym.make_vec``): ``VectorDreamVecEnv`` for a Gymnasium env's model, else ``DreamVecEnv``."""
    if _is_vector(source_env, world_model if world_model is not None else checkpoint):
        from .vector_dream import VectorDreamVecEnv

        return VectorDreamVecEnv(world_model, num_envs=num_envs, source_env=source_env, checkpoint=checkpoint, **kwargs)
    from .dream_env import DreamVecEnv

    if checkpoint is not None:
        if world_model is not None:
            raise ValueError("the world model was given twice; pass only world_model=<checkpoint dir>")
        world_model = checkpoint
    return DreamVecEnv(world_model, num_envs=num_envs, **kwargs)
