"""``dreamgym avatar-demo out=DIR``: a scripted conversation with the shipped social avatar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dreamgym.avatars.exports import export_episode
from dreamgym.envs import partner as P
from dreamgym.policies.social import SocialAvatarPolicy
from dreamgym.policies.social_scenes import SocialSceneTask
from dreamgym.policies.social_train import evaluate, load_motion_encoder

SHIPPED_SOCIAL = Path(__file__).resolve().parent.parent / "policies" / "checkpoints" / "social"


def run(cfg) -> int:
    """``dreamgym avatar-demo out=DIR``: a scripted conversation, the avatar responding, video + motions + metrics."""
    import imageio.v2 as imageio

    torch.set_num_threads(int(cfg.num_threads))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # "default": the shipped avatar, beside the installed package (not relative to the working directory)
    ckpt = SHIPPED_SOCIAL if cfg.checkpoint == "default" else Path(cfg.checkpoint)
    pol = SocialAvatarPolicy.from_pretrained(ckpt)
    fe = load_motion_encoder(ckpt)
    seq = [getattr(P, b.upper()) for b in cfg.conversation]
    task = SocialSceneTask(behaviours=seq, segment=int(cfg.segment))
    task.max_steps = int(cfg.steps)
    seeds = [int(cfg.room_seed) + k for k in range(int(cfg.scenes))]
    metrics, ref, gen_rec = evaluate(pol, fe, seeds, task=task, render=True)
    with imageio.get_writer(str(out / "conversation.mp4"), fps=20) as w:
        for ego, over in gen_rec["frames"]:
            ego = np.kron(ego, np.ones((2, 2, 1), np.uint8)) if ego.shape[0] == 64 else ego
            w.append_data(np.concatenate((ego, over), 1))
    motions = {}
    for who, key in (("avatar", "motion"), ("partner", "partner_motion"), ("avatar_reference", "motion")):
        rec = ref if who == "avatar_reference" else gen_rec
        motions[who] = {k: str(v) for k, v in export_episode(rec[key][:, 0].numpy(), 20.0, out, who).items()}
    metrics["motions"] = motions
    metrics["conversation"] = list(cfg.conversation)
    metrics["video"] = "conversation.mp4"
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    print(json.dumps(metrics, indent=1, default=str))
    return 0
