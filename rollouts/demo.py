"""``dreamgym demo``: the end-to-end demo on the embedded default.

Builds a seeded room per task, runs the task's scripted expert in the C MuJoCo env, writes an mp4
per task with the ego view (upscaled) beside the overhead third-person view, and prints success.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm


def ego_frame(ego_rgb: np.ndarray, scale: int) -> np.ndarray:
    """(3, H, W) uint8 -> (H*scale, W*scale, 3) for video."""
    return np.kron(ego_rgb.transpose(1, 2, 0), np.ones((scale, scale, 1), np.uint8))


def run(cfg: DictConfig) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    import imageio.v2 as imageio

    from dreamgym.envs.ego_room_env import EgoRoomEnv

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for k, task in enumerate(cfg.tasks):
        env = EgoRoomEnv(task=task, resolution=int(cfg.resolution), render_mode="rgb_array",
                         render_resolution=int(cfg.resolution) * int(cfg.video_scale))
        obs, info = env.reset(seed=int(cfg.seed) + k)
        path = out / f"{task}.mp4"
        tmp = out / f".{task}.tmp.mp4"
        writer = imageio.get_writer(tmp, fps=env.metadata["render_fps"], macro_block_size=1)
        ret, success, steps = 0.0, False, 0
        with tqdm(total=env.core.task.max_steps, desc=f"{task}: {info['instruction_text']}", unit="step") as bar:
            while True:
                writer.append_data(np.concatenate([ego_frame(obs["ego_rgb"], int(cfg.video_scale)), env.render()], axis=1))
                obs, r, term, trunc, info = env.step(env.expert_action())
                ret += r
                steps += 1
                bar.update(1)
                if term or trunc:
                    success = info["success"]
                    break
        writer.append_data(np.concatenate([ego_frame(obs["ego_rgb"], int(cfg.video_scale)), env.render()], axis=1))
        writer.close()
        os.replace(tmp, path)
        env.close()
        results[task] = {"instruction": info["instruction_text"], "success": bool(success), "return": round(ret, 3),
                         "steps": steps, "video": str(path)}
        print(f"{task:>7}: {'success' if success else 'failure'} in {steps} steps, return {ret:.2f} -> {path}")
    (out / "demo.json").write_text(json.dumps(results, indent=2))
    return 0
