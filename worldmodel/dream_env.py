"""``DreamVecEnv`` / ``DreamEnv``: the world model as an environment.

The dream env steps a ``WorldModel`` instead of the simulator, behind the same API as
``EgoRoomVecEnv`` -- ``reset_tensors``/``step_tensors`` (torch, any device), the
``gymnasium.vector.VectorEnv`` API and ``envs.sb3.SB3VecEnv`` -- and ``DreamEnv`` is its single-world
``gymnasium.Env``, registered as ``dreamgym/Dream-v0``. A policy loop cannot tell them apart.

Each world starts from a *real* context: the first K observations of a fresh simulator episode
(run by a batched ``EgoRoomVecEnv`` with a configurable context policy) or of an episode recorded in
a dataset. From then on every step is dreamed: the model predicts the next motion of agent and
partner, the props and, if asked for, the ego frames and occupancy. Reward, termination, success
and ``task_obs`` come from the *same task objects* the real env uses, applied to the predicted
state (``reward_source="task"``), or from the model's learned reward/termination head
(``reward_source="learned"``). The partner's script runs on, as in the simulator: each step its
command is computed from the script and the dreamed bodies (``envs.partner.partner_action``), and
a world model conditioned on the partner's commands (``config.partner_actions``) gets it, so the
dreamed partner does what ``infos["partner_behaviour"]`` says. Episodes truncate at ``horizon`` steps.

A world whose prediction is not finite is terminated with ``infos["dream_error"]`` set for it; the
others go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from dreamgym.envs import partner as P
from dreamgym.envs import scene
from dreamgym.envs.core import validate_action
from dreamgym.envs.motion import JOINT_POS, JOINT_VEL, ROOT_POS, ROOT_QUAT, yaw_of_quat
from dreamgym.envs.occupancy import GridSpec
from dreamgym.envs.spaces import IMAGE_KEYS, action_space, observation_space
from dreamgym.envs.tasks import EpisodeParams, WorldState, make_task

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "worldmodel" / "default"
STATE_KEYS = ("motion", "partner_motion", "props")
CONTEXT_POLICIES = ("noisy_expert", "expert", "random", "still")


def load_world_model(world_model=None, device: str | torch.device = "cpu"):
    """A ``WorldModel`` from an instance, a checkpoint path, or None for the shipped default."""
    from dreamgym.worldmodel.model import WorldModel

    if isinstance(world_model, WorldModel):
        return world_model.to(device).eval()
    path = DEFAULT_CHECKPOINT if world_model is None else Path(world_model)
    if not path.exists():
        raise FileNotFoundError(
            f"world-model checkpoint {path} does not exist"
            + ("; the package ships one in worldmodel/default -- reinstall dreamgym" if world_model is None else "")
        )
    return WorldModel.from_pretrained(path, device=device).eval()


def _from_heading(v: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """Heading-frame vectors (B, ..., 3) to world axes."""
    c = torch.cos(yaw).view(-1, *([1] * (v.dim() - 2)))
    s = torch.sin(yaw).view(-1, *([1] * (v.dim() - 2)))
    x, y, z = v.unbind(-1)
    return torch.stack((c * x - s * y, s * x + c * y, z), dim=-1)


def body_from_motion(motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pelvis position (B, 3), yaw (B,), pelvis velocity (B, 3) and world joints (B, 22, 3) of a motion vector."""
    B = motion.shape[0]
    root = motion[:, ROOT_POS]
    yaw = yaw_of_quat(motion[:, ROOT_QUAT])
    joints = root[:, None] + _from_heading(motion[:, JOINT_POS].reshape(B, 22, 3), yaw)
    vel = _from_heading(motion[:, JOINT_VEL].reshape(B, 22, 3)[:, 0:1], yaw)[:, 0]
    return root, yaw, vel, joints


