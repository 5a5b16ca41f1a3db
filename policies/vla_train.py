"""Training the VLA policy: behaviour cloning (DAgger) in the simulator, then fine-tuning in the dream.

Read top to bottom:

1. ``Collector``: B worlds of ``EgoRoomVecEnv`` per task (reach, push) step together; episodes
   run on from one round to the next, so a 400-step push is recorded to its end. Each episode
   gets one training phrasing of its instruction. Round 0 acts with the scripted expert plus
   Gaussian noise; later rounds act with the policy in a fraction of the episodes (DAgger), so the
   policy also learns to recover from its own mistakes. Every step is labelled with the expert's
   action (privileged state), but the stored inputs are only pixels, body motion and text.
   Episodes whose instruction is a held-out combination are run but never stored.
   The labels are the expert's actions made *imitable*: the reach expert knows where the target
   is even when it is behind the body, the policy only sees the frame. When the target is outside
   the camera's field of view (``search_labels``) the label is a search -- turn left in place with
   the head straight -- which a memoryless policy can reproduce from what it sees; once the target
   is in view the expert's own action is the label. The push expert needs no such relabelling: it
   decides only from the prop's and the mat's bearings in a straight-ahead frame.
2. ``fit_bc``: regression of tanh(policy) onto the expert labels (mean squared error).
3. The dream stage (``vla_dream.finetune_dream``): group-relative advantage-weighted regression
   in ``DreamVecEnv`` on reach and push, with a BC anchor on the simulator samples. It is meant to
   carry most of the policy's experience: the defaults dream several times as many transitions
   as the BC collection ran real steps.

``experience.json`` beside the checkpoints counts the run's real simulator steps (the BC
collection's and the ones that started dreamed episodes) and its dreamed transitions, per task.
The room seeds of every training episode, real or dreamed, are written beside the checkpoint
(``train_rooms.json``) so that the benchmark can check its held-out rooms are disjoint from them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from .vla import (
    ATTRIBUTE_GROUPS,
    OBS_KEYS,
    TRAIN_TEMPLATES,
    VLAConfig,
    VLAPolicy,
    instruction_attributes,
    is_held_out,
    keypoint_cells,
    parse_instruction,
    phrase,
    project_to_frame,
)
from .weights import atomic_write_json


@dataclass
class Buffer:
    """Stored BC samples: frames (N, 3, H, W) uint8, motion (N, 227), text (N,) str, label (N, 6),
    the instruction's meaning (N, 3: colour, shape, task indices) and keypoint cells (N, K)."""

    ego_rgb: list = field(default_factory=list)
    motion: list = field(default_factory=list)
    text: list = field(default_factory=list)
    label: list = field(default_factory=list)
    attributes: list = field(default_factory=list)
    keypoints: list = field(default_factory=list)

    def add(self, rgb, motion, texts, label, attributes, keypoints):
        self.ego_rgb.append(rgb.cpu())
        self.motion.append(motion.cpu())
        self.text.extend(texts)
        self.label.append(label.cpu())
        self.attributes.append(attributes.cpu())
        self.keypoints.append(keypoints.cpu())

    def tensors(self):
        return (
            torch.cat(self.ego_rgb),
            torch.cat(self.motion),
            list(self.text),
            torch.cat(self.label),
            torch.cat(self.attributes),
            torch.cat(self.keypoints),
        )

    def __len__(self):
        return len(self.text)


def training_text(index: int, rng: np.random.Generator) -> str:
    task, colour, shape = parse_instruction(index)
    templates = TRAIN_TEMPLATES[task]
    return phrase(task, colour, shape, templates[int(rng.integers(len(templates)))])


SEARCH_BEARING = 0.75  # rad: the target's centre is outside the 90-degree camera (head straight)
# Tasks whose expert turns toward targets it cannot see. The push expert decides only from what
# its camera shows (it searches by itself), so its actions are the labels as they are.
SEARCH_TASKS = ("reach",)


def search_labels(env, task: str) -> torch.Tensor:
    """The expert's actions (B, 6), with a left-turning search where the target is out of view."""
    act = env.expert_actions().clone()
    if task not in SEARCH_TASKS:
        return act
    core = env.core
    st, params = core.state, core.params
    rows = torch.arange(st.agent_pos.shape[0], device=st.agent_pos.device)
    t = st.prop_pos[rows, params.target, :2] - st.agent_pos[:, :2]
    c, s = torch.cos(st.agent_yaw), torch.sin(st.agent_yaw)
    fx, fy = c * t[:, 0] + s * t[:, 1], -s * t[:, 0] + c * t[:, 1]
    search = torch.atan2(fy, fx).abs() > SEARCH_BEARING
    look = torch.zeros_like(act)
    look[:, 2] = 1.0
    look[:, 5] = act[:, 5]
    return torch.where(search[:, None].to(act.device), look, act)


