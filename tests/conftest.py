import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless C MuJoCo rendering; must precede `import mujoco`

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def vec_env_factory():
    """Builds EgoRoomVecEnvs, caching one per configuration (Warp set-up is the slow part)."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    cache = {}

    def make(**kw):
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items()))
        if key not in cache:
            cache[key] = EgoRoomVecEnv(**kw)
        return cache[key]

    return make
