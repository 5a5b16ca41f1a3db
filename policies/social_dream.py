"""The social avatar's dream stage: group-relative advantage-weighted regression in ``DreamVecEnv``.

``dreamgym train-social init=CKPT world_model=WM out=DIR`` starts from a trained avatar (``init``;
without it, from the one the simulator stage just trained) and fine-tunes its *response
decisions* -- one per 8-step window: the next motion token, the facing direction and the
pointer's pick among the scene's objects -- in imagination. The tokenizer and the inverse
controller are left as they are. Each iteration:

1. ``dream_rollouts``: ``dream_envs`` dreamed worlds of ``SocialSceneTask``, ``dream_group`` per
   real start (the start is one simulator step of a training room, ``dream_seed_base`` on; the
   partner's script then runs on in the dream and the world model dreams both bodies, state only:
   ``motion`` + ``partner_motion`` + ``props``). The avatar acts with exploration
   (``ExploringAvatar``): its token sampled from the softmax at ``dream_temperature``, Gaussian
   noise (``dream_heading_noise`` rad) on the regressed facing direction, the pointer's pick
   sampled at ``dream_pointer_temperature``. Every decision is recorded with its inputs.
2. The responses are judged from the *dreamed* state: ``response_checks`` on the dream env's
   ``WorldState`` (with the episode's pointing target, ``_params.goal``) each step, the check of
   the behaviour the partner is performing. A window's reward is the fraction of its 8 steps
   whose check holds (0 while the partner idles); a decision is credited with the reward of the
   window it executes and the following ones, discounted by ``dream_gamma`` per window. With
   ``dream_checks: body`` two of the checks are replaced by ones the world model dreams well
   (``body_checks``): in the shipped world model the dreamed neck and head rotations are biased,
   so the gaze that ``point`` reads is off by about 0.7 rad (median) even for the scripted
   responder, and the dreamed velocity channel is noisy, so ``turn_away``'s speed test fails
   while the body stands; ``point`` then asks that the *body* face the spot and ``turn_away``
   reads the speed from the root's displacement.
3. ``group_advantages``: the worlds of a group share the start and the partner's script, so their
   decisions at window k answer the same behaviour; a decision's advantage is its credit minus
   the group's mean at k, over the group's spread (+ ``ADV_EPS``).
4. ``awr_updates``: ``dream_updates`` steps of weighted log-likelihood of the chosen token (times
   ``dream_token_weight``) and pick and weighted regression of the executed facing direction (weights exp(A /
   ``awr_temperature``), clipped at ``awr_max_weight``), beside an anchor to the initial avatar on
   the same inputs (``dream_anchor_weight`` x (KL of the token and pointer distributions + squared
   error of the facing direction)), so the avatar does not drift where the dream says nothing.

Every dreamed episode is also scored the way the simulator is (``segment_correct``), which makes
the dream's own judgement of the avatar visible per iteration. ``experience.json`` counts the real
steps (the starts') against the dreamed transitions; ``train_rooms.json`` lists the start rooms.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dreamgym.envs import partner as P

from .social import WINDOW, SocialAvatarPolicy
from .social_scenes import BEHAVIOUR_KEY, SocialSceneTask, response_checks, segment_correct

ADV_EPS = 0.1  # added to a group's spread of credits (credits are fractions of a window)
DREAM_KEYS = ("motion", "partner_motion")
CHECKS = ("simulator", "body")  # how the dream judges a response (``dream_rollouts``)
SPEED_STEPS = 4  # steps over which ``body_checks`` measures the root's speed


def check_dream_config(cfg) -> None:
    """Refuse bad dream settings in one line, naming the key."""
    need = {
        "dream_envs": 1,
        "dream_group": 1,
        "dream_iterations": 0,
        "dream_updates": 0,
        "dream_batch": 1,
    }
    for k, lo in need.items():
        v = cfg.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{k}={v!r}: expected a whole number >= {lo}")
    if int(cfg.dream_envs) % int(cfg.dream_group):
        raise ValueError(f"dream_envs={cfg.dream_envs} is not a multiple of dream_group={cfg.dream_group}; make it one")
    for k in ("dream_temperature", "dream_pointer_temperature", "awr_temperature", "awr_max_weight", "dream_lr"):
        if not float(cfg.get(k)) > 0:
            raise ValueError(f"{k}={cfg.get(k)!r}: expected a number > 0")
    for k in ("dream_heading_noise", "dream_anchor_weight", "dream_token_weight"):
        if not float(cfg.get(k)) >= 0:
            raise ValueError(f"{k}={cfg.get(k)!r}: expected a number >= 0")
    if cfg.get("dream_checks", "simulator") not in CHECKS:
        raise ValueError(f"dream_checks={cfg.get('dream_checks')!r}: choose from {list(CHECKS)}")
    if not 0 <= float(cfg.dream_gamma) <= 1:
        raise ValueError(f"dream_gamma={cfg.dream_gamma!r}: expected a number in [0, 1]")
    if int(cfg.dream_rooms) < 1 or int(cfg.dream_seed_base) < 0:
        raise ValueError(f"dream_seed_base={cfg.dream_seed_base!r}, dream_rooms={cfg.dream_rooms!r}: expected whole numbers >= 0 and >= 1")
    hi, ev = int(cfg.dream_seed_base) + int(cfg.dream_rooms), int(cfg.eval_seed_base)
    if hi > ev:
        raise ValueError(
            f"dream_seed_base={cfg.dream_seed_base} + dream_rooms={cfg.dream_rooms} reaches the held-out rooms (eval_seed_base={ev} on); "
            "the dream's start rooms must be training rooms below it"
        )
    if cfg.dream_context_policy not in ("noisy_expert", "expert", "random", "still"):
        raise ValueError(f"dream_context_policy={cfg.dream_context_policy!r}: choose from noisy_expert, expert, random, still")


class ExploringAvatar(SocialAvatarPolicy):
    """The avatar with exploring response decisions that records each one with its inputs.

    ``explore`` (None: greedy, as ``SocialAvatarPolicy``) holds ``temperature``, ``heading_noise``
    and ``pointer_temperature``; ``records`` gathers one dict of tensors per ``_respond`` call.
    """

    def __init__(self, config=None):
        super().__init__(config)
        self.explore: dict | None = None
        self.records: list[dict] = []
        self.gen_noise: torch.Generator | None = None

    @classmethod
    def of(cls, policy: SocialAvatarPolicy) -> ExploringAvatar:
        out = cls(copy.deepcopy(policy.config))
        out.load_state_dict(policy.state_dict())
        return out.eval()

    def _respond(self, w, rel_end, utt, yaw, objf=None) -> None:
        s, K, ex = self._state, self.config.context, self.explore
        if ex is None:
            return super()._respond(w, rel_end, utt, yaw, objf)

        def push(buf, val):
            buf[w] = torch.cat((buf[w][:, 1:], val[:, None]), 1)

        push(s["partner"], self.vq.encode(s["pwin"][w]))
        push(s["rel"], torch.cat((s["prel"][w], rel_end[w]), -1))
        push(s["utt"], utt[w])
        s["filled"][w] = torch.clamp(s["filled"][w] + 1, max=K)
        rec = {"world": w.clone(), "t": s["t"][w].clone(), "partner": s["partner"][w].clone(), "rel": s["rel"][w].clone()}
        rec |= {"utt": s["utt"][w].clone(), "own": s["own"][w, 1:].clone()}
        hid = self.gen.hidden(s["partner"][w], s["rel"][w], s["utt"][w], s["own"][w, 1:])
        probs = torch.softmax(self.gen.out(hid[:, -1]) / float(ex["temperature"]), -1)
        tok = torch.multinomial(probs, 1, generator=self.gen_noise)[:, 0]
        rec["token"] = tok
        if self.gen.heading is not None:
            h = self.gen.heading(hid[:, -1])
            bearing = torch.atan2(h[:, 1], h[:, 0]) + float(ex["heading_noise"]) * torch.randn(len(w), generator=self.gen_noise)
            use_heading = torch.ones(len(w), dtype=torch.bool)
            if objf is not None:
                of = objf[w]
                logits = self.gen.point(hid[:, -1:], of[:, None])[:, 0]
                pp = torch.softmax(logits / float(ex["pointer_temperature"]), -1)
                pick = torch.multinomial(pp, 1, generator=self.gen_noise)[:, 0]
                chosen = pick < of.shape[1]
                sel = of[torch.arange(len(w)), pick.clamp(max=of.shape[1] - 1)]
                bearing = torch.where(chosen, torch.atan2(sel[:, 1], sel[:, 0]), bearing)
                use_heading = ~chosen
                rec |= {"objf": of.clone(), "pick": pick}
            s["goal"][w] = yaw[w] + bearing
            s["has_goal"][w] = True
            rec |= {"bearing": bearing, "use_heading": use_heading}
        s["own"][w] = torch.cat((s["own"][w][:, 1:], tok[:, None]), 1)
        s["plan"][w] = self.vq.decode(tok)
        self.records.append(rec)


def window_rewards(behaviour: np.ndarray, checks: dict[str, np.ndarray]) -> np.ndarray:
    """(n_windows, B): per window of 8 steps, the fraction of its steps whose check of the
    partner's current behaviour holds (idle and other steps count 0)."""
    T, B = behaviour.shape
    hit = np.zeros((T, B))
    for b, key in BEHAVIOUR_KEY.items():
        hit += (behaviour == b) * checks[key]
    n = T // WINDOW
    return hit[: n * WINDOW].reshape(n, WINDOW, B).mean(1)