def auxiliary_targets(env, obs, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the parser and the keypoint maps are trained against, from privileged state:
    the instruction's (colour, shape, task) indices (B, 3) and the cells of the target prop and
    the mat on a ``grid`` x ``grid`` map of the frame (B, 2; grid**2 = not in view)."""
    st, params = env.core.state, env.core.params
    rows = torch.arange(st.agent_pos.shape[0], device=st.agent_pos.device)
    target = st.prop_pos[rows, params.target]
    mat = torch.cat((st.mat_pos, torch.zeros_like(st.mat_pos[:, :1])), -1)
    uv, visible = project_to_frame(obs["motion"].to(target.device), torch.stack((target, mat), 1).float())
    attrs = torch.tensor([instruction_attributes(int(i)) for i in obs["instruction"].reshape(-1).tolist()])
    return attrs, keypoint_cells(uv, visible, grid).cpu()


def policy_losses(
    policy: VLAPolicy, rgb, motion, emb, label, attributes, keypoints, aux_weight: float = 0.05
) -> tuple[torch.Tensor, dict[str, float]]:
    """Behaviour cloning (MSE of tanh(action) to the label) + the parser's and the keypoints' cross-entropies."""
    out = policy.outputs(rgb, motion, emb)
    bc = F.mse_loss(torch.tanh(out["action"]), label)
    parse, i = 0.0, 0
    for g, (_, values) in enumerate(ATTRIBUTE_GROUPS):
        parse = parse + F.cross_entropy(out["attributes"][:, i : i + len(values)], attributes[:, g])
        i += len(values)
    kp = F.cross_entropy(out["keypoints"].flatten(0, 1), keypoints.flatten())
    return bc + parse + aux_weight * kp, {"bc": bc.item(), "parse": float(parse.detach()), "keypoints": kp.item()}


class Collector:
    """One task's ``EgoRoomVecEnv`` (OBS_KEYS, return_tensors=True) whose episodes run on across
    DAgger rounds: a round continues the episodes the previous one left, so long episodes (push:
    up to 400 steps) are recorded to their end however short a round is. Each episode is acted by
    the expert (plus noise) or, with probability ``policy_fraction`` drawn when it starts, by the
    policy; every step is labelled by the expert."""

    def __init__(self, env, task: str, rng: np.random.Generator, rooms: set[int], grid: int):
        self.env, self.task, self.rng, self.rooms, self.grid = env, task, rng, rooms, grid
        B = env.num_envs
        self.obs, infos = env.reset_tensors(room_seeds=[int(s) for s in rng.integers(0, 10**9, size=B)])
        rooms.update(int(s) for s in infos["room_seed"])
        self.texts = [training_text(int(i), rng) for i in self.obs["instruction"]]
        self.use_policy = torch.zeros(B, dtype=torch.bool)  # the first episodes: the expert

    def run(self, policy: VLAPolicy | None, steps: int, policy_fraction: float, noise: float, buffer: Buffer) -> dict:
        env, rng = self.env, self.rng
        B = env.num_envs
        episodes = successes = policy_episodes = policy_successes = 0
        for _ in range(steps):
            obs, texts = self.obs, self.texts
            expert = search_labels(env, self.task)
            keep = torch.tensor([not is_held_out(int(i)) for i in obs["instruction"]])
            if keep.any():
                k = keep.nonzero()[:, 0]
                attrs, kps = auxiliary_targets(env, obs, self.grid)
                buffer.add(obs["ego_rgb"][k], obs["motion"][k], [texts[i] for i in k.tolist()], expert[k], attrs[k], kps[k])
            act = expert + noise * torch.randn(B, 6)
            if policy is not None and self.use_policy.any():
                act = torch.where(self.use_policy[:, None], policy.act(obs, texts=texts), act)
            self.obs, _, term, trunc, infos = env.step_tensors(act.clamp(-1, 1))
            done = (term | trunc).cpu()
            if done.any():
                won = torch.as_tensor(infos["final_success"]).cpu() & done
                episodes += int(done.sum())
                successes += int(won.sum())
                policy_episodes += int((done & self.use_policy).sum())
                policy_successes += int((won & self.use_policy).sum())
                for w in done.nonzero()[:, 0].tolist():
                    texts[w] = training_text(int(self.obs["instruction"][w]), rng)
                    self.use_policy[w] = policy is not None and bool(rng.random() < policy_fraction)
                    self.rooms.add(int(infos["room_seed"][w]))
        return {"episodes": episodes, "successes": successes, "policy_episodes": policy_episodes, "policy_successes": policy_successes}


class BufferSampler:
    """Random minibatches of a ``Buffer`` with each distinct sentence embedded once."""

    def __init__(self, policy: VLAPolicy, buffer: Buffer):
        self.rgb, self.motion, texts, self.label, self.attributes, self.keypoints = buffer.tensors()
        uniq = sorted(set(texts))
        self.emb = policy.embed_texts(uniq)
        index = {t: i for i, t in enumerate(uniq)}
        self.tid = torch.tensor([index[t] for t in texts])

    def __len__(self) -> int:
        return len(self.tid)

    def losses(self, policy: VLAPolicy, batch: int, gen: torch.Generator, aux_weight: float):
        i = torch.randint(len(self), (batch,), generator=gen)
        return policy_losses(
            policy, self.rgb[i], self.motion[i], self.emb[self.tid[i]], self.label[i], self.attributes[i], self.keypoints[i], aux_weight
        )


def fit_bc(
    policy: VLAPolicy,
    buffer: Buffer,
    updates: int,
    batch: int,
    lr: float,
    gen: torch.Generator,
    log=print,
    optimizer=None,
    aux_weight: float = 0.05,
) -> float:
    sampler = BufferSampler(policy, buffer)
    opt = optimizer or torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=1e-4)
    policy.train()
    run, parts = float("nan"), {}
    for u in range(updates):
        loss, p = sampler.losses(policy, batch, gen, aux_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        run = p["bc"] if u == 0 else 0.98 * run + 0.02 * p["bc"]
        parts = p if u == 0 else {k: 0.98 * parts[k] + 0.02 * v for k, v in p.items()}
        if (u + 1) % max(1, updates // 5) == 0:
            log(f"  bc update {u + 1}/{updates}  " + "  ".join(f"{k} {v:.4f}" for k, v in parts.items()))
    policy.eval()
    return float(run)


def behaviour_clone(policy: VLAPolicy, cfg, rng: np.random.Generator, gen: torch.Generator, log) -> tuple[Buffer, set[int], list, int]:
    """The DAgger rounds (``Collector`` per task, ``fit_bc`` after each round): the buffer, the
    rooms played, the rounds' history and the number of simulator steps run."""
    from dreamgym.envs import EgoRoomVecEnv

    envs = {
        t: EgoRoomVecEnv(
            num_envs=int(cfg.num_envs), task=t, resolution=int(cfg.resolution), seed=int(cfg.seed), obs_keys=OBS_KEYS, return_tensors=True
        )
        for t in cfg.tasks
    }
    buffer, rooms, history, real_steps = Buffer(), set(), [], 0
    collectors = {t: Collector(env, t, rng, rooms, policy.config.grid) for t, env in envs.items()}
    t0 = time.time()
    for rnd in range(int(cfg.rounds)):
        frac = 0.0 if rnd == 0 else float(cfg.dagger_policy_fraction)
        for task, col in collectors.items():
            st = col.run(policy if rnd > 0 else None, int(cfg.steps_per_round), frac, float(cfg.expert_noise), buffer)
            real_steps += int(cfg.steps_per_round) * col.env.num_envs
            log(f"round {rnd} {task}: {st}, buffer {len(buffer)}, {time.time() - t0:.0f}s")
            history.append({"round": rnd, "task": task, **st})
        loss = (
            fit_bc(policy, buffer, int(cfg.updates_per_round), int(cfg.batch), float(cfg.lr), gen, log, aux_weight=float(cfg.aux_weight))
            if int(cfg.updates_per_round)
            else float("nan")
        )
        log(f"round {rnd}: bc loss {loss:.4f}, {time.time() - t0:.0f}s")
    for env in envs.values():
        env.close()
    return buffer, rooms, history, real_steps


def experience_record(bc_steps: int, bc_samples: int, dream: dict) -> dict:
    """What the run learned from: real simulator steps (BC collection, dream starts) and dreamed
    transitions, per task, and the dreamed share of all transitions."""
    starts = {t: int(s["start_real_steps"]) for t, s in dream.items()}
    dreamed = {t: int(s["dreamed_transitions"]) for t, s in dream.items()}
    real_total = bc_steps + sum(starts.values())
    dreamed_total = sum(dreamed.values())
    return {
        "real": {"bc_collection_steps": bc_steps, "bc_samples": bc_samples, "dream_start_steps": starts, "total": real_total},
        "dreamed": {**dreamed, "total": dreamed_total},
        "dreamed_over_real": round(dreamed_total / max(real_total, 1), 3),
        "dreamed_fraction": round(dreamed_total / max(real_total + dreamed_total, 1), 4),
    }


def run(cfg) -> int:
    """``dreamgym train-vla out=DIR``: BC (DAgger) in the simulator, then AWR in the dream."""
    torch.set_num_threads(int(cfg.num_threads))
    torch.manual_seed(int(cfg.seed))
    rng = np.random.default_rng(int(cfg.seed))
    gen = torch.Generator().manual_seed(int(cfg.seed))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "train_log.txt", "a")

    def log(msg):
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    t0 = time.time()
    from .vla_resume import check_config

    check_config(out, OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg))
    if (out / "resume" / "done.json").exists():
        log(f"train-vla: {out} holds a finished run of these settings; nothing to do")
        return 0
    policy, buffer, rooms, bc_steps = _bc_stage(cfg, out, rng, gen, log)
    if cfg.get("init") and (Path(cfg.init).parent / "train_rooms.json").exists():  # rooms the init was trained on
        rooms |= set(json.loads((Path(cfg.init).parent / "train_rooms.json").read_text()))
    (out / "train_rooms.json").write_text(json.dumps(sorted(rooms)))
    log(f"behaviour cloning: {bc_steps} simulator steps, {len(buffer)} samples, {time.time() - t0:.0f}s")
    dream: dict = {}
    if cfg.world_model is not None and int(cfg.dream_iterations) > 0:
        from .vla_dream import finetune_dream

        dream, dream_rooms = finetune_dream(policy, cfg.world_model, buffer, cfg, rng, gen, log, out=out)
        rooms |= dream_rooms
        (out / "train_rooms.json").write_text(json.dumps(sorted(rooms)))
    else:
        log("no world model given (world_model=null): skipping dream fine-tuning")
    experience = experience_record(bc_steps, len(buffer), dream)
    (out / "experience.json").write_text(json.dumps(experience, indent=1))
    log(f"experience: {json.dumps(experience)}")
    if dream:
        policy.config.info = dict(
            policy.config.info, stage="bc+dream_awr", dream=dream, experience=experience, world_model=str(cfg.world_model)
        )
        policy.save_pretrained(out / "final")
    atomic_write_json(out / "resume" / "done.json", {"seconds_this_run": round(time.time() - t0, 1)})
    log(f"done in {time.time() - t0:.0f}s; {len(rooms)} training rooms")
    return 0


