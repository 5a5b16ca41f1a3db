"""``DreamVecEnv`` / ``DreamEnv``: the world model as an environment.

The dream env steps a world model (anything that meets ``worldmodel.protocol.DreamModel``; the
shipped ``WorldModel`` does) instead of the simulator, behind the same API as ``EgoRoomVecEnv`` --
``reset_tensors``/``step_tensors`` (torch, any device), the ``gymnasium.vector.VectorEnv`` API and
``envs.sb3.SB3VecEnv`` -- and ``DreamEnv`` is its single-world ``gymnasium.Env``, registered as
``dreamgym/Dream-v0``. With default arguments both have the real env's observation and action
spaces, so a policy loop cannot tell them apart.

Each world starts from a *real* context: K observations from a start source
(``worldmodel.starts``): by default a fresh simulator episode run K-1 steps by a context policy in a
batched ``EgoRoomVecEnv`` (``starts="simulator"``; ``real_steps`` counts the simulator steps), or a
window of an episode recorded in a dataset (``starts="dataset:<dir>[:<split>]"``; no new real
steps). From then on every step is dreamed: the model predicts the next motion of agent and
partner, the props and, if asked for, the ego frames and occupancy. Reward, termination, success
and ``task_obs`` come from the *same task objects* the real env uses, applied to the predicted
state (``reward_source="task"``), or from the model's learned reward/termination head
(``reward_source="learned"``). The partner's script runs on, as in the simulator: each step its
command is computed from the script and the dreamed bodies (``envs.partner.partner_action``), and
a world model conditioned on the partner's commands (``config.partner_actions``) gets it, so the
dreamed partner does what ``infos["partner_behaviour"]`` says. Episodes truncate at ``horizon`` steps.

Each step is sampled as the world model's own sampler says (its ``sampler.json``, the one ``eval-wm``
scored), unless ``num_denoising_steps`` or ``init_noise`` override it; ``sampler`` names it.

A world whose prediction is not finite is terminated with ``infos["dream_error"]`` set for it; the
others go on. Episodes restart in the same step, as in ``EgoRoomVecEnv``: an ended world's last
observation is in ``infos["final_obs"]``, its episode's infos (``objects``, ...) in ``infos["final_info"]``.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from dreamgym.envs import partner as P
from dreamgym.envs import scene
from dreamgym.envs.core import resolve_device, validate_action
from dreamgym.envs.motion import JOINT_POS, JOINT_VEL, ROOT_POS, ROOT_QUAT, yaw_of_quat
from dreamgym.envs.occupancy import GridSpec
from dreamgym.envs.spaces import IMAGE_KEYS, OBS_KEYS, action_space, check_obs_keys, observation_space
from dreamgym.envs.tasks import INSTRUCTIONS, EpisodeParams, Task, WorldState, make_task

from .config import SamplerConfig
from .protocol import DreamModel
from .sampling import network_dtype
from .starts import CONTEXT_POLICIES, Starts, StartSource, StartSpec, make_start_source

__all__ = ["CONTEXT_POLICIES", "DEFAULT_CHECKPOINT", "DreamEnv", "DreamVecEnv", "body_from_motion", "load_world_model"]

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "worldmodel" / "default"
STATE_KEYS = ("motion", "partner_motion", "props")
EPISODE_INFO = ("instruction_text", "partner_behaviour", "utterance", "room_seed", "objects")  # per-episode infos
# ... and their strings, indexed by the worlds' (B,) indices in one step (no loop over the worlds)
_INSTRUCTION_TEXT = np.array(INSTRUCTIONS, dtype=object)
_BEHAVIOUR_NAMES = np.array(P.BEHAVIOURS, dtype=object)
_UTTERANCE_TEXT = np.array(P.UTTERANCES, dtype=object)


def _sampler_overrides(num_denoising_steps: Any, init_noise: Any) -> tuple[int | None, float | None]:
    """The dream env's sampler overrides, checked: None (the model's own) or a whole number >= 1,
    and None or a number >= 0."""
    n, z = num_denoising_steps, init_noise
    if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1):
        raise ValueError(f"num_denoising_steps={n!r}: expected a whole number >= 1, or None for the world model's own sampler")
    if z is not None and (isinstance(z, bool) or not isinstance(z, numbers.Real) or not z >= 0):
        raise ValueError(f"init_noise={z!r}: expected a number >= 0, or None for the world model's own sampler")
    return (None if n is None else int(n)), (None if z is None else float(z))


def load_world_model(world_model=None, device: str | torch.device = "cpu") -> DreamModel:
    """A world model on ``device`` in inference mode, from a ``DreamModel`` (e.g. a ``WorldModel``),
    a checkpoint directory, or None for the shipped default."""
    from .model import WorldModel

    if isinstance(world_model, DreamModel):
        return world_model.to(device).eval()
    if world_model is not None and not isinstance(world_model, (str, Path)):
        raise TypeError(f"world_model must be a checkpoint directory, a world model or None, got {type(world_model).__name__}")
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


class DreamVecEnv(VectorEnv):
    """B dreamed worlds with the step API of ``EgoRoomVecEnv`` (see ``DreamEnv`` for the spaces,
    reward, termination and starts).

    Args:
        world_model: a ``DreamModel`` (e.g. a ``WorldModel``), a checkpoint directory, or None for
            the shipped default.
        num_envs: number of worlds B.
        task: the task (a name or a ``Task``) whose reward, termination and ``task_obs`` are
            computed on dreamed states.
        modalities: observation keys to generate (default: what ``obs_keys`` needs, or everything
            the model generates when ``obs_keys`` is None too). State keys (``motion``,
            ``partner_motion``) are always generated; fewer modalities make imagination much cheaper
            (``["motion", "partner_motion"]`` skips the frame and occupancy branches). Any frame
            key (``ego_rgb`` or ``ego_depth``) generates every frame channel, since the frame
            branch makes them together; only the keys in ``obs_keys`` are returned.
        obs_keys: observation keys returned (default: the generated ones plus ``task_obs`` and
            ``instruction``; with the shipped model, all of the real env's keys); each must be
            generated or computed by the task.
        resolution: the ego resolution the caller expects; must match the model's.
        horizon: steps after which a dreamed episode truncates (default: the task's max_steps).
        num_denoising_steps: sampler steps per transition (default None: the world model's own
            sampler, ``model.sampler``, the one ``eval-wm`` scored).
        init_noise: the sampler's initial-noise scale (default None: the model's own); with
            ``num_denoising_steps=1``, 0 gives the conditional-mean estimate instead of a sample.
        reward_source: ``"task"`` (the task's functions on predicted state) or ``"learned"``.
        context_policy: how the K-1 real steps of simulator starts are chosen (``noisy_expert``
            by default, or ``expert``, ``random``, ``still``).
        device: torch device of the model and of the returned tensors.
        seed: seed of the starts and of the sampler noise.
        return_tensors: make ``step``/``reset`` return torch tensors instead of numpy arrays.
        starts_pool: how many simulator starts are made at a time (default ``num_envs``).
        start_group: ``reset`` hands each real start to this many consecutive worlds, so that
            rollouts from the same start can be compared (a group-relative baseline for policy
            improvement); worlds that end later restart alone. Must divide ``num_envs``.
        starts: where episodes start: ``"simulator"`` (default), ``"dataset:<dir>"`` (windows of
            the train split of a ``dreamgym collect`` directory), ``"dataset:<dir>:<split>"``
            (``train``, ``heldout`` or ``all``), or a ``worldmodel.starts.StartSource``.

    Attributes:
        real_steps: simulator steps spent on starts so far (0 with recorded starts).
        starts_info: where the starts come from (``StartSource.describe()``).
        sampler: the ``SamplerConfig`` each step is dreamed with (None for a model that has none).
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        world_model=None,
        num_envs: int = 16,
        task: str | Task = "reach",
        modalities: Sequence[str] | None = None,
        obs_keys: Sequence[str] | None = None,
        resolution: int | None = None,
        horizon: int | None = None,
        num_denoising_steps: int | None = None,
        init_noise: float | None = None,
        reward_source: str = "task",
        context_policy: str | None = None,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        return_tensors: bool = False,
        starts_pool: int | None = None,
        start_group: int = 1,
        starts: str | StartSource = "simulator",
    ):
        self.device = resolve_device(device)  # cuda without CUDA: one line, not an AssertionError
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
        self.num_steps, self.init_noise = _sampler_overrides(num_denoising_steps, init_noise)
        # only what the caller overrides goes to ``imagine``: the rest is the model's own sampler
        self._sampling = {k: v for k, v in (("num_steps", self.num_steps), ("init_noise", self.init_noise)) if v is not None}
        _ = self.sampler  # the model's own check of the overrides, before any work
        self.gen_keys, self.obs_keys = self._choose_keys(modalities, obs_keys)
        self.resolution = (int(cfg.data_resolution), int(cfg.data_resolution))
        occ = cfg.occupancy_shape
        self.grid = GridSpec((int(occ[1]), int(occ[2]), int(occ[0])), float(cfg.occupancy_voxel))
        self.single_observation_space = observation_space(self.resolution, self.grid, self.obs_keys)
        self.single_action_space = action_space()
        self.observation_space = batch_space(self.single_observation_space, B)
        self.action_space = batch_space(self.single_action_space, B)
        self.return_tensors = bool(return_tensors)
        self.K = int(cfg.context)
        self.ctx_keys = list(dict.fromkeys([*STATE_KEYS, *[k for k in self.gen_keys if k in self._model_inputs()]]))
        self.starts = make_start_source(starts, context_policy, starts_pool, seed)
        self.starts.bind(StartSpec(self.task, self.K, tuple(self.ctx_keys), self.resolution[0], self.grid, B))
        self._gen = torch.Generator(device=self.device).manual_seed(0 if seed is None else int(seed) + 1)
        self._allocate()

    def _choose_keys(self, modalities: Sequence[str] | None, obs_keys: Sequence[str] | None) -> tuple[list[str], tuple[str, ...]]:
        """The keys to generate and the observation keys (in ``OBS_KEYS`` order), checked."""
        available = self.model.output_keys()
        if obs_keys is not None:
            obs_keys = check_obs_keys(obs_keys)
        if modalities is None:
            wanted = [k for k in available if obs_keys is None or k in obs_keys]
        else:
            wanted = list(modalities)
        if any(k in IMAGE_KEYS for k in wanted):  # the frame branch reads (and so makes) all its channels
            wanted += [k for k in IMAGE_KEYS if k in available]
        if any(k in IMAGE_KEYS for k in wanted) and getattr(self.model.config, "ego_render", False) and "occupancy" in available:
            wanted.append("occupancy")  # its frames are drawn from the dreamed grid too
        gen = list(dict.fromkeys([*STATE_KEYS, *wanted]))
        missing = [k for k in gen if k not in available]
        if missing:
            raise ValueError(f"the world model cannot generate {missing}; it generates {available}")
        if obs_keys is None:
            obs_keys = tuple(k for k in gen if k != "props") + ("instruction", "task_obs")
        bad = [k for k in obs_keys if k not in set(gen) | {"instruction", "task_obs"}]
        if bad:
            raise ValueError(f"observation keys {bad} are neither generated (modalities={list(wanted)}) nor computed by the task")
        return gen, tuple(k for k in OBS_KEYS if k in obs_keys)

    def _allocate(self) -> None:
        """The per-world episode state (filled by ``_begin``)."""
        B, dev = self.num_envs, self.device
        self._ctx: dict[str, torch.Tensor] = {}
        self._memory: dict[str, torch.Tensor] = {}  # scene memory of a warping world model, per world
        self._acts = torch.zeros(B, self.K - 1, 6, device=dev)
        self._pacts = torch.zeros(B, self.K - 1, 6, device=dev)  # the partner's commands (its script, run on)
        self._params = EpisodeParams(
            torch.zeros(B, dtype=torch.long, device=dev), torch.zeros(B, dtype=torch.long, device=dev), torch.zeros(B, 2, device=dev)
        )
        # what the infos report of each episode, kept on the host (set when an episode starts)
        self._instruction_host = np.zeros(B, dtype=np.int64)
        self._seed_host = np.zeros(B, dtype=np.int64)
        self._scripts = P.PartnerScripts.empty(B, dev)
        self._mat = torch.zeros(B, 2, device=dev)
        self._half = torch.zeros(B, 2, device=dev)
        self._steps = torch.zeros(B, dtype=torch.long, device=dev)
        self._dream_steps = torch.zeros(B, dtype=torch.long, device=dev)
        self._state: WorldState | None = None
        self._last_obs: dict[str, torch.Tensor] | None = None

    @property
    def real_steps(self) -> int:
        """Simulator steps the starts have cost so far (0 for recorded starts)."""
        return int(self.starts.real_steps)

    @property
    def starts_info(self) -> dict[str, Any]:
        """Where the starts come from: ``kind`` (``simulator`` or ``dataset``), ``real_steps`` and the source's settings."""
        return self.starts.describe()

    @property
    def sampler(self) -> SamplerConfig | None:
        """The sampler each step is dreamed with: the model's own (``model.sampler_for``) with this
        env's overrides; None for a model without one (it samples its own way)."""
        pick = getattr(self.model, "sampler_for", None)
        return pick(None, self.num_steps, self.init_noise) if callable(pick) else None

    @property
    def sampler_info(self) -> dict[str, Any] | None:
        """``sampler`` as a JSON-ready dict (what a run records), with ``network_precision`` resolved here."""
        s = self.sampler
        return None if s is None else s.to_dict() | {"network_precision": network_dtype(s, self.device)}

    def _model_inputs(self) -> set[str]:
        keys = set(STATE_KEYS)
        if any(k in self.gen_keys for k in IMAGE_KEYS):
            keys |= {"ego_rgb", "ego_depth"} & set(self.model.output_keys())
        if "occupancy" in self.gen_keys:
            keys.add("occupancy")
        return keys

    # ------------------------------------------------------------------ starts
    def _begin(self, worlds: torch.Tensor, group: int = 1) -> None:
        st: Starts = self.starts.draw(len(worlds) // group)
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
        for k, v in self.model.scene_memory(st.context).items():
            if k not in self._memory:
                self._memory[k] = torch.zeros((self.num_envs, *v.shape[1:]), dtype=v.dtype, device=dev)
            self._memory[k][worlds] = v.to(dev)
        self._params.target[worlds] = st.target.to(dev)
        self._params.instruction[worlds] = st.instruction.to(dev)
        self._params.goal[worlds] = st.goal.to(dev)
        self._mat[worlds] = st.mat_pos.to(dev)
        self._half[worlds] = st.room_half.to(dev)
        w_host = worlds.cpu().numpy()
        self._instruction_host[w_host] = st.instruction.numpy()
        self._seed_host[w_host] = st.room_seed.numpy()
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

    def _observation(self, latest: dict[str, torch.Tensor], state: WorldState) -> dict[str, torch.Tensor]:
        out = {}
        for k in self.obs_keys:
            if k == "task_obs":
                out[k] = self.task.task_obs(state, self._params)
            elif k == "instruction":
                out[k] = self._params.instruction.clone()
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
            self.starts.reseed(int(seed))
            self._gen.manual_seed(int(seed) + 1)
        worlds = torch.arange(self.num_envs, device=self.device)
        self._begin(worlds, self.start_group)
        lat = self._latest()
        self._state = self._world_state(lat["motion"], lat["partner_motion"], lat["props"])
        self._last_obs = self._observation(lat, self._state)
        success = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        (success_host,), behaviour, objects = self._host_snapshot(success)
        return self._last_obs, self._infos(success, success_host, behaviour, objects)

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
        context["instruction"] = self._params.instruction
        extra = {"partner_actions": pacts} if self.model.config.partner_actions else {}
        pred = self.model.imagine(context, acts, modalities=self.gen_keys, generator=self._gen, **self._sampling, **extra)
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
        params = self._params
        if self.reward_source == "task":
            reward = self.task.reward(prev, state, params)
            term = self.task.terminated(state, params)
            success = self.task.success(state, params)
        else:
            reward = pred["reward"].float()
            term = pred["terminated"].bool()
            success = self.task.success(state, params)
        reward = torch.where(bad, torch.zeros_like(reward), reward)
        term = term | bad
        trunc = (self._dream_steps >= self.horizon) & ~term
        self._state = state
        obs = self._observation(lat, state)
        done = term | trunc
        # the one read from the device per step: which worlds ended or failed, and what infos report
        (bad_host, done_host, success_host), behaviour, objects = self._host_snapshot(bad, done, success)
        infos = self._infos(success, success_host, behaviour, objects)
        if bad_host.any():
            infos["dream_error"] = np.where(bad_host, "non-finite world-model prediction", "").astype(object)
            infos["_dream_error"] = bad_host
        if done_host.any():
            worlds = torch.as_tensor(np.nonzero(done_host)[0], device=self.device)
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
            _, behaviour, objects = self._host_snapshot()  # the restarted worlds' new episode (the others are unchanged)
            fresh_info = self._infos(success, success_host, behaviour, objects)
            # the ended episodes' own (the restarted rows of the others hold the new episodes')
            infos["final_info"] = {k: infos[k] for k in EPISODE_INFO}
            for k in EPISODE_INFO:
                infos[k] = fresh_info[k]
        self._last_obs = obs
        return obs, reward.float(), term, trunc, infos

    def expert_actions(self) -> torch.Tensor:
        """The task's scripted expert applied to the dreamed states, (B, 6)."""
        return torch.clamp(self.task.expert(self._state, self._params), -1.0, 1.0)

    def _host_snapshot(self, *flags: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """The (B,) bool ``flags``, the partner's current behaviour (B,) and the dreamed props' xy
        (B, 4, 2) float32 on the host, read from the device in one transfer."""
        B = self.num_envs
        cols = [f.reshape(B, 1).float() for f in flags]
        cols += [self._state.partner_behaviour.reshape(B, 1).float(), self._state.prop_pos[..., :2].float().reshape(B, -1)]
        host = torch.cat(cols, 1).cpu().numpy()
        n = len(flags)
        return [host[:, i] > 0.5 for i in range(n)], host[:, n].astype(np.int64), np.ascontiguousarray(host[:, n + 1 :].reshape(B, -1, 2))

    def _infos(self, success: torch.Tensor, success_host: np.ndarray, behaviour: np.ndarray, objects: np.ndarray) -> dict[str, Any]:
        return {
            "success": success if self.return_tensors else success_host,
            "instruction_text": _INSTRUCTION_TEXT[self._instruction_host],
            "partner_behaviour": _BEHAVIOUR_NAMES[behaviour],
            "utterance": _UTTERANCE_TEXT[behaviour],
            "room_seed": self._seed_host.copy(),
            "objects": objects,  # the dreamed props' xy
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
        self.starts.close()


def _np(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.cpu().numpy() for k, v in obs.items()}


class DreamEnv(gym.Env):
    """One dreamed world as a ``gymnasium.Env`` (``dreamgym/Dream-v0``): ``EgoRoomEnv`` in imagination.

    A world model predicts each next step of the egocentric room -- the agent's and the partner's
    bodies, the props and, when observed, the ego frames and the occupancy grid -- from the last K
    steps and the action. Arguments are those of ``DreamVecEnv`` (without ``num_envs`` and
    ``return_tensors``); ``world_model`` is a checkpoint directory, a ``DreamModel``, or None for
    the shipped default (``gym.make("dreamgym/Dream-v0", world_model=path)``).

    **Action space** ``Box(-1, 1, (6,))``, as ``EgoRoomEnv``: forward speed, lateral speed, yaw
    rate, head yaw, head pitch, right-arm level. Out-of-range values are clipped; a wrong shape or a
    NaN/infinite value raises ``ValueError``.

    **Observation space** ``Dict``, the keys and spaces of ``EgoRoomEnv`` at the world model's
    resolution: ``ego_rgb`` (3, H, W) uint8, ``ego_depth`` (1, H, W) float32, ``motion`` (227,),
    ``occupancy`` (Z, X, Y) uint8, ``partner_motion`` (227,), ``instruction`` Discrete, ``task_obs``
    (8,). By default every key the model can generate (the shipped model: all seven, H = W = 32,
    which is also ``EgoRoomEnv``'s default, so the two default spaces are equal); ``obs_keys``
    selects a subset and only what it needs is generated (state keys alone skip the frame and
    occupancy branches, several times cheaper).

    **Reward, termination**: the task's own functions (``dreamgym.envs.tasks``) on the dreamed
    state (``reward_source="task"``), or the model's learned head (``"learned"``). Episodes end on
    the task's success or failure (terminated), when a prediction is not finite (terminated, with
    ``info["dream_error"]``), or after ``horizon`` dreamed steps (truncated; default the task's
    ``max_steps``). ``info`` holds ``success``, ``instruction_text``, ``partner_behaviour``,
    ``utterance``, ``room_seed`` and ``objects`` (the dreamed props' xy), as in ``EgoRoomEnv``.

    **Starts**: each episode begins from K real observations (K = the model's context):
    ``starts="simulator"`` (default) runs a fresh room K-1 steps with ``context_policy``;
    ``starts="dataset:<dir>[:<split>]"`` takes a window of a recorded episode (train split by
    default; ``heldout`` or ``all``), costing no new real steps. ``vec.real_steps`` counts the
    simulator steps spent, ``vec.starts_info`` names the source.

    **Sampling**: each step as the world model's own sampler says (its ``sampler.json``), unless
    ``num_denoising_steps`` or ``init_noise`` override it (``vec.sampler`` names the one in use).

    **Seeding**: ``reset(seed=s)`` reseeds the starts and the sampler noise.

    **Version history**: v0 -- first release. Since: starts are injectable (simulator or
    dataset); the default observation is the real env's full ``Dict`` (it was the state keys
    only) and ``EgoRoom-v0`` renders at 32 px by default, so the default spaces are equal;
    ``world_model=`` is the keyword of the model (``checkpoint=`` stays as its older name).
    """

    metadata = {"render_modes": [], "render_fps": int(round(1 / scene.CONTROL_DT))}

    def __init__(self, world_model=None, task: str | Task = "reach", *, checkpoint=None, **kwargs):
        if checkpoint is not None:
            if world_model is not None:
                raise ValueError("the world model was given twice; pass only world_model=<checkpoint dir> (checkpoint= is its older name)")
            world_model = checkpoint
        for key, why in (
            ("num_envs", "DreamEnv is one world; use DreamVecEnv(num_envs=...) for B worlds"),
            ("return_tensors", "DreamEnv returns numpy observations; use DreamVecEnv(return_tensors=True) for tensors"),
        ):
            if key in kwargs:
                raise TypeError(f"DreamEnv takes no {key}: {why}")
        known = set(inspect.signature(DreamVecEnv.__init__).parameters) - {"self", "world_model", "num_envs", "task", "return_tensors"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"DreamEnv got unknown arguments {unknown}; it takes world_model, task and {sorted(known)}")
        self.vec = DreamVecEnv(world_model, num_envs=1, task=task, return_tensors=True, **kwargs)
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
        if "final_obs" in infos:  # report the episode's last observation and infos, as a gymnasium.Env does
            obs = infos["final_obs"]
            info["success"] = bool(infos["final_success"][0])
            info |= self._info(infos["final_info"], 0)
        return self._one(obs), float(r[0]), bool(term[0]), bool(trunc[0]), info

    def _one(self, obs: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {k: (int(v[0]) if k == "instruction" else v[0].cpu().numpy()) for k, v in obs.items()}

    @staticmethod
    def _info(infos: dict[str, Any], i: int) -> dict[str, Any]:
        out = {}
        for k, v in infos.items():
            if k.startswith("_") or k in ("final_obs", "final_success", "final_info"):
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