@dataclass
class Starts:
    """A pool of real episode starts: K-step contexts and the episode bookkeeping, (N, ...) each."""

    context: dict[str, torch.Tensor]  # key -> (N, K, ...)
    actions: torch.Tensor  # (N, K-1, 6) actions taken after context steps 0..K-2
    target: torch.Tensor
    instruction: torch.Tensor
    goal: torch.Tensor
    mat_pos: torch.Tensor
    room_half: torch.Tensor
    room_seed: torch.Tensor
    script: dict[str, torch.Tensor]  # behaviour, duration, target, cursor, timer
    step: torch.Tensor
    partner_actions: torch.Tensor  # (N, K-1, 6) the partner's commands after context steps 0..K-2

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def take(self, idx: torch.Tensor) -> Starts:
        pick = lambda t: t[idx]  # noqa: E731
        return Starts(
            {k: pick(v) for k, v in self.context.items()},
            pick(self.actions),
            pick(self.target),
            pick(self.instruction),
            pick(self.goal),
            pick(self.mat_pos),
            pick(self.room_half),
            pick(self.room_seed),
            {k: pick(v) for k, v in self.script.items()},
            pick(self.step),
            pick(self.partner_actions),
        )


class SimStarts:
    """Draws real starts from a batched simulator: fresh rooms, K-1 steps of a context policy."""

    def __init__(
        self,
        task: str,
        num_envs: int,
        context: int,
        keys: Sequence[str],
        resolution: int,
        device,
        seed: int | None,
        policy: str = "noisy_expert",
        noise: float = 0.3,
    ):
        from dreamgym.envs.vec_env import EgoRoomVecEnv

        if policy not in CONTEXT_POLICIES:
            raise ValueError(f"unknown context policy {policy!r}; valid: {list(CONTEXT_POLICIES)}")
        obs_keys = [k for k in keys if k != "props"] + ["instruction"]
        self.env = EgoRoomVecEnv(
            num_envs=num_envs, task=task, resolution=resolution, device=device, seed=seed, obs_keys=obs_keys, return_tensors=True
        )
        self.K, self.keys, self.policy, self.noise = context, list(keys), policy, noise
        self.gen = torch.Generator(device="cpu").manual_seed(0 if seed is None else int(seed))
        self.rng = np.random.default_rng(seed)

    def _props(self) -> torch.Tensor:
        q = self.env.sim_state()["qpos"]
        idx = self.env.core.idx.prop_qpos
        return torch.stack([q[:, a : a + 3] for a in idx], 1).float()

    def _action(self) -> torch.Tensor:
        B = self.env.num_envs
        rand = torch.rand(B, 6, generator=self.gen) * 2 - 1
        if self.policy == "random":
            return rand
        if self.policy == "still":
            return torch.zeros(B, 6)
        a = self.env.expert_actions().cpu()
        if self.policy == "noisy_expert":
            a = a + self.noise * torch.randn(B, 6, generator=self.gen)
        return a.clamp(-1, 1)

    def draw(self) -> Starts:
        """One batch of starts (num_envs of them; worlds whose episode ended early are dropped)."""
        env, K = self.env, self.K
        seeds = [int(s) for s in self.rng.integers(2**31 - 1, size=env.num_envs)]
        obs, _ = env.reset_tensors(room_seeds=seeds)
        frames = [dict(obs, props=self._props())]
        acts, pacts, alive = [], [], torch.ones(env.num_envs, dtype=torch.bool)
        for _ in range(K - 1):
            a = self._action()
            obs, _, term, trunc, _ = env.step_tensors(a.to(env.device))
            alive &= ~(term | trunc).cpu()
            acts.append(a)
            pacts.append(env.core.partner_action.cpu().clone())
            frames.append(dict(obs, props=self._props()))
        core = env.core
        s = core.scripts
        keep = alive.nonzero()[:, 0]
        dev = torch.device("cpu")
        ctx = {k: torch.stack([f[k].to(dev) for f in frames], 1)[keep] for k in self.keys}
        return Starts(
            context=ctx,
            actions=(torch.stack(acts, 1) if acts else torch.zeros(env.num_envs, 0, 6))[keep],
            target=core.params.target.cpu()[keep],
            instruction=core.params.instruction.cpu()[keep],
            goal=core.params.goal.cpu()[keep],
            mat_pos=core.mat_pos.cpu()[keep],
            room_half=core.room_half.cpu()[keep],
            room_seed=torch.tensor(seeds)[keep],
            script={
                "behaviour": s.behaviour.cpu()[keep],
                "duration": s.duration.cpu()[keep],
                "target": s.target.cpu()[keep],
                "cursor": s.cursor.cpu()[keep],
                "timer": s.timer.cpu()[keep],
            },
            step=core.steps.cpu()[keep],
            partner_actions=(torch.stack(pacts, 1) if pacts else torch.zeros(env.num_envs, 0, 6))[keep],
        )


