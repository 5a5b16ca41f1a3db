"""``dreamgym bench transfer``: does a policy trained only in imagination work in the simulator, at
equal real experience?

A **cell** is a task (``tasks``: reach, push, social, avoid) and a policy input (``inputs``, each
named in ``obs_keys``): ``state`` reads ``[task_obs]``; ``pixels`` reads ``[ego_rgb, motion,
instruction]`` -- the head camera, the body's own motion and the instruction, so the policy knows
its task, and no ``task_obs``. In each cell six arms, every one trained or measured in the run:

- ``dream``: PPO only in ``DreamVecEnv`` on the world model (``checkpoint``, default the shipped
  one), ``dream_steps`` dreamed steps. Its real experience is **N** = ``wm_data_steps`` (the real
  steps the world model was trained on: 64,000 for the shipped one, 16,000 per task, see
  ``worldmodel/default/TRAINING.md``; every task's N counts all of them, as the model needs them
  all) plus the K-1 simulator steps that started each dreamed episode, counted during training
  (``dream_start_steps``);
- ``real_n``: the same PPO in ``EgoRoomVecEnv`` with N real steps;
- ``real_10n``: the same with ``real_multiplier`` x N (10 N);
- ``diamond``: the DIAMOND-style loop (``dreamgym diamond``) from the same world model, with
  ``diamond.budget`` more real steps of its own to collect with and update the world model on
  (``benchmarks/transfer_diamond.py``; its N, ``diamond_n_real_steps``, is reported beside the
  dream arm's);
- ``expert``: the scripted expert; ``random``: random actions.

The dream arm runs first, since N is known only when its training has counted its start steps;
``real_n`` and ``real_10n`` then train on that N. PPO trains in whole rollouts (``ppo.n_steps`` x
``num_envs.real``), so a simulator arm may get up to one rollout more than its budget; the JSON
reports the steps each arm actually used (this favours the simulator arms).

How N is chosen: the comparison means most where ``real_n`` is clearly below ``real_10n`` (the
regime where a world model should help), so N would be chosen per task to be there. With the
shipped world model N is fixed by its data, so the bench reports per cell whether that held (``regime_ok``: ``real_10n`` succeeds
more often than ``real_n``, McNemar exact p < ``regime_alpha``); another N is a world model trained
on other data, given per task with ``per_task.<task>.checkpoint`` and ``.wm_data_steps``.

All arms of a cell are scored in one batch on the same held-out rooms
(``policies.evaluate.evaluate_policies``, ``eval_episodes`` each): success with its 95 % Wilson
interval, mean return with its 95 % t-interval; the dream against ``real_n`` and against
``real_10n`` room by room (McNemar's exact test on success, paired bootstrap intervals of the
success and the return difference; ``benchmarks/transfer_stats.py``). The targets
(``targets``): ``dream >= real_n`` in every cell, ``dream >= 0.8 real_10n`` for state on every
task and for pixels on reach and push, on the success rates (``target_met``). The **value gap**
is the return the dream predicts for the dream policy minus its real return: the dream policy is
dreamed from the same held-out rooms (K-1 steps of ``context_policy``, then dreamed to the same
episode length), and the expert beside it as a diagnostic of the world model
(``expert_dream_success``: a dream that does not follow the controls fails the expert first);
every other trained arm is dreamed from the same rooms too (``in_dream``: its dreamed success
beside its real one, which says whether the dream could carry what PPO found in the simulator).

Stages (each trained policy, the real evaluation and the dreamed one) are kept in
``run_dir/<task>_<input>/<arm>/<key>/``, the key a hash of the code version, the stage's config
and its inputs (the world model's files, the evaluated policies' files). With ``reuse`` a re-run
skips a finished stage and the JSON's ``reused`` names its key; a PPO stage killed midway resumes
from its last checkpoint (``checkpoint_every``; ``train-policy``'s own resume). ``reuse=false``
trains every stage afresh.

``scale`` multiplies the training budgets (dream steps, N and 10 N) for quick runs; the
evaluation episodes are set by ``eval_episodes`` and ``value_gap_episodes`` alone. A run at
``scale != 1`` is no comparison at equal real experience (``full_scale: false`` in the JSON).

Each cell's JSON is written as soon as it finishes, ``<out stem>_<task>_<input>.json`` beside
``out`` (default ``benchmarks/results/transfer_<task>_<input>.json``), and the overview ``out``
(``benchmarks/results/transfer.json``) after every cell, with each cell's headline figures and
``complete`` (all planned cells done).

    dreamgym bench transfer [tasks=[reach]] [inputs=[state]] [only_arms=[dream,real_n]] [scale=0.01]
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dreamgym.benchmarks import transfer_stats as stats
from dreamgym.benchmarks.runner import RESULTS_DIR, BenchRun, hash_path
from dreamgym.benchmarks.transfer_diamond import diamond_stage
from dreamgym.envs.tasks import TASKS

ARMS = ("dream", "real_n", "real_10n", "diamond", "expert", "random")
TRAINED = {"dream": "dream", "real_n": "real", "real_10n": "real"}  # arm -> env it trains in (PPO)
BUILT_IN = ("expert", "random")
PER_TASK_KEYS = ("checkpoint", "wm_data_steps", "dream_steps")


class TransferConfigError(ValueError):
    """A bad value of ``configs/bench/transfer.yaml``; ``key`` names it."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


