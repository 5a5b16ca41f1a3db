"""The ground-truth world: MuJoCo rooms, the SMPL-X-skeleton body, tasks and envs.

Importing this package registers the Gymnasium ids ``dreamgym/EgoRoom-v0`` (C MuJoCo, one world)
``dreamgym/EgoRoomVec-v0`` (MuJoCo Warp, B worlds, via ``gymnasium.make_vec``) and
``dreamgym/Dream-v0`` (the world model as an env, ``dreamgym.worldmodel.dream_factory``, one world
with ``gymnasium.make`` or B with ``gymnasium.make_vec``; registered by name so that this package
never imports the model; with default arguments it has ``EgoRoom-v0``'s spaces, and with
``source_env=<id>`` it dreams that Gymnasium env from its vector world model) and
``dreamgym/Pixels-v0`` (any rendering Gymnasium env observed through its frames only,
``dreamgym.rollouts.gym_pixels``).
"""

from gymnasium.envs.registration import register, registry

from .tasks import INSTRUCTIONS, TASKS, make_task

__all__ = ["EgoRoomEnv", "EgoRoomVecEnv", "INSTRUCTIONS", "TASKS", "make_task"]


def __getattr__(name):  # lazy: importing the package must not start Warp or OpenGL
    if name == "EgoRoomEnv":
        from .ego_room_env import EgoRoomEnv

        return EgoRoomEnv
    if name == "EgoRoomVecEnv":
        from .vec_env import EgoRoomVecEnv

        return EgoRoomVecEnv
    raise AttributeError(name)


if "dreamgym/EgoRoom-v0" not in registry:
    register(id="dreamgym/EgoRoom-v0", entry_point="dreamgym.envs.ego_room_env:EgoRoomEnv")
if "dreamgym/Dream-v0" not in registry:
    register(
        id="dreamgym/Dream-v0",
        entry_point="dreamgym.worldmodel.dream_factory:make_dream_env",
        vector_entry_point="dreamgym.worldmodel.dream_factory:make_dream_vec_env",
    )
if "dreamgym/EgoRoomVec-v0" not in registry:
    register(id="dreamgym/EgoRoomVec-v0", vector_entry_point="dreamgym.envs.vec_env:EgoRoomVecEnv")
if "dreamgym/Pixels-v0" not in registry:  # any rendering Gymnasium env, observed through its frames only
    register(id="dreamgym/Pixels-v0", entry_point="dreamgym.rollouts.gym_pixels:make_pixels_env", disable_env_checker=True)
