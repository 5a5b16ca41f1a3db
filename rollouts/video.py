"""``dreamgym video <dataset> out=FILE.mp4 episode=N``: an episode as an mp4, three panels wide.

Left to right: the ego camera (upscaled), a third-person overhead view and the occupancy grid
seen from above. The dataset stores no third-person frames: the overhead view is redrawn in the
C MuJoCo env from the episode's room seed and the physics state (``qpos``, ``qvel``) recorded at
every step. The occupancy panel shows, per column of voxels, the highest class over height, in the
agent's frame (it faces up, its left is left).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from .dataset import CorruptShardError, Manifest, check_shard, read_episode, require_room

# free, static, movable, partner, agent (envs.occupancy.CLASS_NAMES); partner and agent in their bodies' colours (scene.PARTNER_RGBA, scene.AGENT_RGBA)
OCCUPANCY_COLOURS = np.array([[236, 236, 236], [96, 96, 96], [232, 160, 40], [242, 90, 140], [64, 140, 242]], np.uint8)


def resize_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, C) -> (height, width, C) by nearest neighbour (pixel art stays crisp)."""
    rows = np.arange(height) * img.shape[0] // height
    cols = np.arange(width) * img.shape[1] // width
    return img[rows[:, None], cols[None, :]]


def occupancy_image(occupancy: np.ndarray, size: int) -> np.ndarray:
    """(Z, X, Y) class voxels -> (size, size, 3) uint8 bird's-eye view, agent facing up."""
    top = occupancy.max(axis=0)  # (X, Y): highest class in each column
    top = top[::-1, ::-1]  # rows: +x (forward) at the top; columns: +y (left) on the left
    rgb = OCCUPANCY_COLOURS[np.clip(top, 0, len(OCCUPANCY_COLOURS) - 1)]
    return resize_nearest(rgb, size, size)


def find_episode(root: Path, episode: int) -> tuple[Path, str, dict]:
    """Shard path, group and manifest entry of episode ``episode`` (its id, in collection order)."""
    m = Manifest.load(root)
    for shard, e in m.episodes():
        if e["id"] == int(episode):
            why = check_shard(root, shard)
            if why is not None:
                raise CorruptShardError(root / shard["file"], why)
            return root / shard["file"], e["group"], m.data["env"]
    raise ValueError(f"{root} has no episode {episode}; it holds episodes 0..{m.num_episodes - 1}")


def episode_frames(root: str | Path, episode: int, size: int = 256):
    """Yield the (size, 3 * size, 3) uint8 frames of an episode, one per observation (T + 1)."""
    from dreamgym.envs.ego_room_env import EgoRoomEnv

    path, group, env = find_episode(Path(root), episode)
    keys = [k for k in ("ego_rgb", "occupancy") if k in env["obs_keys"]]
    ep = read_episode(path, group, keys)
    sim = EgoRoomEnv(
        task=ep.attrs["task"], resolution=env["resolution"], render_mode="rgb_array", render_resolution=size, obs_keys=["task_obs"]
    )
    try:
        sim.reset(seed=int(ep.attrs["room_seed"]))
        blank = np.zeros((size, size, 3), np.uint8)
        for t in range(ep.steps + 1):
            ego = resize_nearest(ep.observations["ego_rgb"][t].transpose(1, 2, 0), size, size) if "ego_rgb" in keys else blank
            sim.set_sim_state(ep.qpos[t], ep.qvel[t])
            overhead = sim.render()
            occ = occupancy_image(ep.observations["occupancy"][t], size) if "occupancy" in keys else blank
            yield np.concatenate([ego, overhead, occ], axis=1)
    finally:
        sim.close()


def write_video(root: str | Path, episode: int, out: str | Path, size: int = 256, fps: float | None = None) -> int:
    """Write episode ``episode`` of the dataset at ``root`` to the mp4 ``out``; returns the frame count."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import imageio.v2 as imageio

    require_room(root, "video")
    size = int(size) // 2 * 2  # H.264 wants even sizes
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fps is None:
        fps = 1.0 / float(Manifest.load(root).data["env"]["control_dt"])
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    n = 0
    writer = imageio.get_writer(tmp, fps=float(fps), macro_block_size=1)
    try:
        for frame in episode_frames(root, episode, size):
            writer.append_data(frame)
            n += 1
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, out)
    return n


def run(cfg: DictConfig) -> int:
    """``dreamgym video``: see the module docstring and ``configs/video.yaml``."""
    if not cfg.get("path"):
        raise SystemExit("dreamgym video: give a dataset directory, e.g. `dreamgym video data/reach out=ep0.mp4 episode=0`")
    root = Path(cfg.path)
    out = cfg.get("out") or str(root / "videos" / f"episode_{int(cfg.episode):06d}.mp4")
    try:
        n = write_video(root, int(cfg.episode), out, int(cfg.size), cfg.get("fps"))
    except (FileNotFoundError, ValueError, CorruptShardError) as e:
        raise SystemExit(f"dreamgym video: {e}") from None
    print(f"{out}: episode {cfg.episode}, {n} frames")
    return 0
