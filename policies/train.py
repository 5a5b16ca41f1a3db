"""``dreamgym train-policy env=dream|real task=<name> checkpoint=<ckpt> algo=ppo|sac out=<run> steps=N``.

Trains a Stable-Baselines3 ``MultiInputPolicy`` (PPO or SAC) in a batched env behind
``envs.sb3.SB3VecEnv``: ``env=dream`` is a ``DreamVecEnv`` on the world model ``checkpoint`` (the
shipped default when null), ``env=real`` is ``EgoRoomVecEnv`` asking only for the policy's
observation keys (state keys: no rendering). The training code is the same for both.

Read top to bottom, one run:
  1. check every value of the config (``check_config``) before anything is built or written;
  2. open the run folder ``out``: a ``run.json`` with the same settings (config, data, code; see
     ``run_record``) resumes from the newest checkpoint, a finished one returns at once, other
     settings are refused with the differences listed (``restart=true`` starts afresh); a new run
     moves an earlier run's results into ``replaced-<time>/`` first;
  3. build the env; measure per-key observation statistics over a few random steps (they become
     part of the policy: ``networks.ObsExtractor``);
  4. build the SB3 model (hyperparameters from ``configs/sb3/<algo>.yaml``), load ``init`` (a
     previous policy, whose network must have this config's architecture) or the checkpoint;
  5. ``learn``, with progress, tensorboard logs in ``<out>/tb`` and a checkpoint every
     ``checkpoint_every`` env steps (``train_callback``: fresh episodes start at each one, so a
     resumed run equals an uninterrupted one);
  6. write ``<out>/policy.json`` (family ``sb3``, algo, spaces, network arguments, task, env, obs
     keys, world model, steps, real simulator steps used, wall time) and ``<out>/policy.safetensors``,
     then mark ``run.json`` finished; ``load_policy(<out>)`` reads them without unpickling.

Real simulator steps are counted: ``env=real`` uses ``steps``; ``env=dream`` uses the real steps
of its episode starts (``DreamVecEnv.real_steps``: the simulator steps its start source ran, K-1
per start; none for starts from a dataset).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .base import POLICY_CONFIG, load_sb3_model, pickle_refusal, sb3_algo_class, sb3_algo_of, sb3_zip_of
from .errors import CheckpointError, ConfigError, RunMismatchError, UnsafeCheckpointError
from .run_record import MACHINE_KEYS, RUN, RunFolder, check_finished, code_versions, describe, differences, file_digests
from .sb3_format import ALGOS, WEIGHTS, load_sb3_network, policy_files, policy_kwargs_to_json
from .train_state import CHECKPOINTS, list_checkpoints, load_train_state
from .weights import atomic_write_json, plain_kwargs, read_json

STATE_OBS = ("motion", "partner_motion", "occupancy", "ego_rgb", "ego_depth")


def dream_modalities(obs_keys: Sequence[str]) -> tuple[str, ...]:
    """What a ``DreamVecEnv`` must generate to give ``obs_keys`` (motion is always generated)."""
    gen = ["motion", "partner_motion"]
    gen += [k for k in obs_keys if k in STATE_OBS and k not in gen]
    return tuple(gen)


def make_env(
    env: str,
    task: str = "reach",
    num_envs: int = 16,
    obs_keys: Sequence[str] = ("task_obs", "motion"),
    seed: int = 0,
    checkpoint: Any = None,
    num_denoising_steps: int | None = None,
    horizon: int | None = None,
    reward_source: str = "task",
    device: str | torch.device = "cpu",
    init_noise: float | None = None,
):
    """A batched env of the shared step API: ``real`` (``EgoRoomVecEnv``) or ``dream`` (``DreamVecEnv``;
    ``num_denoising_steps`` and ``init_noise`` None: the world model's own sampler)."""
    keys = tuple(obs_keys)
    if env == "real":
        from dreamgym.envs.vec_env import EgoRoomVecEnv

        return EgoRoomVecEnv(num_envs=num_envs, task=task, obs_keys=keys, seed=seed, device=device, return_tensors=True)
    if env == "dream":
        from dreamgym.worldmodel.dream_env import DreamVecEnv

        return DreamVecEnv(
            checkpoint,
            num_envs=num_envs,
            task=task,
            modalities=dream_modalities(keys),
            obs_keys=keys,
            horizon=horizon,
            num_denoising_steps=num_denoising_steps,
            init_noise=init_noise,
            reward_source=reward_source,
            device=device,
            seed=seed,
            return_tensors=True,
        )
    raise ValueError(f"env must be 'real' or 'dream', got {env!r}")


def make_source_env(cfg: DictConfig) -> Any:
    """``cfg.source_env``'s batched env of the shared step API: the env itself (env=real,
    ``rollouts.gym_vec.GymTensorVecEnv``) or its dream (env=dream, ``VectorDreamVecEnv`` on ``checkpoint``)."""
    kwargs = plain_kwargs(cfg.env_kwargs)
    if cfg.env == "real":
        from dreamgym.rollouts.gym_vec import GymTensorVecEnv

        return GymTensorVecEnv(str(cfg.source_env), int(cfg.num_envs), kwargs, seed=int(cfg.seed))
    from dreamgym.worldmodel.vector_dream import VectorDreamVecEnv

    env = VectorDreamVecEnv(
        checkpoint=str(cfg.checkpoint),
        num_envs=int(cfg.num_envs),
        source_env=str(cfg.source_env),
        env_kwargs=kwargs or None,
        starts=str(cfg.starts),
        device=str(cfg.device),
        num_denoising_steps=cfg.num_denoising_steps,
        init_noise=cfg.init_noise,
        horizon=cfg.horizon,
    )
    env.reset_tensors(seed=int(cfg.seed))
    return env


# ----------------------------------------------------------------------------- config checks
def _whole(cfg: DictConfig, key: str, low: int, none_ok: bool = False) -> None:
    v = OmegaConf.select(cfg, key)
    if v is None and none_ok:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{key}={v!r}: expected a whole number >= {low}{' or null' if none_ok else ''}")


def check_sampler_keys(cfg: DictConfig) -> None:
    """``num_denoising_steps`` (null or a whole number >= 1) and ``init_noise`` (null or a number >= 0):
    null is the world model's own sampler."""
    _whole(cfg, "num_denoising_steps", 1, none_ok=True)
    z = OmegaConf.select(cfg, "init_noise")
    if z is not None and (isinstance(z, bool) or not isinstance(z, (int, float)) or not z >= 0):
        raise ConfigError(f"init_noise={z!r}: expected a number >= 0 or null (the world model's own sampler)")


def _choice(cfg: DictConfig, key: str, allowed: Sequence[Any]) -> None:
    v = OmegaConf.select(cfg, key)
    if v not in allowed:
        raise ConfigError(f"{key}={v!r}: expected one of {list(allowed)}")


def check_device(device: Any) -> None:
    """Refuse a CUDA device on a machine without one (rather than train on the CPU without a word)."""
    dev = str(device)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={dev}: CUDA is not available on this machine; use device=cpu")
    if not (dev.startswith("cuda") or dev in ("cpu", "mps")):
        raise ConfigError(f"device={dev!r}: expected cpu, cuda or cuda:<index>")


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming the key, the value and what is allowed, before any work."""
    from dreamgym.envs.spaces import check_obs_keys
    from dreamgym.envs.tasks import TASKS

    if cfg.get("out") is None:
        raise ConfigError("out=null: give out=<run dir>")
    _choice(cfg, "env", ("dream", "real"))
    _choice(cfg, "algo", ALGOS)
    _choice(cfg, "task", sorted(TASKS))
    _choice(cfg, "reward_source", ("task", "learned"))
    for key in ("progress", "allow_pickle", "restart"):
        _choice(cfg, key, (True, False))
    for key, low in (("steps", 1), ("num_envs", 1), ("seed", 0), ("stats_steps", 0)):
        _whole(cfg, key, low)
    for key in ("checkpoint_every", "log_every", "num_threads"):
        _whole(cfg, key, 1)
    _whole(cfg, "horizon", 1, none_ok=True)
    check_sampler_keys(cfg)
    check_device(cfg.device)
    try:
        check_obs_keys(list(cfg.obs_keys) if cfg.obs_keys is not None else [])
    except ValueError as e:
        raise ConfigError(f"obs_keys={list(cfg.obs_keys or [])}: {e}") from None
    algo = str(cfg.algo)
    for key in ("n_steps", "batch_size", "n_epochs", "buffer_size"):
        if key in cfg[algo]:
            _whole(cfg, f"{algo}.{key}", 1)
    if "learning_starts" in cfg[algo]:
        _whole(cfg, f"{algo}.learning_starts", 0)
    lr, gamma = cfg[algo].get("learning_rate"), cfg[algo].get("gamma")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ConfigError(f"{algo}.learning_rate={lr!r}: expected a number > 0")
    if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not 0 < gamma <= 1:
        raise ConfigError(f"{algo}.gamma={gamma!r}: expected a number in (0, 1]")
    arch = cfg[algo].get("net_arch")
    if arch is None or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in arch):
        raise ConfigError(f"{algo}.net_arch={arch!r}: expected a list of positive layer widths, e.g. [128, 128]")
    if cfg.init is not None:
        init = Path(str(cfg.init))
        if not init.exists():
            raise ConfigError(f"init={cfg.init}: no such policy file or folder")
        if init.resolve().is_relative_to(Path(str(cfg.out)).resolve()):
            raise ConfigError(
                f"init={cfg.init} lies inside out={cfg.out}, whose earlier results a new run moves aside; choose another out="
            )
        zipped = sb3_zip_of(init)
        if zipped is not None and not cfg.allow_pickle:
            raise UnsafeCheckpointError(pickle_refusal(zipped))
        if zipped is None:
            _check_init(cfg, init)
    if cfg.env == "dream" and cfg.checkpoint is not None and not Path(str(cfg.checkpoint)).exists():
        raise ConfigError(f"checkpoint={cfg.checkpoint}: no such world-model checkpoint")
    if cfg.get("source_env") is not None:
        _check_source_env(cfg)


def _check_source_env(cfg: DictConfig) -> None:
    """A Gymnasium env to train on: registered, and for env=dream a vector world model of it."""
    import gymnasium as gym

    src = cfg.source_env
    if not isinstance(src, str) or not src:
        raise ConfigError(f"source_env={src!r}: expected a registered Gymnasium id, e.g. source_env=Hopper-v5")
    try:
        gym.spec(src)
    except gym.error.Error:
        raise ConfigError(
            f"source_env={src} is not a registered Gymnasium id; give one of gymnasium.registry, e.g. source_env=CartPole-v1"
        ) from None
    if cfg.env_kwargs is not None and not isinstance(cfg.env_kwargs, Mapping):
        raise ConfigError(f"env_kwargs={cfg.env_kwargs!r} is not a mapping; write it as 'env_kwargs={{g:9.81}}'")
    if cfg.env == "real":
        return
    if cfg.checkpoint is None:
        raise ConfigError(f"source_env={src} env=dream: give checkpoint=<a train-wm run's final/ folder> of a `collect env={src}` dataset")
    from dreamgym.worldmodel.load import checkpoint_kind

    if checkpoint_kind(str(cfg.checkpoint)) != "vector":
        raise ConfigError(f"checkpoint={cfg.checkpoint} is the room's world model; source_env={src} needs a vector world model of it")
    starts = str(cfg.starts)
    if starts != "live" and not starts.startswith("dataset:"):
        raise ConfigError(f"starts={starts!r}: expected live or dataset:<dir>[:<split>]")


def _check_init(cfg: DictConfig, init: Path) -> None:
    """The init policy's algorithm, observation keys and layers must be this config's (read from its JSON)."""
    from .sb3_format import read_policy_config

    icfg = read_policy_config(policy_files(init)[1])
    kw = icfg["policy_kwargs"]
    source = cfg.get("source_env")
    if source is not None and icfg.get("source_env") != source:
        raise ConfigError(f"init={init}: a policy of {icfg.get('source_env') or 'the room'}, but source_env={source}")
    try:
        keys = None if source is not None else sorted(k for k, _ in kw["observation_space"]["space"]["spaces"])
        arch = kw.get("net_arch")
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{policy_files(init)[1]}: its observation_space is not a Dict space") from None
    if icfg["algo"] != cfg.algo:
        raise ConfigError(f"init={init}: a {icfg['algo']} policy, but algo={cfg.algo}")
    if keys is not None and keys != sorted(cfg.obs_keys):
        raise ConfigError(f"init={init}: the policy reads {keys}, but obs_keys={sorted(cfg.obs_keys)}")
    if arch != list(cfg[cfg.algo].net_arch):
        raise ConfigError(f"init={init}: its layers are net_arch={arch}, but {cfg.algo}.net_arch={list(cfg[cfg.algo].net_arch)}")


# ----------------------------------------------------------------------------- what a run is
def _world_model_path(cfg: DictConfig) -> Path:
    from dreamgym.worldmodel.dream_env import DEFAULT_CHECKPOINT

    return Path(str(cfg.checkpoint)) if cfg.checkpoint is not None else DEFAULT_CHECKPOINT


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """What ``run.json`` records and a resume must match: config, data and code."""
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    algo = c["algo"]
    config = {k: v for k, v in c.items() if k not in MACHINE_KEYS and k not in ALGOS}
    config[algo] = c[algo]
    data: dict[str, Any] = {"world_model": None}
    if cfg.env == "dream":
        wm = _world_model_path(cfg)
        data = {"world_model": str(wm), "world_model_sha256": file_digests(wm)}
    if cfg.init is not None:
        init = Path(str(cfg.init))
        zipped = sb3_zip_of(init)
        data["init_sha256"] = file_digests(zipped if zipped is not None else policy_files(init)[0])
    return {"config": config, "data": data, "code": code_versions()}


# ----------------------------------------------------------------------------- the model
def _build_model(cfg: DictConfig, venv: Any, out: Path, stats: dict | None) -> Any:
    from gymnasium import spaces
    from stable_baselines3.common.preprocessing import is_image_space

    from .networks import ObsExtractor, PixelExtractor

    algo = str(cfg.algo)
    hp = OmegaConf.to_container(cfg[algo], resolve=True)
    assert isinstance(hp, dict)
    hp.pop("algo", None)
    policy_kwargs: dict[str, Any] = dict(net_arch=list(hp.pop("net_arch")))
    if cfg.get("source_env") is None:  # the room's keys, normalised by the measured statistics
        policy_kwargs |= dict(
            features_extractor_class=ObsExtractor,
            features_extractor_kwargs={"stats": stats} if stats is not None else {},
            normalize_images=False,
        )
    elif is_image_space(venv.observation_space):  # a Gymnasium env's pixels: a small CNN (SB3's NatureCNN needs >= 36x36)
        policy_kwargs |= dict(features_extractor_class=PixelExtractor)
    if "log_std_init" in hp:
        policy_kwargs["log_std_init"] = float(hp.pop("log_std_init"))
    kind = "MultiInputPolicy" if isinstance(venv.observation_space, spaces.Dict) else "MlpPolicy"
    return sb3_algo_class(algo)(
        kind,
        venv,
        seed=int(cfg.seed),
        device=cfg.device,
        tensorboard_log=str(out / "tb"),
        policy_kwargs=policy_kwargs,
        verbose=0,
        **hp,
    )


def _load_init(cfg: DictConfig, model: Any) -> int:
    """Copy the ``init`` policy's weights into ``model``; returns the env steps it was trained for."""
    init = Path(str(cfg.init))
    zipped = sb3_zip_of(init)
    if zipped is not None:
        model_zip = load_sb3_model(zipped, "cpu", allow_pickle=bool(cfg.allow_pickle))
        network, algo, before = model_zip.policy, sb3_algo_of(zipped), int(model_zip.num_timesteps)
    else:
        network, icfg = load_sb3_network(init)
        check_finished(policy_files(init)[0].parent, icfg)
        algo, before = str(icfg["algo"]), int(icfg.get("total_steps") or 0)
    if algo != cfg.algo:
        raise ConfigError(f"init={init}: a {algo} policy, but algo={cfg.algo}")
    have, want = policy_kwargs_to_json(network), policy_kwargs_to_json(model.policy)
    diff = {k: v for k, v in differences(have, want).items() if not k.startswith("log_std_init")}
    if diff:
        raise ConfigError(f"init={init}: its network differs from this config's ({describe(diff, was='init')})")
    model.policy.load_state_dict(network.state_dict())
    return before


# ----------------------------------------------------------------------------- the command
def train_policy(cfg: DictConfig | dict) -> Path:
    """Train (or resume, or return the finished) run as configured (see ``configs/train_policy.yaml``);
    returns ``<out>/policy.safetensors``.

    Raises ``ConfigError`` for a value out of range, ``RunMismatchError`` when ``out`` holds a run
    with other settings, ``CheckpointError`` for an unreadable init policy or checkpoint.
    """
    from dreamgym.configs import compose

    given = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    base = compose("train_policy", [])
    unknown = sorted(k for k in given if k not in base)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; train-policy reads {sorted(base)}")
    merged = OmegaConf.merge(base, given)  # keys a caller leaves out keep the yaml's defaults
    assert isinstance(merged, DictConfig)
    cfg = merged
    check_config(cfg)
    torch.set_num_threads(int(cfg.num_threads))
    settings = run_settings(cfg)
    out = Path(str(cfg.out))
    folder = RunFolder(out).claim()
    try:
        rec = folder.record()
        ckpt = None
        if rec is not None:
            diff = differences(rec["settings"], settings)
            if diff and not cfg.restart:
                raise RunMismatchError(
                    f"{out} holds a run with other settings ({describe(diff)}); re-run with the run's settings to continue it, "
                    "restart=true to start afresh (its files are moved to replaced-<time>/), or choose another out="
                )
            if not diff and rec["status"] == "finished" and (out / WEIGHTS).is_file():
                print(f"train-policy: {out} finished in an earlier run; nothing to do")
                return out / WEIGHTS
            if diff or rec["status"] == "finished":
                rec = None
            else:
                found = list_checkpoints(out)
                ckpt = found[-1] if found else None
        if rec is None:
            rec = folder.start(settings, int(cfg.steps))
        _train(cfg, folder, rec, ckpt)
        return out / WEIGHTS
    finally:
        folder.release()


def _room_env(cfg: DictConfig) -> Any:
    return make_env(
        cfg.env,
        cfg.task,
        int(cfg.num_envs),
        tuple(cfg.obs_keys),
        int(cfg.seed),
        cfg.checkpoint,
        cfg.num_denoising_steps,
        cfg.horizon,
        str(cfg.reward_source),
        cfg.device,
        cfg.init_noise,
    )


def _train(cfg: DictConfig, folder: RunFolder, rec: dict[str, Any], ckpt: Path | None) -> None:
    """Steps 3-6 of the module docstring, for a run whose folder is claimed and recorded."""
    from stable_baselines3.common.vec_env import VecMonitor

    from dreamgym.envs.sb3 import SB3VecEnv

    from .networks import measure_obs_stats
    from .train_callback import TrainCallback, recent_return, restart_episodes

    out, algo, steps, B = folder.root, str(cfg.algo), int(cfg.steps), int(cfg.num_envs)
    source = cfg.get("source_env")
    obs_keys = tuple(cfg.obs_keys) if source is None else None
    env = make_source_env(cfg) if source is not None else _room_env(cfg)
    venv = VecMonitor(SB3VecEnv(env))
    fresh = ckpt is None and cfg.init is None and source is None
    model = _build_model(cfg, venv, out, measure_obs_stats(env, int(cfg.stats_steps), int(cfg.seed)) if fresh else None)
    init_steps = _load_init(cfg, model) if cfg.init is not None and ckpt is None else int(rec.get("init_steps") or 0)
    cb: TrainCallback

    def meta() -> dict[str, Any]:
        done = int(model.num_timesteps)
        mean, _ = recent_return(model)
        return {
            "run_id": rec["run_id"],
            "task": cfg.task if source is None else None,
            "env": cfg.env,
            **({} if source is None else {"source_env": source, "env_kwargs": plain_kwargs(cfg.env_kwargs)}),
            "obs_keys": None if obs_keys is None else list(obs_keys),
            "world_model": None if cfg.env == "real" else str(cfg.checkpoint or "default"),
            "steps": done,
            "total_steps": init_steps + done,
            # the dream's: the simulator steps its start source ran (none for dataset starts), over resumes too
            "real_env_steps": done if cfg.env == "real" else cb.real_steps_before + int(env.real_steps),
            "starts": None if cfg.env == "real" else env.starts_info,
            "sampler": None if cfg.env == "real" else env.sampler_info,  # what each step was dreamed with
            "episodes": cb.episodes,
            "train_return_recent": mean,
            "train_success_recent": float(sum(model.ep_success_buffer) / len(model.ep_success_buffer)) if model.ep_success_buffer else None,
            "wall_s": cb.wall_s(),
            "init": str(cfg.init) if cfg.init else None,
        }

    cb = TrainCallback(algo, out, int(cfg.seed), steps, B, int(cfg.checkpoint_every), int(cfg.log_every), bool(cfg.progress), meta)
    if cfg.env == "dream":
        cb.real_steps_now = lambda: int(env.real_steps)
    if ckpt is not None:
        state = load_train_state(model, algo, ckpt)
        cb.resume_from(state)
        restart_episodes(model, int(cfg.seed), state.step)  # the episodes that checkpoint started
        # the real steps of those starts (and of building the env) are the checkpoint's, counted there
        cb.real_steps_before -= int(env.real_steps) if cfg.env == "dream" else 0
        print(f"train-policy: resuming {out} from its checkpoint at {state.step}/{steps} steps")
    elif cfg.init is not None:
        rec["init_steps"] = init_steps
        atomic_write_json(out / RUN, rec)
    model.learn(
        total_timesteps=steps - int(model.num_timesteps),
        callback=cb,
        progress_bar=False,
        tb_log_name=str(cfg.get("tb_name") or algo),
        reset_num_timesteps=ckpt is None,
    )
    from .sb3_format import save_sb3_policy

    save_sb3_policy(model.policy, algo, out, meta())  # policy.json, then policy.safetensors
    (out / "train_config.yaml").write_text(OmegaConf.to_yaml(cfg))
    folder.finish(rec)
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # only a run that has not finished needs them
    venv.close()


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym train-policy``."""
    try:
        path = train_policy(cfg)
    except (ConfigError, CheckpointError, RunMismatchError) as e:
        raise SystemExit(f"dreamgym train-policy: {e}") from None
    meta = read_json(path.parent / POLICY_CONFIG)
    print(json.dumps({k: v for k, v in meta.items() if k != "policy_kwargs"}, indent=2))  # the network's arguments stay in the file
    print(f"train-policy: policy in {path}")
    return 0
