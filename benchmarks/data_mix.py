"""What a world model's training data hold, per task: steps, behaviours, and contact with props.

    python -m dreamgym.benchmarks.data_mix DIR [DIR ...] --out benchmarks/results/data_mix.json

Per dataset (one task each): episodes and steps per split and per behaviour, and how much of it
touches a prop: the share of steps in which a prop moved more than ``MOVE_M`` (past an episode's
first ``SETTLE_STEPS`` steps, when every prop settles into the floor's soft contact), the share in
which a joint of either body was within ``NEAR_M`` of a prop, and the number of pushes (a prop
carried more than ``PUSH_M`` over ``PUSH_WINDOW`` steps).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from dreamgym.rollouts.episodes import EpisodeReader, index_dataset, props_from_qpos

MOVE_M = 0.005  # metres per step
SETTLE_STEPS = 6
NEAR_M = 0.35  # metres from a joint to a prop's centre
PUSH_M = 0.05
PUSH_WINDOW = 16


def _joints(motion: np.ndarray) -> np.ndarray:
    import torch

    from dreamgym.worldmodel.data import joints_world

    return joints_world(torch.from_numpy(motion).float()).numpy()


def dataset_mix(path: str | Path) -> dict:
    """The figures of one dataset directory (both splits)."""
    index = index_dataset([Path(path)], "all", verify="size")
    man = index.manifests[0].data
    reader = EpisodeReader(index.episodes, ("motion", "partner_motion", "qpos"))
    steps, moved, near, pushes = Counter(), 0, 0, 0
    per_behaviour, split_steps = Counter(), Counter()
    counted = 0
    for e, ref in enumerate(index.episodes):
        rows = reader.episode(e)
        props = props_from_qpos(rows["qpos"])  # (T+1, 4, 3)
        T = props.shape[0] - 1
        steps["all"] += T
        split_steps[ref.split] += T
        per_behaviour[ref.behaviour or "unknown"] += T
        disp = np.linalg.norm(props[1:] - props[:-1], axis=-1).max(-1)  # (T,)
        live = np.arange(T) >= SETTLE_STEPS
        moved += int((disp[live] > MOVE_M).sum())
        counted += int(live.sum())
        joints = np.concatenate([_joints(rows["motion"]), _joints(rows["partner_motion"])], 1)  # (T+1, 44, 3)
        d = np.linalg.norm(joints[:, :, None] - props[:, None], axis=-1).min((1, 2))
        near += int((d[:T] < NEAR_M).sum())
        for t in range(SETTLE_STEPS, T - PUSH_WINDOW + 1, PUSH_WINDOW):
            pushes += int((np.linalg.norm(props[t + PUSH_WINDOW, :, :2] - props[t, :, :2], axis=-1) > PUSH_M).sum())
    reader.close()
    return {
        "dir": str(path),
        "task": man["env"].get("task"),
        "episodes": len(index.episodes),
        "steps": steps["all"],
        "steps_per_split": dict(split_steps),
        "steps_per_behaviour": dict(per_behaviour),
        "share_prop_moved": moved / max(counted, 1),
        "share_body_near_prop": near / max(steps["all"], 1),
        "pushes": pushes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = [dataset_mix(d) for d in args.dirs]
    out = {
        "definitions": {"move_m": MOVE_M, "settle_steps": SETTLE_STEPS, "near_m": NEAR_M, "push_m": PUSH_M, "push_window": PUSH_WINDOW},
        "datasets": rows,
        "total_steps": sum(r["steps"] for r in rows),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    for r in rows:
        print(
            f"{r['task']}: {r['episodes']} episodes, {r['steps']} steps {r['steps_per_split']}, "
            f"prop moved {100 * r['share_prop_moved']:.1f} %, body near a prop {100 * r['share_body_near_prop']:.1f} %, "
            f"{r['pushes']} pushes; {r['steps_per_behaviour']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