def group_advantages(credit: np.ndarray, group: int) -> np.ndarray:
    """Per-window advantages (n, B) of credits (n, B): minus the group's mean at each window, over
    the group's spread + ``ADV_EPS`` (worlds g*group .. (g+1)*group-1 share a start)."""
    n, B = credit.shape
    if B % group:
        raise ValueError(f"{B} worlds are not a whole number of groups of {group}")
    g = credit.reshape(n, B // group, group)
    adv = (g - g.mean(2, keepdims=True)) / (g.std(2, keepdims=True) + ADV_EPS)
    return adv.reshape(n, B)


def discounted(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Credits (n, B): sum over j >= 0 of gamma^j x rewards[k + j]."""
    out = np.zeros_like(rewards)
    acc = np.zeros(rewards.shape[1])
    for k in range(rewards.shape[0] - 1, -1, -1):
        acc = rewards[k] + gamma * acc
        out[k] = acc
    return out


def body_checks(state, motion: torch.Tensor, point_at: torch.Tensor, past_pos: torch.Tensor) -> dict[str, torch.Tensor]:
    """``response_checks`` with the two judgements the world model dreams poorly replaced by ones it
    dreams well (``dream_checks: body``): ``point`` by the *body* facing the pointed-at spot within
    0.5 rad (the dreamed neck and head rotations, which the gaze is read from, are biased), and the
    speed of ``turn_away`` by the root's displacement over the last ``SPEED_STEPS`` steps
    (``past_pos``, (B, 2)) instead of the dreamed velocity channel, which is noisy."""
    from dreamgym.envs.partner import _wrap
    from dreamgym.envs.scene import CONTROL_DT
    from dreamgym.envs.tasks import _hand_above_head

    out = response_checks(state, motion, point_at)
    to_t = point_at - state.agent_pos[:, :2]
    out["point"] = _wrap(state.agent_yaw - torch.atan2(to_t[:, 1], to_t[:, 0])).abs() < 0.5
    speed = torch.linalg.norm(state.agent_pos[:, :2] - past_pos, dim=-1) / (SPEED_STEPS * CONTROL_DT)
    out["turn_away"] = (speed < 0.15) & (_hand_above_head(state) < -0.3)
    return out


def dream_rollouts(policy: ExploringAvatar, env, steps: int, checks_kind: str = "simulator") -> tuple[dict, dict]:
    """One dreamed scene per world with exploration; the decisions (concatenated, with ``window``)
    and the dream's judgement (behaviour (T, B), checks, ``rooms``): ``response_checks`` on the
    dreamed state (``checks_kind="simulator"``) or ``body_checks`` (``"body"``)."""
    if checks_kind not in CHECKS:
        raise ValueError(f"dream_checks={checks_kind!r}: choose from {list(CHECKS)}")
    obs, info = env.reset_tensors()
    B = env.num_envs
    policy.reset()
    policy.records = []
    point_at = env._params.goal.clone()
    rooms = [int(s) for s in info["room_seed"]]
    alive = torch.ones(B, dtype=torch.bool)
    beh, checks = [], {k: [] for k in BEHAVIOUR_KEY.values()}
    past = [env._state.agent_pos[:, :2].clone()] * SPEED_STEPS
    for _ in range(steps):
        a = policy.act(obs, utterances=list(info["utterance"]), objects=env._state.prop_pos[..., :2])
        obs, _, term, trunc, info = env.step_tensors(a)
        alive &= ~(term | trunc).cpu()  # a dream error ends a world; its later steps are not judged
        beh.append(torch.where(alive, env._state.partner_behaviour.cpu(), torch.full((B,), P.IDLE)))
        if checks_kind == "body":
            judged = body_checks(env._state, obs["motion"], point_at, past[0])
        else:
            judged = response_checks(env._state, obs["motion"], point_at)
        past = past[1:] + [env._state.agent_pos[:, :2].clone()]
        for k, v in judged.items():
            checks[k].append(v.cpu().numpy())
    rec = {k: torch.cat([r[k] for r in policy.records]) for k in policy.records[0]} if policy.records else {}
    if rec:
        rec["window"] = rec["t"] // WINDOW
    return rec, {"behaviour": torch.stack(beh).numpy(), "checks": {k: np.stack(v) for k, v in checks.items()}, "rooms": rooms}


def decision_weights(rec: dict, judged: dict, group: int, gamma: float, temperature: float, max_weight: float) -> tuple[torch.Tensor, dict]:
    """AWR weights (N,) of the recorded decisions and the group statistics behind them."""
    R = window_rewards(judged["behaviour"], judged["checks"])  # window k: steps 8k .. 8k+7 after the first act
    credit = discounted(R, gamma)
    adv = group_advantages(credit, group)
    k = rec["window"].clamp(max=R.shape[0] - 1).numpy()
    a = torch.as_tensor(adv[k, rec["world"].numpy()], dtype=torch.float32)
    w = torch.exp(a / temperature).clamp(max=max_weight)
    spread = credit.reshape(credit.shape[0], -1, group).std(2)
    return w, {"mean_window_reward": float(R.mean()), "credit_spread_within_groups": float(spread.mean())}


def _heads(policy: SocialAvatarPolicy, rec: dict, idx: torch.Tensor) -> tuple:
    """Token logits, facing direction and pointer logits of the recorded decisions ``idx``."""
    hid = policy.gen.hidden(rec["partner"][idx], rec["rel"][idx], rec["utt"][idx], rec["own"][idx])[:, -1:]
    logits = policy.gen.out(hid[:, 0])
    heading = policy.gen.heading(hid[:, 0]) if policy.gen.heading is not None else None
    ptr = policy.gen.point(hid, rec["objf"][idx][:, None])[:, 0] if "objf" in rec else None
    return logits, heading, ptr


def awr_updates(policy: ExploringAvatar, anchor: SocialAvatarPolicy, opt, rec: dict, weight: torch.Tensor, cfg, gen) -> dict:
    """``dream_updates`` steps of the weighted objective beside the anchor (module docstring)."""
    N = len(weight)
    policy.train()
    out = {}
    for _ in range(int(cfg.dream_updates)):
        i = torch.randint(N, (min(int(cfg.dream_batch), N),), generator=gen)
        w = weight[i]
        logits, heading, ptr = _heads(policy, rec, i)
        with torch.no_grad():
            a_logits, a_heading, a_ptr = _heads(anchor, rec, i)
        lp = F.log_softmax(logits, -1)
        awr = -float(cfg.dream_token_weight) * (w * lp.gather(1, rec["token"][i, None])[:, 0]).mean()
        kl = F.kl_div(lp, F.log_softmax(a_logits, -1), log_target=True, reduction="batchmean")
        if heading is not None:
            b = rec["bearing"][i]
            used = rec["use_heading"][i].float()
            target = torch.stack((torch.cos(b), torch.sin(b)), -1)
            awr = awr + (w * used * ((heading - target) ** 2).sum(-1)).mean()
            kl = kl + ((heading - a_heading) ** 2).sum(-1).mean()
        if ptr is not None:
            lpp = F.log_softmax(ptr, -1)
            awr = awr - (w * lpp.gather(1, rec["pick"][i, None])[:, 0]).mean()
            kl = kl + F.kl_div(lpp, F.log_softmax(a_ptr, -1), log_target=True, reduction="batchmean")
        loss = awr + float(cfg.dream_anchor_weight) * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.gen.parameters(), 1.0)
        opt.step()
        out = {"awr_loss": float(awr.detach()), "anchor_kl": float(kl.detach())}
    policy.eval()
    return out


def dream_correctness(judged: dict) -> dict:
    """The dream's own ``segment_correct`` judgement: overall and per behaviour."""
    corr = segment_correct(judged["behaviour"], judged["checks"])
    flat = [v for vs in corr.values() for v in vs]
    return {"overall": float(np.mean(flat)) if flat else None} | {k: (float(np.mean(v)) if v else None) for k, v in corr.items()}


def scene_dream(world_model, num_envs: int, rooms: list[int], context_policy: str, seed: int, **kw):
    """A state-only ``DreamVecEnv`` of ``SocialSceneTask`` whose starts come from the simulator in
    ``rooms`` (``kw``: ``start_group``, sampler overrides)."""
    from dreamgym.worldmodel.dream_env import DreamVecEnv
    from dreamgym.worldmodel.starts import SimulatorStarts

    task = SocialSceneTask()
    return DreamVecEnv(
        world_model,
        num_envs=int(num_envs),
        task=task,
        modalities=DREAM_KEYS,
        obs_keys=DREAM_KEYS,
        horizon=task.max_steps,
        seed=seed,
        return_tensors=True,
        starts=SimulatorStarts(policy=str(context_policy), rooms=list(rooms), seed=seed),
        **kw,
    )


def make_dream_env(cfg, seed: int):
    """The dream stage's env: its training rooms, ``dream_group`` worlds per start."""
    rooms = list(range(int(cfg.dream_seed_base), int(cfg.dream_seed_base) + int(cfg.dream_rooms)))
    return scene_dream(cfg.world_model, cfg.dream_envs, rooms, cfg.dream_context_policy, seed, start_group=int(cfg.dream_group))


def finetune_dream(policy: SocialAvatarPolicy, cfg, log=print) -> tuple[ExploringAvatar, dict]:
    """The dream stage (module docstring); the fine-tuned avatar and what the stage did."""
    check_dream_config(cfg)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    explorer = ExploringAvatar.of(policy)
    explorer.gen_noise = torch.Generator().manual_seed(int(cfg.seed) + 1)
    anchor = copy.deepcopy(policy).eval()
    for p in anchor.parameters():
        p.requires_grad_(False)
    for p in list(explorer.vq.parameters()) + list(explorer.inv.parameters()):
        p.requires_grad_(False)  # the tokenizer and the inverse controller stay as they are
    opt = torch.optim.AdamW([p for p in explorer.gen.parameters()], lr=float(cfg.dream_lr), weight_decay=1e-4)
    env = make_dream_env(cfg, int(cfg.seed))
    steps = SocialSceneTask.max_steps - env.K  # the dream starts after K - 1 real steps and ends where a simulator scene does
    stats = {"iterations": [], "dreamed_transitions": 0, "decisions": 0}
    rooms: set[int] = set()
    t_start = time.time()
    for it in range(int(cfg.dream_iterations)):
        t0 = time.time()
        explorer.explore = {
            "temperature": float(cfg.dream_temperature),
            "heading_noise": float(cfg.dream_heading_noise),
            "pointer_temperature": float(cfg.dream_pointer_temperature),
        }
        with torch.no_grad():
            rec, judged = dream_rollouts(explorer, env, steps, str(cfg.get("dream_checks", "simulator")))
        explorer.explore = None
        weight, gstats = decision_weights(
            rec, judged, int(cfg.dream_group), float(cfg.dream_gamma), float(cfg.awr_temperature), float(cfg.awr_max_weight)
        )
        losses = awr_updates(explorer, anchor, opt, rec, weight, cfg, gen)
        rooms.update(judged["rooms"])
        stats["dreamed_transitions"] += steps * env.num_envs
        stats["decisions"] += len(weight)
        row = {
            "iteration": it + 1,
            "dream_correctness": dream_correctness(judged),
            **gstats,
            **losses,
            "seconds": round(time.time() - t0, 1),
        }
        stats["iterations"].append(row)
        dc = row["dream_correctness"]
        log(
            f"  dream iteration {it + 1}/{cfg.dream_iterations}: {len(weight)} decisions, dream-judged correctness "
            f"{dc['overall'] if dc['overall'] is not None else float('nan'):.3f} (exploring), window reward {gstats['mean_window_reward']:.3f}, "
            f"credit spread {gstats['credit_spread_within_groups']:.3f}, awr {losses.get('awr_loss', math.nan):.3f}, "
            f"kl {losses.get('anchor_kl', math.nan):.4f}, {row['seconds']}s"
        )
    stats |= {
        "real_steps": env.real_steps,
        "dream_seconds": round(time.time() - t_start, 1),
        "starts": env.starts_info,
        "sampler": env.sampler_info,
        "rooms": sorted(rooms),
    }
    env.close()
    explorer.explore = None
    return explorer, stats


def run_dream_stage(policy: SocialAvatarPolicy, cfg, out: Path, init: Path | None, log=print) -> SocialAvatarPolicy:
    """Fine-tune ``policy`` in the dream, write ``experience.json`` and ``train_rooms.json`` to ``out``."""
    tuned, stats = finetune_dream(policy, cfg, log)
    settings = {
        k: (cfg.get(k) if not hasattr(cfg.get(k), "items") else dict(cfg.get(k))) for k in cfg if str(k).startswith(("dream_", "awr_"))
    }
    prior_real = int(policy.config.info.get("train_steps", 0))
    experience = {
        "init": str(init) if init is not None else None,
        "world_model": str(cfg.world_model),
        "simulator_training_steps_of_init": prior_real,
        "real_steps": stats["real_steps"],
        "dreamed_transitions": stats["dreamed_transitions"],
        "dreamed_per_real_step": stats["dreamed_transitions"] / max(1, stats["real_steps"]),
        "decisions": stats["decisions"],
        "dream_seconds": stats["dream_seconds"],
        "starts": stats["starts"],
        "sampler": stats["sampler"],
        "settings": settings,
        "iterations": stats["iterations"],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "experience.json").write_text(json.dumps(experience, indent=1, default=str))
    (out / "train_rooms.json").write_text(json.dumps(stats["rooms"]))
    tuned.config.info = dict(policy.config.info) | {
        "dream_stage": {k: experience[k] for k in ("init", "world_model", "real_steps", "dreamed_transitions", "decisions")}
    }
    if init is not None and (init / "motion_encoder.safetensors").exists():
        shutil.copy(init / "motion_encoder.safetensors", out / "motion_encoder.safetensors")
    return tuned


def dream_judge(
    policy: SocialAvatarPolicy | None,
    world_model,
    rooms: list[int],
    seed: int = 0,
    context_policy: str = "still",
    checks: str = "simulator",
    **sampler,
) -> dict:
    """The avatar (greedy; None: the scripted responder on the dreamed state) in dreamed scenes that
    start in ``rooms`` (one world each, as a simulator scene would): the dream's behaviour (T, B)
    and checks, judged as ``run_scenes`` judges the simulator (or by ``body_checks``)."""
    env = scene_dream(world_model, len(rooms), list(rooms), context_policy, seed, **sampler)
    actor = ExploringAvatar.of(policy) if policy is not None else ScriptedInDream(env)
    with torch.no_grad():
        _, judged = dream_rollouts(actor, env, env.task.max_steps - env.K, checks)
    env.close()
    if judged["rooms"] != list(rooms):
        raise RuntimeError(f"the dream started in rooms {judged['rooms'][:4]}..., not the ones asked for")
    return judged


class ScriptedInDream:
    """The scripted responder acting on a dream env's state, with the avatar's ``act`` interface."""

    def __init__(self, env):
        self.env, self.records = env, []

    def reset(self, worlds=None) -> None:
        """Nothing to reset: the responder keeps no state between steps."""

    def act(self, obs, utterances=None, objects=None) -> torch.Tensor:
        return self.env.expert_actions()