class DreamVecEnv(VectorEnv):
    """B dreamed worlds with the step API of ``EgoRoomVecEnv``.

    Args:
        world_model: a ``WorldModel``, a checkpoint directory, or None for the shipped default.
        num_envs: number of worlds B.
        task: the task whose reward, termination and ``task_obs`` are computed on dreamed states.
        modalities: observation keys to generate. State keys (``motion``, ``partner_motion``) are
            always generated; add ``ego_rgb``/``ego_depth`` and ``occupancy`` for policies that
            consume them. Fewer modalities make imagination much cheaper.
        obs_keys: observation keys returned (default: the generated ones plus ``task_obs`` and
            ``instruction``); each must be generated or computed by the task.
        resolution: the ego resolution the caller expects; must match the model's.
        horizon: steps after which a dreamed episode truncates (default: the task's max_steps).
        num_denoising_steps: sampler steps per transition (1-3 for RL).
        reward_source: ``"task"`` (the task's functions on predicted state) or ``"learned"``.
        context_policy: how the K-1 real steps before dreaming are chosen in the simulator.
        device: torch device of the model and of the returned tensors.
        seed: seed of the start rooms and of the sampler noise.
        return_tensors: make ``step``/``reset`` return torch tensors instead of numpy arrays.
        starts_pool: how many real starts the simulator prepares at a time (default ``num_envs``).
        start_group: ``reset`` hands each real start to this many consecutive worlds, so that
            rollouts from the same start can be compared (a group-relative baseline for policy
            improvement); worlds that end later restart alone. Must divide ``num_envs``.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        world_model=None,
        num_envs: int = 16,
        task: str = "reach",
        modalities: Sequence[str] = ("motion", "partner_motion"),
        obs_keys: Sequence[str] | None = None,
        resolution: int | None = None,
        horizon: int | None = None,
        num_denoising_steps: int = 1,
        reward_source: str = "task",
        context_policy: str = "noisy_expert",
        device: str | torch.device = "cpu",
        seed: int | None = None,
        return_tensors: bool = False,
        starts_pool: int | None = None,
        start_group: int = 1,
    ):
        self.device = torch.device(device)
        self.model = load_world_model(world_model, self.device)
        cfg = self.model.config
        self.num_envs = B = int(num_envs)
        if B < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        self.start_group = int(start_group)
        if self.start_group < 1 or B % self.start_group:
            raise ValueError(f"start_group must be a positive divisor of num_envs={B}, got {start_group}")
        if resolution is not None and int(resolution) != int(cfg.data_resolution):
            raise ValueError(
                f"the world model was trained on {cfg.data_resolution}x{cfg.data_resolution} ego frames but the env asks for "
                f"{resolution}x{resolution}; pass resolution={cfg.data_resolution} or a checkpoint trained at {resolution}"
            )
        if reward_source not in ("task", "learned"):
            raise ValueError(f"unknown reward_source {reward_source!r}; valid: ['task', 'learned']")
        self.task = make_task(task) if isinstance(task, str) else task
        self.reward_source = reward_source
        self.horizon = int(horizon or self.task.max_steps)
        self.num_steps = int(num_denoising_steps)
        available = self.model.output_keys()
        gen = list(dict.fromkeys(["motion", "partner_motion", "props", *modalities]))
        missing = [k for k in gen if k not in available]
        if missing:
            raise ValueError(f"the world model cannot generate {missing}; it generates {available}")
        self.gen_keys = gen
        if obs_keys is None:
            obs_keys = [k for k in gen if k != "props"] + ["instruction", "task_obs"]
        computable = set(gen) | {"instruction", "task_obs"}
        bad = [k for k in obs_keys if k not in computable]
        if bad:
            raise ValueError(f"observation keys {bad} are neither generated (modalities={list(modalities)}) nor computed by the task")
        from dreamgym.envs.spaces import OBS_KEYS

        self.obs_keys = tuple(k for k in OBS_KEYS if k in obs_keys)
        self.resolution = (int(cfg.data_resolution), int(cfg.data_resolution))
        occ = cfg.occupancy_shape
        self.grid = GridSpec((int(occ[1]), int(occ[2]), int(occ[0])))
        self.single_observation_space = observation_space(self.resolution, self.grid, self.obs_keys)
        self.single_action_space = action_space()
        self.observation_space = batch_space(self.single_observation_space, B)
        self.action_space = batch_space(self.single_action_space, B)
        self.return_tensors = bool(return_tensors)
        self.K = int(cfg.context)
        ctx_keys = list(dict.fromkeys([*STATE_KEYS, *[k for k in gen if k in self._model_inputs()]]))
        self.ctx_keys = ctx_keys
        self._source = SimStarts(
            self.task.name, max(B, int(starts_pool or B)), self.K, ctx_keys, self.resolution[0], "cpu", seed, context_policy
        )
        self._pool: Starts | None = None
        self._pool_next = 0
        self._gen = torch.Generator(device=self.device).manual_seed(0 if seed is None else int(seed) + 1)
        self._ctx: dict[str, torch.Tensor] = {}
        self._memory: dict[str, torch.Tensor] = {}  # scene memory of a warping world model, per world
        self._acts = torch.zeros(B, self.K - 1, 6, device=self.device)
        self._pacts = torch.zeros(B, self.K - 1, 6, device=self.device)  # the partner's commands (its script, run on)
        self._params = EpisodeParams(torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long), torch.zeros(B, 2))
        self._scripts = P.PartnerScripts.empty(B, self.device)
        self._mat = torch.zeros(B, 2, device=self.device)
        self._half = torch.zeros(B, 2, device=self.device)
        self._seed = torch.zeros(B, dtype=torch.long)
        self._steps = torch.zeros(B, dtype=torch.long, device=self.device)
        self._dream_steps = torch.zeros(B, dtype=torch.long, device=self.device)
        self._state: WorldState | None = None
        self._last_obs: dict[str, torch.Tensor] | None = None

    def _model_inputs(self) -> set[str]:
        keys = set(STATE_KEYS)
        if any(k in self.gen_keys for k in IMAGE_KEYS):
            keys |= {"ego_rgb", "ego_depth"} & set(self.model.output_keys())
        if "occupancy" in self.gen_keys:
            keys.add("occupancy")
        return keys

    # ------------------------------------------------------------------ starts
    def _draw(self, n: int) -> Starts:
        parts, got = [], 0
        while got < n:
            if self._pool is None or self._pool_next >= len(self._pool):
                self._pool, self._pool_next = self._source.draw(), 0
            take = min(n - got, len(self._pool) - self._pool_next)
            idx = torch.arange(self._pool_next, self._pool_next + take)
            parts.append(self._pool.take(idx))
            self._pool_next += take
            got += take
        if len(parts) == 1:
            return parts[0]
        cat = lambda xs: torch.cat(xs, 0)  # noqa: E731
        return Starts(
            {k: cat([p.context[k] for p in parts]) for k in parts[0].context},
            cat([p.actions for p in parts]),
            cat([p.target for p in parts]),
            cat([p.instruction for p in parts]),
            cat([p.goal for p in parts]),
            cat([p.mat_pos for p in parts]),
            cat([p.room_half for p in parts]),
            cat([p.room_seed for p in parts]),
            {k: cat([p.script[k] for p in parts]) for k in parts[0].script},
            cat([p.step for p in parts]),
            cat([p.partner_actions for p in parts]),
        )

    def _begin(self, worlds: torch.Tensor, group: int = 1) -> None:
        st = self._draw(len(worlds) // group)
        if group > 1:
            st = st.take(torch.arange(len(worlds) // group).repeat_interleave(group))
        dev = self.device
        for k, v in st.context.items():
            if k not in self._ctx:
                self._ctx[k] = torch.zeros((self.num_envs, *v.shape[1:]), dtype=v.dtype, device=dev)
            self._ctx[k][worlds] = v.to(dev)
        self._acts[worlds] = st.actions.to(dev)
        self._pacts[worlds] = st.partner_actions.to(dev)
        # a warping world model reprojects the start's real frame through the whole episode
        mem = self.model.scene_memory(st.context) if hasattr(self.model, "scene_memory") else {}
        for k, v in mem.items():
            if k not in self._memory:
                self._memory[k] = torch.zeros((self.num_envs, *v.shape[1:]), dtype=v.dtype, device=dev)
            self._memory[k][worlds] = v.to(dev)
        wc = worlds.cpu()
        self._params.target[wc] = st.target
        self._params.instruction[wc] = st.instruction
        self._params.goal[wc] = st.goal
        self._mat[worlds] = st.mat_pos.to(dev)
        self._half[worlds] = st.room_half.to(dev)
        self._seed[wc] = st.room_seed
        for k in ("behaviour", "duration", "target", "cursor", "timer"):
            getattr(self._scripts, k)[worlds] = st.script[k].to(dev)
        self._steps[worlds] = st.step.to(dev)
        self._dream_steps[worlds] = 0

    def _world_state(self, motion: torch.Tensor, partner: torch.Tensor, props: torch.Tensor) -> WorldState:
        apos, ayaw, avel, aj = body_from_motion(motion)
        ppos, pyaw, pvel, pj = body_from_motion(partner)
        return WorldState(
            agent_pos=apos,
            agent_yaw=ayaw,
            agent_vel=avel,
            agent_joints=aj,
            partner_pos=ppos,
            partner_yaw=pyaw,
            partner_vel=pvel,
            partner_joints=pj,
            partner_behaviour=self._scripts.current()[0].clone(),
            prop_pos=props.float(),
            mat_pos=self._mat.clone(),
            room_half=self._half.clone(),
            step=self._steps.clone(),
        )

    def _params_on(self, dev) -> EpisodeParams:
        return EpisodeParams(self._params.target.to(dev), self._params.instruction.to(dev), self._params.goal.to(dev))

    def _observation(self, latest: dict[str, torch.Tensor], state: WorldState) -> dict[str, torch.Tensor]:
        out = {}
        for k in self.obs_keys:
            if k == "task_obs":
                out[k] = self.task.task_obs(state, self._params_on(state.agent_pos.device))
            elif k == "instruction":
                out[k] = self._params.instruction.to(self.device).clone()
            else:
                out[k] = latest[k].clone()  # the context buffer is updated in place on resets
        return out

    def _latest(self) -> dict[str, torch.Tensor]:
        return {k: v[:, -1] for k, v in self._ctx.items()}

    # ------------------------------------------------------------------ torch API
    def reset_tensors(self, seed: int | None = None, room_seeds=None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Start every world from a fresh real context; returns torch observations and infos."""
        if room_seeds is not None:
            raise ValueError("DreamVecEnv draws its start rooms itself; room_seeds is not supported (pass seed=)")
        if seed is not None:
            self._source.rng = np.random.default_rng(seed)
            self._source.gen.manual_seed(int(seed))
            self._gen.manual_seed(int(seed) + 1)
            self._pool = None
        worlds = torch.arange(self.num_envs, device=self.device)
        self._begin(worlds, self.start_group)
        lat = self._latest()
        self._state = self._world_state(lat["motion"], lat["partner_motion"], lat["props"])
        self._last_obs = self._observation(lat, self._state)
        return self._last_obs, self._infos(torch.zeros(self.num_envs, dtype=torch.bool, device=self.device))

    def step_tensors(self, actions) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Dream one step for all worlds from ``actions`` (B, 6)."""
        if self._state is None:
            raise RuntimeError("step called before reset")
        a = validate_action(actions, self.num_envs, self.device, batched=True)
        acts = torch.cat([self._acts, a[:, None]], 1)
        # the partner's command this step, from its script and the dreamed bodies (as the simulator computes it)
        st = self._state
        pa = P.partner_action(self._scripts, st.partner_pos, st.partner_yaw, st.agent_pos)
        pacts = torch.cat([self._pacts, pa[:, None]], 1)
        context = dict(self._ctx) | self._memory
        context["instruction"] = self._params.instruction.to(self.device)
        extra = {"partner_actions": pacts} if getattr(self.model.config, "partner_actions", False) else {}
        pred = self.model.imagine(context, acts, num_steps=self.num_steps, modalities=self.gen_keys, generator=self._gen, **extra)
        bad = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        for k in self.gen_keys:
            v = pred[k]
            if v.is_floating_point():
                bad |= ~torch.isfinite(v).reshape(self.num_envs, -1).all(1)
        # Advance the bookkeeping as the simulator does, then shift the context window.
        self._scripts.advance()
        self._steps += 1
        self._dream_steps += 1
        for k in self._ctx:
            nxt = torch.where(bad.view(-1, *[1] * (pred[k].dim() - 1)), self._ctx[k][:, -1], pred[k].to(self._ctx[k].dtype))
            self._ctx[k] = torch.cat([self._ctx[k][:, 1:], nxt[:, None]], 1)
        self._acts = acts[:, 1:]
        self._pacts = pacts[:, 1:]
        lat = self._latest()
        prev, state = self._state, self._world_state(lat["motion"], lat["partner_motion"], lat["props"])
        params = self._params_on(self.device)
        if self.reward_source == "task":
            reward = self.task.reward(prev, state, params)
            term = self.task.terminated(state, params)
            success = self.task.success(state, params)
        else:
            reward = pred["reward"].float()
            term = pred["terminated"].bool()
            success = pred["success"].bool() if "success" in pred else self.task.success(state, params)
        reward = torch.where(bad, torch.zeros_like(reward), reward)
        term = term | bad
        trunc = (self._dream_steps >= self.horizon) & ~term
        self._state = state
        obs = self._observation(lat, state)
        infos = self._infos(success)
        if bool(bad.any()):
            infos["dream_error"] = np.array([("non-finite world-model prediction" if b else "") for b in bad.tolist()], dtype=object)
            infos["_dream_error"] = bad.cpu().numpy()
        done = term | trunc
        if bool(done.any()):
            worlds = done.nonzero()[:, 0]
            infos["final_obs"] = {k: v.clone() for k, v in obs.items()}
            infos["_final_obs"] = done.clone()
            infos["final_success"] = success.clone()
            self._begin(worlds)
            lat = self._latest()
            fresh = self._world_state(lat["motion"], lat["partner_motion"], lat["props"])
            for name in fresh.__dataclass_fields__:
                getattr(self._state, name)[worlds] = getattr(fresh, name)[worlds]
            new = self._observation(lat, self._state)
            for k in obs:
                obs[k][worlds] = new[k][worlds]
            fresh_info = self._infos(success)  # the restarted worlds' new episode (the others are unchanged)
            for k in ("instruction_text", "partner_behaviour", "utterance", "room_seed", "objects"):
                infos[k] = fresh_info[k]
        self._last_obs = obs
        return obs, reward.float(), term, trunc, infos

    def expert_actions(self) -> torch.Tensor:
        """The task's scripted expert applied to the dreamed states, (B, 6)."""
        return torch.clamp(self.task.expert(self._state, self._params_on(self.device)), -1.0, 1.0)

    def _infos(self, success: torch.Tensor) -> dict[str, Any]:
        from dreamgym.envs.tasks import INSTRUCTIONS

        beh = self._scripts.current()[0].tolist()
        return {
            "success": success if self.return_tensors else success.cpu().numpy(),
            "instruction_text": np.array([INSTRUCTIONS[int(i)] for i in self._params.instruction.tolist()], dtype=object),
            "partner_behaviour": np.array([P.BEHAVIOURS[b] for b in beh], dtype=object),
            "utterance": np.array([P.UTTERANCES[b] for b in beh], dtype=object),
            "room_seed": self._seed.numpy().copy(),
            "objects": self._state.prop_pos[..., :2].float().cpu().numpy().copy(),  # the dreamed props' xy
        }

    # ------------------------------------------------------------------ gymnasium VectorEnv API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, infos = self.reset_tensors(seed=seed)
        return (obs if self.return_tensors else _np(obs)), infos

    def step(self, actions):
        obs, r, term, trunc, infos = self.step_tensors(actions)
        if self.return_tensors:
            return obs, r, term, trunc, infos
        if "final_obs" in infos:
            infos["final_obs"] = _np(infos["final_obs"])
            infos["_final_obs"] = infos["_final_obs"].cpu().numpy()
            infos["final_success"] = infos["final_success"].cpu().numpy()
        return _np(obs), r.cpu().numpy(), term.cpu().numpy(), trunc.cpu().numpy(), infos

    def render(self):
        return None

    def close(self, **kwargs):
        self._source.env.close()