@dataclass(frozen=True)
class Cell:
    """One task and one policy input, with the world model and the budgets that cell uses."""

    task: str
    inputs: str
    obs_keys: tuple[str, ...]
    checkpoint: str | None
    wm_data_steps: int
    dream_steps: int

    @property
    def name(self) -> str:
        return f"{self.task}_{self.inputs}"

    def world_model_path(self) -> Path:
        from dreamgym.worldmodel.dream_env import DEFAULT_CHECKPOINT

        return Path(self.checkpoint) if self.checkpoint is not None else DEFAULT_CHECKPOINT


# ------------------------------------------------------------------------------ the config
def _get(cfg: Any, key: str) -> Any:
    v = getattr(cfg, key)
    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v


def _list(values: Any) -> str:
    return "[" + ",".join(map(str, values)) + "]"


def _count(key: str, v: Any, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise TransferConfigError(key, f"{key}={v!r}: expected a whole number >= {low}")
    return v


def check_config(cfg: Any) -> None:
    """Refuse, in one line naming the key, a task, input, arm or per-task override this bench does not know."""
    from dreamgym.envs.spaces import check_obs_keys
    from dreamgym.envs.tasks import TASKS

    tasks, inputs, obs_keys = list(_get(cfg, "tasks")), list(_get(cfg, "inputs")), dict(_get(cfg, "obs_keys"))
    for key, values, known in (("tasks", tasks, sorted(TASKS)), ("inputs", inputs, list(obs_keys))):
        if not values:
            raise TransferConfigError(key, f"{key}=[] measures nothing; choose from {', '.join(known)}")
        bad = [v for v in values if v not in known]
        if bad:
            raise TransferConfigError(key, f"{key}={_list(values)}: {_list(bad)} unknown; choose from {', '.join(known)}")
    for name in inputs:
        try:
            check_obs_keys(list(obs_keys[name] or []))
        except ValueError as e:
            raise TransferConfigError(f"obs_keys.{name}", f"obs_keys.{name}={_list(obs_keys[name] or [])}: {e}") from None
    only = _get(cfg, "only_arms")
    if only is not None:
        bad = [a for a in only if a not in ARMS]
        if bad or not only:
            raise TransferConfigError("only_arms", f"only_arms={_list(only)}: choose a non-empty subset of {', '.join(ARMS)}")
        if {"real_n", "real_10n"} & set(only) and "dream" not in only:
            raise TransferConfigError(
                "only_arms",
                f"only_arms={_list(only)}: the simulator arms' budget N is counted by the dream arm; add dream (a finished one is reused)",
            )
    scale = _get(cfg, "scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise TransferConfigError("scale", f"scale={scale!r}: expected a number > 0 (1: the full budgets)")
    for task, over in dict(_get(cfg, "per_task") or {}).items():
        if task not in TASKS:
            raise TransferConfigError(f"per_task.{task}", f"per_task.{task}: no such task; choose from {', '.join(sorted(TASKS))}")
        bad = sorted(set(over or {}) - set(PER_TASK_KEYS))
        if bad:
            raise TransferConfigError(
                f"per_task.{task}", f"per_task.{task}: {_list(bad)} unknown; a task may set {', '.join(PER_TASK_KEYS)}"
            )
        for key in ("wm_data_steps", "dream_steps"):
            if key in (over or {}):
                _count(f"per_task.{task}.{key}", over[key])
        ck = (over or {}).get("checkpoint")
        if ck is not None and not Path(str(ck)).exists():
            raise TransferConfigError(f"per_task.{task}.checkpoint", f"per_task.{task}.checkpoint={ck}: no such world-model folder")


def cells(cfg: DictConfig) -> list[Cell]:
    """The planned cells, every task x every input, with their per-task overrides."""
    check_config(cfg)
    out = []
    for task in cfg.tasks:
        over = dict((cfg.get("per_task") or {}).get(task) or {})
        ck = over.get("checkpoint", cfg.checkpoint)
        for name in cfg.inputs:
            out.append(
                Cell(
                    task=str(task),
                    inputs=str(name),
                    obs_keys=tuple(cfg.obs_keys[name]),
                    checkpoint=None if ck is None else str(ck),
                    wm_data_steps=int(over.get("wm_data_steps", cfg.wm_data_steps)),
                    dream_steps=int(over.get("dream_steps", cfg.dream_steps)),
                )
            )
    return out


def arms_of(cfg: DictConfig) -> list[str]:
    """The arms to run (``only_arms``, or all), in the order they run."""
    only = cfg.get("only_arms")
    return [a for a in ARMS if only is None or a in set(only)]


def scaled(cfg: DictConfig, steps: float) -> int:
    """A training budget times ``scale`` (at least one step)."""
    return max(1, math.ceil(float(cfg.scale) * float(steps)))


def episode_steps(task: str, cfg: DictConfig) -> int:
    """Steps of an evaluation episode: the task's ``max_steps``, or ``eval_max_steps`` if fewer."""
    from dreamgym.envs.tasks import make_task

    own, cap = make_task(task).max_steps, cfg.get("eval_max_steps")
    return own if cap is None else min(own, int(cap))


def cell_paths(out: Any) -> tuple[Path, Callable[[Cell], Path]]:
    """The overview's path (``out``, default ``benchmarks/results/transfer.json``) and each cell's beside it."""
    overview = Path(out) if out else RESULTS_DIR / "transfer.json"
    return overview, lambda cell: overview.with_name(f"{overview.stem}_{cell.name}.json")


# ------------------------------------------------------------------------------ stages
def _train_cfg(cfg: DictConfig, cell: Cell, env: str, steps: int) -> DictConfig:
    from dreamgym.configs import compose

    over = {
        "env": env,
        "task": cell.task,
        "checkpoint": cell.checkpoint if env == "dream" else None,
        "algo": "ppo",
        "out": ".",
        "steps": int(steps),
        "num_envs": int(cfg.num_envs[env]),
        "obs_keys": list(cell.obs_keys),
        "seed": int(cfg.seed),
        "num_denoising_steps": cfg.get("num_denoising_steps") if env == "dream" else None,  # None: the model's own sampler
        "init_noise": cfg.get("init_noise") if env == "dream" else None,
        "progress": bool(cfg.progress),
        "num_threads": int(cfg.threads),
        "checkpoint_every": int(cfg.checkpoint_every),
    }
    merged = OmegaConf.merge(compose("train_policy", []), over, {"ppo": cfg.ppo})
    assert isinstance(merged, DictConfig)
    return merged


def train_stage(run: BenchRun, cfg: DictConfig, cell: Cell, arm: str, steps: int) -> dict[str, Any]:
    """PPO for ``arm`` in its env for ``steps`` steps, cached by key (the training config, and
    the world model's files for the dream). Returns the stage's figures with ``policy``, its folder."""
    from dreamgym.policies.train import train_policy

    env = TRAINED[arm]
    train_cfg = _train_cfg(cfg, cell, env, steps)
    stage_cfg = {k: v for k, v in OmegaConf.to_container(train_cfg, resolve=True).items() if k not in ("out", "progress", "num_threads")}
    inputs = {"world_model": cell.world_model_path()} if env == "dream" else {}

    def measure(folder: Path) -> dict[str, Any]:
        if not run.reuse:  # measure afresh: train-policy would return a finished run, or resume a killed one
            for p in folder.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        train_cfg.out = str(folder)
        policy = train_policy(train_cfg)
        meta = json.loads((policy.parent / "policy.json").read_text())
        keep = ("steps", "real_env_steps", "episodes", "train_return_recent", "train_success_recent", "sampler", "starts", "wall_s")
        return {"env": env, "budget": int(steps), **{k: meta.get(k) for k in keep}}

    r = run.cached(arm, measure, config=stage_cfg, inputs=inputs)
    return r | {"policy": str(run.arm_dir(arm, run.keys[arm]))}


def _policy_files(folder: str) -> dict[str, Path]:
    return {"weights": Path(folder) / "policy.safetensors", "config": Path(folder) / "policy.json"}


def real_eval_stage(run: BenchRun, cfg: DictConfig, cell: Cell, policies: Mapping[str, str]) -> dict[str, Any]:
    """Every arm's policy in one batch on the same held-out rooms (``eval_real``, cached by key:
    the evaluation's config and the trained policies' files)."""
    from dreamgym.policies.evaluate import evaluate_policies

    max_steps = episode_steps(cell.task, cfg)
    stage_cfg = {
        "task": cell.task,
        "policies": {a: p if a in BUILT_IN else "trained" for a, p in policies.items()},
        "episodes": int(cfg.eval_episodes),
        "seed": int(cfg.eval_seed),
        "max_worlds": int(cfg.eval_max_worlds),
        "max_steps": max_steps,
    }
    inputs = {f"{a}_{k}": p for a, f in policies.items() if a not in BUILT_IN for k, p in _policy_files(f).items()}

    def measure(folder: Path) -> dict[str, Any]:
        tic = time.time()
        scores = evaluate_policies(
            dict(policies),
            task=cell.task,
            episodes=int(cfg.eval_episodes),
            seed=int(cfg.eval_seed),
            max_worlds=int(cfg.eval_max_worlds),
            progress=bool(cfg.progress),
            per_episode=True,
            max_steps=max_steps,
        )
        for s in scores.values():
            s.pop("wall_s", None)
        return {"scores": scores, "max_steps": max_steps, "wall_s": time.time() - tic}

    return run.cached("eval_real", measure, config=stage_cfg, inputs=inputs)


def dream_eval_stage(run: BenchRun, cfg: DictConfig, cell: Cell, trained: Mapping[str, str], model: Any) -> dict[str, Any]:
    """Every trained arm's policy (``trained``: arm -> folder; the dream arm first) and the expert in
    the dream, from the real evaluation's held-out rooms (``eval_dream``, cached by key: the
    config, the world model's and the policies' files). The simulator arms' dreamed success says
    whether the dream could carry what PPO found in the simulator."""
    from dreamgym.policies.evaluate import evaluate_in_dream, heldout_rooms
    from dreamgym.worldmodel.starts import SimulatorStarts

    n, seed = int(cfg.value_gap_episodes), int(cfg.eval_seed)
    horizon = episode_steps(cell.task, cfg) - (int(model.config.context) - 1)
    if horizon < 1:
        raise ValueError(f"eval_max_steps={cfg.eval_max_steps} leaves no dreamed step after the world model's K-1 context steps")
    stage_cfg = {
        "task": cell.task,
        "episodes": n,
        "seed": seed,
        "horizon": horizon,
        "context_policy": str(cfg.context_policy),
        "num_denoising_steps": cfg.get("num_denoising_steps"),
        "init_noise": cfg.get("init_noise"),
        "arms": [*trained, "expert"],
    }
    inputs = {"world_model": cell.world_model_path()}
    inputs |= {f"{a}_{k}": p for a, folder in trained.items() for k, p in _policy_files(folder).items()}

    def measure(folder: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        t0 = time.time()
        for name, spec in (*trained.items(), ("expert", "expert")):
            tic = time.time()
            starts = SimulatorStarts(str(cfg.context_policy), rooms=heldout_rooms(n, seed), seed=seed)
            r = evaluate_in_dream(
                spec,
                world_model=model,
                task=cell.task,
                episodes=n,
                seed=seed,
                num_denoising_steps=cfg.get("num_denoising_steps"),
                init_noise=cfg.get("init_noise"),
                horizon=horizon,
                progress=bool(cfg.progress),
                starts=starts,
            )
            out[name] = r | {"wall_s": time.time() - tic}
        return {"policies": out, "horizon": horizon, "context_policy": str(cfg.context_policy), "wall_s": time.time() - t0}

    return run.cached("eval_dream", measure, config=stage_cfg, inputs=inputs)


# ------------------------------------------------------------------------------ one cell
def _check_world_model(cell: Cell, model: Any) -> None:
    """A pixel policy sees the dream's frames in training and the simulator's in evaluation: the same size."""
    from dreamgym.envs.spaces import DEFAULT_RESOLUTION, IMAGE_KEYS

    res = int(model.config.data_resolution)
    if any(k in IMAGE_KEYS for k in cell.obs_keys) and res != DEFAULT_RESOLUTION:
        raise ValueError(
            f"the world model {cell.world_model_path()} dreams {res}x{res} frames but the simulator renders "
            f"{DEFAULT_RESOLUTION}x{DEFAULT_RESOLUTION}; input {cell.inputs} needs a world model trained at {DEFAULT_RESOLUTION}"
        )


def run_cell(cfg: DictConfig, cell: Cell, run: BenchRun) -> dict[str, Any]:
    """Train (or reuse) the cell's arms, score them, and put the cell's figures in ``run.summary``."""
    from dreamgym.worldmodel.dream_env import load_world_model

    arms = arms_of(cfg)
    model = load_world_model(cell.world_model_path()) if "dream" in arms else None
    if model is not None:
        _check_world_model(cell, model)
    trained: dict[str, dict[str, Any]] = {}
    n_real = None
    if "dream" in arms:
        trained["dream"] = train_stage(run, cfg, cell, "dream", scaled(cfg, cell.dream_steps))
        n_real = cell.wm_data_steps + int(trained["dream"]["real_env_steps"])
    for arm, mult in (("real_n", 1), ("real_10n", int(cfg.real_multiplier))):
        if arm in arms:
            assert n_real is not None  # check_config: the simulator arms come with the dream arm
            trained[arm] = train_stage(run, cfg, cell, arm, scaled(cfg, mult * n_real))
    if "diamond" in arms:
        trained["diamond"] = diamond_stage(run, cfg, cell)
    policies = {a: (trained[a]["policy"] if a in trained else a) for a in arms}
    real = real_eval_stage(run, cfg, cell, policies)
    in_dream = {a: trained[a]["policy"] for a in ("dream", "real_n", "real_10n", "diamond") if a in trained}
    dream = dream_eval_stage(run, cfg, cell, in_dream, model) if "dream" in arms else None
    run.summary = cell_summary(cfg, cell, real["scores"], trained, dream, n_real)
    return run.summary


def cell_summary(
    cfg: DictConfig,
    cell: Cell,
    scores: Mapping[str, Any],
    trained: Mapping[str, Any],
    dream: Mapping[str, Any] | None,
    n_real: int | None,
) -> dict[str, Any]:
    """A cell's figures: each arm's success and return with intervals, the paired comparisons,
    the regime, the targets, the value gap and the budgets."""
    B, seed = int(cfg.bootstrap), int(cfg.eval_seed)
    figures = {a: stats.arm_figures(s) for a, s in scores.items()}
    pairs = [("dream", "real_n"), ("dream", "real_10n"), ("diamond", "real_n"), ("diamond", "real_10n"), ("diamond", "dream")]
    comparisons = {f"{a}_vs_{o}": stats.compare(scores[a], scores[o], B, seed) for a, o in pairs if {a, o} <= set(scores)}
    regime = (
        stats.regime(scores["real_n"], scores["real_10n"], float(cfg.regime_alpha), B, seed)
        if {"real_n", "real_10n"} <= set(scores)
        else None
    )
    targets = stats.targets({a: f["success"] for a, f in figures.items()}, cell.task, cell.inputs, OmegaConf.to_container(cfg.targets))
    out: dict[str, Any] = {
        "task": cell.task,
        "input": cell.inputs,
        "obs_keys": list(cell.obs_keys),
        "arms": figures,
        "comparisons": comparisons,
        "regime": regime,
        "regime_ok": None if regime is None else regime["ok"],
        "targets": targets,
        "target_met": all(t["met"] for t in targets.values()) if targets else None,
        "paired_rooms": len({tuple(s["room_seeds"]) for s in scores.values()}) == 1,
        "full_scale": float(cfg.scale) == 1.0,
    }
    if dream is not None:
        d, e = dream["policies"]["dream"], dream["policies"]["expert"]
        out |= {
            "value_gap": d["mean_return"] - figures["dream"]["return"],
            "dream_predicted_return": d["mean_return"],
            "dream_predicted_return_ci95": d["return_ci95"],
            "dream_predicted_success": d["success_rate"],
            "expert_dream_success": e["success_rate"],
            "expert_dream_return": e["mean_return"],
            "sampler": d.get("sampler"),
            # each arm's success and return in the dream (same held-out rooms) beside the simulator's
            "in_dream": {
                a: {"dream_success": r["success_rate"], "dream_return": r["mean_return"], "real_success": figures[a]["success"]}
                for a, r in dream["policies"].items()
                if a in figures
            },
        }
    out["budgets"] = {
        "world_model": str(cell.world_model_path()),
        "world_model_sha256": hash_path(cell.world_model_path()) if "dream" in trained else None,
        "wm_data_steps": cell.wm_data_steps,
        "dream_start_steps": int(trained["dream"]["real_env_steps"]) if "dream" in trained else None,
        "n_real_steps": n_real,
        "diamond_n_real_steps": cell.wm_data_steps + int(trained["diamond"]["real_env_steps"]) if "diamond" in trained else None,
        "real_multiplier": int(cfg.real_multiplier),
        "scale": float(cfg.scale),
        "steps": {a: int(t["steps"]) for a, t in trained.items()},  # as trained: whole PPO rollouts
        "budget": {a: int(t["budget"]) for a, t in trained.items()},
        "real_steps": {a: int(t["real_env_steps"]) for a, t in trained.items()},
        "eval_episodes_per_arm": figures[next(iter(figures))]["episodes"],
        "value_gap_episodes": int(cfg.value_gap_episodes) if dream is not None else None,
    }
    return out


def headline(s: Mapping[str, Any], path: Path, run: BenchRun) -> dict[str, Any]:
    """A cell's line in the overview."""
    return _headline(s, path, sorted(run.reused), run.result()["wall_s"])


def earlier_cells(overview_path: Path, skip: Sequence[str]) -> dict[str, Any]:
    """Headlines of the cells on record beside the overview that this run did not measure (their
    own JSON files, written by earlier runs: each says when and on which commit)."""
    out: dict[str, Any] = {}
    for task in sorted(TASKS):
        for name in ("state", "pixels"):
            cell_name = f"{task}_{name}"
            path = overview_path.with_name(f"{overview_path.stem}_{cell_name}.json")
            if cell_name in skip or not path.is_file():
                continue
            try:
                d = json.loads(path.read_text())
                line = _headline(d["summary"], path, sorted(d.get("reused") or {}), d.get("wall_s"))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{path}: not a bench transfer cell file ({type(e).__name__}: {e}); move it away or re-run that cell"
                ) from e
            out[cell_name] = line | {"earlier_run": {"created": d.get("created"), "code": d.get("code")}}
    return out


def _headline(s: Mapping[str, Any], path: Path, reused: list[str], wall_s: Any) -> dict[str, Any]:
    return {
        "file": str(path),
        "success": {a: f["success"] for a, f in s["arms"].items()},
        "success_ci95": {a: f["success_ci95"] for a, f in s["arms"].items()},
        "return": {a: f["return"] for a, f in s["arms"].items()},
        "mcnemar_p": {k: c["mcnemar"]["p"] for k, c in s["comparisons"].items()},
        "n_real_steps": s["budgets"]["n_real_steps"],
        "dream_start_steps": s["budgets"]["dream_start_steps"],
        "regime_ok": s["regime_ok"],
        "targets": {k: t["met"] for k, t in s["targets"].items()},
        "target_met": s["target_met"],
        "value_gap": s.get("value_gap"),
        "full_scale": s["full_scale"],
        "reused": reused,
        "wall_s": wall_s,
    }


# ------------------------------------------------------------------------------ the bench
def bench(
    cfg: DictConfig, overview: BenchRun | None = None, on_cell: Callable[[BenchRun, BenchRun, Cell], Any] | None = None
) -> dict[str, Any]:
    """Every planned cell (``configs/bench/transfer.yaml``); returns the overview's JSON-ready result.

    ``on_cell(overview, cell_run, cell)`` is called after each cell (the entry point writes both
    JSON files then, so a long run leaves its finished cells behind)."""
    plan = cells(cfg)
    whole = OmegaConf.to_container(cfg, resolve=True)
    overview = overview or BenchRun("transfer", whole)
    done: dict[str, Any] = {}
    _, cell_path = cell_paths(cfg.get("out"))
    for cell in plan:
        run = BenchRun("transfer", whole | {"cell": asdict(cell)}, cache_dir=Path(cfg.run_dir) / cell.name, reuse=bool(cfg.reuse))
        s = run_cell(cfg, cell, run)
        done[cell.name] = headline(s, cell_path(cell), run)
        overview.arms[cell.name] = done[cell.name]
        overview.keys |= {f"{cell.name}/{a}": k for a, k in run.keys.items()}
        overview.reused |= {f"{cell.name}/{a}": r for a, r in run.reused.items()}
        met = [h["target_met"] for h in done.values() if h["target_met"] is not None]
        overview.summary = {
            "done": list(done),
            "planned": [c.name for c in plan],
            "complete": len(done) == len(plan),
            "all_targets_met": bool(met) and all(met) and len(done) == len(plan),
            "arms": arms_of(cfg),
            "target_met": {name: h["target_met"] for name, h in done.items()},
            "regime_ok": {name: h["regime_ok"] for name, h in done.items()},
            "full_scale": float(cfg.scale) == 1.0,
        }
        _print_cell(cell, s)
        if on_cell is not None:
            on_cell(overview, run, cell)
    return overview.result()


def _print_cell(cell: Cell, s: Mapping[str, Any]) -> None:
    rows = ", ".join(f"{a} {f['success']:.2f}" for a, f in s["arms"].items())
    n = s["budgets"]["n_real_steps"]
    print(
        f"bench transfer ({cell.name}): success {rows}; N {n}; regime ok: {s['regime_ok']}; target met: {s['target_met']}"
        + (f"; value gap {s['value_gap']:+.2f}" if "value_gap" in s else ""),
        flush=True,
    )


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym bench transfer``."""
    torch.set_num_threads(int(cfg.threads))
    overview_path, cell_path = cell_paths(cfg.get("out"))

    def write(overview: BenchRun, cell_run: BenchRun, cell: Cell) -> None:
        cell_run.write(cell_path(cell))
        earlier = earlier_cells(overview_path, skip=list(overview.summary["done"]))
        overview.arms.update(earlier)
        on_record = sorted(set(overview.summary["done"]) | set(earlier))
        overview.summary |= {
            "from_earlier_runs": sorted(earlier),
            "cells_on_record": on_record,
            "all_cells_on_record": len(on_record) == 2 * len(TASKS),
        }
        overview.write(overview_path)

    s = bench(cfg, on_cell=write)["summary"]
    print(f"bench transfer: {len(s['done'])} cells, complete: {s['complete']}, all targets met: {s['all_targets_met']}; {overview_path}")
    return 0