def _bc_stage(cfg, out: Path, rng: np.random.Generator, gen: torch.Generator, log) -> tuple[VLAPolicy, Buffer, set[int], int]:
    """Behaviour cloning, or the BC stage an earlier run of the same settings kept in ``out/resume``;
    the policy after it is in ``out/bc``."""
    from .vla_resume import load_bc, save_bc

    stored = load_bc(out, Buffer, rng, gen)
    if stored is not None:
        buffer, rooms, _, bc_steps = stored
        log(f"behaviour cloning: taken from an earlier run ({out}/resume/bc.json, policy {out}/bc)")
        return VLAPolicy.from_pretrained(out / "bc"), buffer, rooms, bc_steps
    if cfg.get("init"):  # continue from a checkpoint (e.g. only the dream stage: updates_per_round=0)
        policy = VLAPolicy.from_pretrained(cfg.init)
    else:
        policy = VLAPolicy(VLAConfig(resolution=int(cfg.resolution)))
    buffer, rooms, history, bc_steps = behaviour_clone(policy, cfg, rng, gen, log)
    info = {"init": str(cfg.init), "init_info": dict(policy.config.info)} if cfg.get("init") else {}
    policy.config.info = {
        **info,
        "bc_samples": len(buffer),
        "bc_collection_steps": bc_steps,
        "rounds": int(cfg.rounds),
        "seed": int(cfg.seed),
        "history": history,
        "stage": "bc",
    }
    policy.save_pretrained(out / "bc")
    save_bc(out, buffer, rooms, history, bc_steps, rng, gen)
    return policy, buffer, rooms, bc_steps