def _np(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.cpu().numpy() for k, v in obs.items()}


class DreamEnv(gym.Env):
    """One dreamed world as a ``gymnasium.Env`` (``dreamgym/Dream-v0``).

    Same spaces, reward and termination semantics as ``EgoRoomEnv`` restricted to the generated
    observation keys (see ``DreamVecEnv`` for the arguments). With no ``checkpoint`` the shipped
    default world model is loaded. ``reset(seed=s)`` reseeds the start rooms and the sampler.
    Out-of-range actions are clipped; a wrong shape or a NaN/infinite action raises ``ValueError``.
    """

    metadata = {"render_modes": [], "render_fps": int(round(1 / scene.CONTROL_DT))}

    def __init__(self, checkpoint=None, task: str = "reach", **kwargs):
        self.vec = DreamVecEnv(checkpoint, num_envs=1, task=task, return_tensors=True, **kwargs)
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        obs, infos = self.vec.reset_tensors(seed=seed)
        return self._one(obs), self._info(infos, 0)

    def step(self, action):
        a = validate_action(action, 1, self.vec.device, batched=False)
        obs, r, term, trunc, infos = self.vec.step_tensors(a)
        info = self._info(infos, 0)
        if "final_obs" in infos:  # report the episode's last observation, as a gymnasium.Env does
            obs = infos["final_obs"]
            info["success"] = bool(infos["final_success"][0])
        return self._one(obs), float(r[0]), bool(term[0]), bool(trunc[0]), info

    def _one(self, obs: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {k: (int(v[0]) if k == "instruction" else v[0].cpu().numpy()) for k, v in obs.items()}

    @staticmethod
    def _info(infos: dict[str, Any], i: int) -> dict[str, Any]:
        out = {}
        for k, v in infos.items():
            if k.startswith("_") or k in ("final_obs", "final_success"):
                continue
            x = v[i]
            out[k] = (
                bool(x)
                if isinstance(x, (np.bool_, bool)) or (isinstance(x, torch.Tensor) and x.dtype == torch.bool)
                else (x.item() if isinstance(x, (np.generic, torch.Tensor)) else x)
            )
        return out

    def close(self):
        self.vec.close()
