"""``dreamgym train-wm data=<dir> out=<run>``: train the world model (read it top to bottom).

One step:
  1. the global batch for this step is a pure function of (seed, step): a fixed permutation per
     epoch, split between processes (``rank::world``); each sample's noise levels and noise are
     drawn from a generator seeded by (seed, step, its position in the global batch), and whether
     the frame / occupancy branches run this step from (seed, step). So N processes with batch B/N
     each train the same model as one process with batch B, and a resumed run repeats exactly
     what an uninterrupted one does, without relying on saved RNG states (they are saved anyway);
  2. per modality and sample: sigma ~ log-normal (EDM), sometimes sigma_max (the one-step
     sampling regime), sometimes 0 (the modality is given clean: a condition, no loss); for a
     ``partner_actions`` model, some samples go without the partner's commands
     (``noise.p_drop_partner_actions``); episodes read from a dataset get those commands replayed
     from each room's script (``envs.partner.replay_actions``);
  3. loss = sum over modalities of EDM-weighted denoising losses + reward MSE + termination BCE
     (+ for a ``state_prior`` model, the prior's MSE on its own larger batch of state-only windows,
     ``prior_batch``, drawn like the main batch from (seed, step); with ``prior_rollout`` the
     prior first dreams a few steps on some steps' windows and learns the recorded next step from
     its own dreamed context, so that it learns to undo drift rather than carry it);
     a NaN or infinite loss stops the run naming the step and the loss, before the weights change
     (the last checkpoint on disk is the last good one);
  4. AdamW step (gradients averaged across processes by Accelerate / DDP), EMA update;
  5. tensorboard: losses per modality, held-out one-step metrics against the copy-last / hold-pose
     / static-occupancy baselines, and a grid of frames (last context | truth | prediction).

Checkpoints: ``<out>/checkpoints/step_XXXXXXXX/`` with ``model.safetensors`` + ``config.json``
(raw weights), ``ema.safetensors``, ``optimizer.safetensors`` and ``trainer_state.json`` (step,
optimizer hyperparameters, RNG states); written to a temporary folder and renamed, so a kill
never leaves a half-written checkpoint. Re-running the same command resumes from the newest.
At the end ``<out>/final/`` holds the EMA weights (``WorldModel.from_pretrained(<out>/final)``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import data as D
from .model import CONFIG_NAME, WorldModel, WorldModelConfig, load_safetensors
from .noise import draw_noise

CKPT_DIR = "checkpoints"
OBS_KEYS = ("ego_rgb", "ego_depth", "motion", "partner_motion", "occupancy")
PRIOR_KEYS = ("motion", "partner_motion", "props", "actions", "partner_actions")  # what the state prior's batches hold


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


# ----------------------------------------------------------------------------- data
def save_episodes(episodes: list[dict[str, torch.Tensor]], path: str | Path) -> Path:
    """Store in-memory episodes (``data.collect_episodes``) as one safetensors file."""
    from safetensors.torch import save_file

    flat = {f"{i:06d}.{k}": v.contiguous() for i, ep in enumerate(episodes) for k, v in ep.items()}
    save_file(flat, str(path), metadata={"dreamgym": "episodes", "count": str(len(episodes))})
    return Path(path)


def _episodes_from_safetensors(path: Path) -> list[dict[str, torch.Tensor]]:
    flat = load_safetensors(path)
    eps: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        i, key = k.split(".", 1)
        eps.setdefault(i, {})[key] = v
    return [eps[i] for i in sorted(eps)]


def _episodes_from_dataset(root: Path, split: str | None, keys: tuple[str, ...]) -> list[dict[str, torch.Tensor]]:
    """Episodes of one split of a ``dreamgym collect`` dataset, in memory, in the row layout of
    ``EpisodeWindows`` (T+1 rows; the last row's action/reward are zero)."""
    from dreamgym.envs import partner as P
    from dreamgym.rollouts.dataset import Manifest, read_episode

    m = Manifest.load(root)
    task = str(m.data["env"].get("task", ""))
    out = []
    for shard, ep in m.episodes():
        if split is not None and ep.get("split") != split:
            continue
        e = read_episode(root / shard["file"], ep["group"], keys=[k for k in keys if k != "props"] + ["instruction"])
        T = e.steps
        row = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in e.observations.items()}
        pad = lambda a, dt: torch.cat([torch.from_numpy(np.asarray(a)).to(dt), torch.zeros((1, *np.asarray(a).shape[1:]), dtype=dt)])  # noqa: E731
        row["actions"] = pad(e.actions, torch.float32)
        row["rewards"] = pad(e.rewards, torch.float32)
        row["terminations"] = pad(e.terminations, torch.bool)
        row["props"] = D.props_from_qpos(torch.from_numpy(e.qpos))
        if task and "motion" in row and "partner_motion" in row:
            # the partner's commands, replayed from the room's script (a condition of the model)
            pa = P.replay_episode(task, int(ep["room_seed"]), row["motion"], row["partner_motion"])
            pa[T] = 0.0
            row["partner_actions"] = pa
        assert row["motion"].shape[0] == T + 1
        out.append(row)
    return out


def load_episodes(path: str | Path, split: str | None, keys: tuple[str, ...] = OBS_KEYS) -> list[dict[str, torch.Tensor]]:
    """Episodes from a dataset directory (its ``split``; None: all) or a safetensors episodes file.

    A safetensors file holds no split: ``train`` and None take it all, ``heldout`` takes nothing.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"training data not found: {p}")
    if p.is_file():
        return _episodes_from_safetensors(p) if split in ("train", None) else []
    if not (p / "manifest.json").exists():
        raise FileNotFoundError(f"{p} is not a dreamgym dataset (no manifest.json); make one with `dreamgym collect out={p}`")
    eps = _episodes_from_dataset(p, split, keys)
    return eps


def check_episodes(episodes: list[dict[str, torch.Tensor]], cfg: WorldModelConfig, source: str) -> None:
    """Raise naming ``source`` when the data lack a modality the config needs or have the wrong shape."""
    need = ["motion", "partner_motion", "props", "actions", "rewards", "terminations"]
    if "ego" in cfg.modalities:
        need += ["ego_rgb"] + (["ego_depth"] if cfg.ego_depth else [])
    if "occupancy" in cfg.modalities:
        need.append("occupancy")
    if cfg.partner_actions:
        need.append("partner_actions")
    ep = episodes[0]
    missing = [k for k in need if k not in ep]
    if missing:
        raise ValueError(
            f"{source}: the data lack {missing}, which the world-model config needs (modalities {cfg.modalities}); it has {sorted(ep)}"
        )
    if "ego_rgb" in need and tuple(ep["ego_rgb"].shape[1:]) != (3, cfg.data_resolution, cfg.data_resolution):
        raise ValueError(
            f"{source}: ego_rgb frames are {tuple(ep['ego_rgb'].shape[1:])}, expected (3, {cfg.data_resolution}, {cfg.data_resolution})"
        )
    if "occupancy" in need and list(ep["occupancy"].shape[1:]) != cfg.occupancy_shape:
        raise ValueError(f"{source}: occupancy is {tuple(ep['occupancy'].shape[1:])}, expected {tuple(cfg.occupancy_shape)}")


def batch_indices(step: int, n: int, batch: int, seed: int) -> list[int]:
    """The global batch of ``step``: consecutive slices of a per-epoch permutation of ``n`` windows."""
    out: list[int] = []
    pos = step * batch
    while len(out) < batch:
        epoch, off = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        take = min(batch - len(out), n - off)
        out += perm[off : off + take]
        pos += take
    return out


# ----------------------------------------------------------------------------- EMA / checkpoints
class EMA:
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        params = dict(model.named_parameters())
        for k, v in model.state_dict().items():
            if k in params:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def _optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{i}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{i}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        _, i, name = k.split(".", 2)
        state.setdefault(int(i), {})[name] = v
    for k, v in meta.get("scalars", {}).items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    py = random.getstate()
    np_state = np.random.get_state()
    return (
        {"rng.torch": torch.get_rng_state(), "rng.numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))},
        {"python": [py[0], list(py[1]), py[2]], "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]},
    )


def _set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], tensors["rng.numpy_keys"].numpy().astype(np.uint32), n[1], n[2], n[3]))


def save_checkpoint(
    out: Path, step: int, model: WorldModel, ema: EMA, opt: torch.optim.Optimizer, extra: Mapping[str, Any], keep: int
) -> Path:
    """Write a checkpoint atomically (temporary folder, then rename); keep the newest ``keep``."""
    from safetensors.torch import save_file

    root = out / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    save_file({k: v.cpu().contiguous() for k, v in ema.shadow.items()}, str(tmp / "ema.safetensors"))
    opt_t, opt_meta = _optimizer_to_flat(opt)
    rng_t, rng_meta = _rng_state()
    save_file(opt_t, str(tmp / "optimizer.safetensors"))
    save_file(rng_t, str(tmp / "rng.safetensors"))
    state = {"step": step, "optimizer": opt_meta, "rng": rng_meta, **extra}
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint folder under ``<out>/checkpoints`` (None if there is none)."""
    root = out / CKPT_DIR
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "trainer_state.json").exists()) if root.exists() else []
    return done[-1] if done else None


# ----------------------------------------------------------------------------- held-out metrics
@torch.no_grad()
def heldout_metrics(
    model: WorldModel, batch: Mapping[str, torch.Tensor], num_steps: int, seed: int
) -> tuple[dict[str, float], torch.Tensor | None]:
    """One-step metrics of ``model`` and of the trivial baselines on a held-out batch, and a frame grid."""
    from . import metrics as M

    K = model.config.context
    w = D.with_props(batch)
    ctx = {k: w[k][:, :K] for k in (*OBS_KEYS, "props") if k in w}
    if "instruction" in w:
        ctx["instruction"] = w["instruction"]
    was = model.training
    model.eval()
    extra = {"partner_actions": w["partner_actions"][:, :K]} if model.config.partner_actions and "partner_actions" in w else {}
    pred = model.imagine(ctx, w["actions"][:, :K], num_steps=num_steps, generator=torch.Generator().manual_seed(seed), **extra)
    model.train(was)
    out: dict[str, float] = {}
    truth = {k: w[k][:, K] for k in ctx if k != "instruction"}
    last = {k: w[k][:, K - 1] for k in ctx if k != "instruction"}
    grid = None
    if "ego_rgb" in pred:
        out["psnr/model"] = float(M.psnr(pred["ego_rgb"], truth["ego_rgb"]).mean())
        out["psnr/copy_last"] = float(M.psnr(last["ego_rgb"], truth["ego_rgb"]).mean())
        n = min(4, pred["ego_rgb"].shape[0])
        rows = [torch.cat([last["ego_rgb"][i], truth["ego_rgb"][i], pred["ego_rgb"][i]], -1) for i in range(n)]
        grid = torch.cat(rows, -2)  # (3, n*H, 3*W)
    out["mpjpe_mm/model"] = float(M.mpjpe_mm(pred["motion"], truth["motion"]).mean())
    out["mpjpe_mm/hold_pose"] = float(M.mpjpe_mm(last["motion"], truth["motion"]).mean())
    out["root_err_m/model"] = float(M.root_translation_error(pred["motion"], truth["motion"]).mean())
    out["root_err_m/hold_pose"] = float(M.root_translation_error(last["motion"], truth["motion"]).mean())
    if "occupancy" in pred:
        out["occ_iou/model"] = float(M.occupancy_iou(pred["occupancy"], truth["occupancy"]).mean())
        out["occ_iou/static"] = float(M.occupancy_iou(last["occupancy"], truth["occupancy"]).mean())
    out["reward_mae"] = float((pred["reward"] - w["rewards"][:, K - 1]).abs().mean())
    return out, grid


# ----------------------------------------------------------------------------- the run
def model_config_from(cfg: DictConfig, data_resolution: int) -> WorldModelConfig:
    d = OmegaConf.to_container(cfg.worldmodel, resolve=True)
    assert isinstance(d, dict)
    d["data_resolution"] = data_resolution
    return WorldModelConfig.from_dict(d, source="configs/worldmodel")


def train(cfg: DictConfig) -> Path:
    """Train (or resume) a world model as configured; returns ``<out>/final``."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    if cfg.data is None or cfg.out is None:
        raise SystemExit("dreamgym train-wm: give data=<dataset dir or episodes .safetensors> and out=<run dir>")
    torch.set_num_threads(int(cfg.num_threads))
    acc = Accelerator(cpu=str(cfg.device) == "cpu", kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    out = Path(cfg.out)
    seed = int(cfg.seed)
    train_eps = load_episodes(cfg.data, "train")
    if not train_eps:
        raise ValueError(f"{cfg.data}: no training episodes")
    held_eps = load_episodes(cfg.heldout_data, None) if cfg.get("heldout_data") else load_episodes(cfg.data, "heldout")
    res = int(train_eps[0]["ego_rgb"].shape[-1]) if "ego_rgb" in train_eps[0] else int(cfg.worldmodel.resolution)
    init = cfg.get("init")
    init_model = None
    if init:
        # fine-tuning: the architecture and normalisation come from the pretrained model
        from .model import DEFAULT_CHECKPOINT

        init_dir = Path(DEFAULT_CHECKPOINT) if str(init) == "default" else Path(str(init))
        init_model = WorldModel.from_pretrained(init_dir)
        mcfg = init_model.config
        if mcfg.data_resolution != res:
            raise ValueError(
                f"train-wm: init={init_dir} was trained on {mcfg.data_resolution}x{mcfg.data_resolution} ego frames, "
                f"but {cfg.data} has {res}x{res}; collect with resolution={mcfg.data_resolution}"
            )
    else:
        mcfg = model_config_from(cfg, res)
    check_episodes(train_eps, mcfg, str(cfg.data))
    K = mcfg.context
    ds = D.EpisodeWindows(train_eps, K + 1)
    held = D.EpisodeWindows(held_eps, K + 1) if held_eps else None
    if len(ds) == 0:
        raise ValueError(f"{cfg.data}: no training window of {K + 1} steps (episodes too short for context={K})")
    world, rank = acc.num_processes, acc.process_index
    B = int(cfg.batch_size)
    if B % world:
        raise ValueError(f"batch_size={B} must be divisible by the number of processes ({world})")
    PB = int(cfg.get("prior_batch") or 0) if mcfg.state_prior else 0
    if PB % world:
        raise ValueError(f"prior_batch={PB} must be divisible by the number of processes ({world})")
    # the state prior's own batches: state-only windows (cheap to slice and to run)
    # (``prior_rollout`` > 0: long enough for the prior to dream up to that many steps first)
    NR = int(cfg.get("prior_rollout") or 0) if PB else 0
    if NR < 0:
        raise ValueError(f"prior_rollout={NR} must be >= 0")
    ds_state = D.EpisodeWindows([{k: ep[k] for k in PRIOR_KEYS if k in ep} for ep in train_eps], K + 1 + NR) if PB else None
    if ds_state is not None and len(ds_state) == 0:
        raise ValueError(f"{cfg.data}: no episode holds {K + 1 + NR} steps (context {K}, prior_rollout {NR})")
    tcfg = OmegaConf.to_container(cfg.noise, resolve=True)
    assert isinstance(tcfg, dict)

    torch.manual_seed(seed)
    model = WorldModel(mcfg)
    ckpt = latest_checkpoint(out) if cfg.resume else None
    start = 0
    if ckpt is None and init_model is not None:
        model.load_state_dict(init_model.state_dict())
    elif ckpt is None:
        # statistics from a fixed sample of training windows (the same on every process)
        n_stat = min(len(ds), int(cfg.stats_windows))
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n_stat].tolist()
        model.norm.fit(
            (D.collate([ds[i] for i in idx[j : j + 64]]) for j in range(0, n_stat, 64)), mcfg.resolution, mcfg.ego_depth, warp=mcfg.ego_warp
        )
        if mcfg.props_dynamics:
            model.fit_props_features(D.collate([ds[i] for i in idx[j : j + 64]]) for j in range(0, n_stat, 64))
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay), betas=(0.9, 0.99))
    ema = EMA(model, float(cfg.ema_decay))
    if ckpt is not None:
        from .model import check_state_dict

        sd = load_safetensors(ckpt / "model.safetensors")
        check_state_dict(model, sd, ckpt / "model.safetensors", ckpt / CONFIG_NAME)
        model.load_state_dict(sd)
        ema.shadow = {k: v.float() for k, v in load_safetensors(ckpt / "ema.safetensors").items()}
        state = json.loads((ckpt / "trainer_state.json").read_text())
        opt.load_state_dict(_optimizer_from_flat(load_safetensors(ckpt / "optimizer.safetensors"), state["optimizer"]))
        _set_rng_state(load_safetensors(ckpt / "rng.safetensors"), state["rng"])
        start = int(state["step"])
        if acc.is_main_process and (out / "metrics.jsonl").exists():
            # drop log lines of steps after the checkpoint (they are about to be redone)
            lines = (out / "metrics.jsonl").read_text().splitlines()
            (out / "metrics.jsonl").write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["step"] <= start))
        if acc.is_main_process:
            print(f"train-wm: resuming from {ckpt} at step {start}")
    model, opt = acc.prepare(model, opt)
    raw: WorldModel = acc.unwrap_model(model)

    writer = None
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.yaml").write_text(OmegaConf.to_yaml(cfg))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    held_batch = None
    if held is not None and len(held) > 0:
        hidx = torch.randperm(len(held), generator=torch.Generator().manual_seed(seed + 1))[: int(cfg.eval_batch)].tolist()
        held_batch = D.collate([held[i] for i in hidx])
    log_path = out / "metrics.jsonl"
    steps = int(cfg.steps)
    stop_after = cfg.get("stop_after")
    bar = tqdm(total=steps, initial=start, desc="train-wm", disable=not (acc.is_main_process and cfg.progress), dynamic_ncols=True)
    t0, samples = time.time(), 0
    lr_sched = lambda s: float(cfg.lr) * min(1.0, (s + 1) / max(1, int(cfg.warmup_steps)))  # noqa: E731
    step = start
    for step in range(start, steps):
        gidx = batch_indices(step, len(ds), B, seed)
        positions = list(range(rank, B, world))
        batch = D.collate([ds[gidx[j]] for j in positions])
        noise, sigma, branches = draw_noise(mcfg, tcfg, step, positions, seed)
        prior_window = None
        if ds_state is not None:
            pidx = batch_indices(step, len(ds_state), PB, seed + 1_000)
            ppos = list(range(rank, PB, world))
            prior_window = ds_state.batch([pidx[j] for j in ppos])
            if mcfg.partner_actions:
                gk = torch.Generator().manual_seed(seed * 7_717 + step * 131 + 5)
                keep = torch.rand(PB, generator=gk) >= float(tcfg.get("p_drop_partner_actions", 0.2))
                prior_window["partner_known"] = keep[ppos]
            if NR:
                # on some steps the prior first dreams n steps from the window's start and then
                # learns the recorded next step from its own dreamed context (it learns to undo
                # its drift); n = 0 on half of the steps, else uniform in 1..cap, where the cap grows
                # by one step every 100 steps up to prior_rollout (an untrained prior's dreams are noise)
                gr = torch.Generator().manual_seed(seed * 4_051 + step * 389 + 13)
                cap = min(NR, 1 + step // 100)
                n = 0 if float(torch.rand(1, generator=gr)[0]) < 0.5 else int(torch.randint(1, cap + 1, (1,), generator=gr)[0])
                if n:
                    prior_window = raw.prior_rollout(prior_window, n)
                else:
                    prior_window = {k: (v[:, : K + 1] if v.dim() >= 2 else v) for k, v in prior_window.items()}
        for gparam in opt.param_groups:
            gparam["lr"] = lr_sched(step)
        losses = model(batch, noise, sigma, branches, prior_window)
        total = losses["total"]
        # the global batch's losses (the mean over processes), for the guard and the logs
        names = list(losses)
        glob = acc.reduce(torch.stack([losses[k].detach().float() for k in names]), reduction="mean")
        logged = {k: float(v) for k, v in zip(names, glob)}
        check = glob[names.index("total")].reshape(1)
        if not bool(torch.isfinite(check).all()):
            bar.close()
            raise NonFiniteLossError(
                f"train-wm: non-finite loss {float(check[0])} at step {step} "
                f"(per term: {logged}); stopped before updating the weights; "
                f"the last good checkpoint is {latest_checkpoint(out)}"
            )
        acc.backward(total)
        gn = acc.clip_grad_norm_(model.parameters(), float(cfg.grad_clip))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(raw, step)
        samples += B
        done = step + 1
        if acc.is_main_process:
            rec = {"step": done, **{k: round(v, 6) for k, v in logged.items()}, "grad_norm": float(gn), "branches": branches}
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if writer is not None and (done % int(cfg.log_every) == 0 or done == steps):
                for k, v in logged.items():
                    writer.add_scalar(f"loss/{k}", v, done)
                writer.add_scalar("train/grad_norm", float(gn), done)
                writer.add_scalar("train/lr", lr_sched(step), done)
                writer.add_scalar("train/samples_per_s", samples / max(1e-9, time.time() - t0), done)
            bar.set_postfix(loss=f"{logged['total']:.3f}")
            bar.update(1)
        if (
            held_batch is not None
            and int(cfg.eval_every) > 0
            and (done % int(cfg.eval_every) == 0 or done == steps)
            and acc.is_main_process
        ):
            ema_model = WorldModel(mcfg)
            ema_model.load_state_dict(ema.shadow)
            mets, grid = heldout_metrics(ema_model, held_batch, int(cfg.eval_num_steps), seed)
            for k, v in mets.items():
                writer.add_scalar(f"heldout/{k}", v, done)
            if grid is not None:
                writer.add_image("heldout/last_truth_pred", grid, done)
            with open(out / "heldout.jsonl", "a") as f:
                f.write(json.dumps({"step": done, **mets}) + "\n")
        if done % int(cfg.ckpt_every) == 0 or done == steps:
            acc.wait_for_everyone()
            if acc.is_main_process:
                save_checkpoint(out, done, raw, ema, opt, {"elapsed_s": time.time() - t0}, int(cfg.keep_checkpoints))
        if stop_after is not None and done >= int(stop_after):
            break
    bar.close()
    final = out / "final"
    acc.wait_for_everyone()
    if acc.is_main_process and step + 1 >= steps:
        raw.save_pretrained(final, state_dict=ema.shadow)
        raw.save_pretrained(out / "final_raw")
        if writer is not None:
            writer.close()
        print(f"train-wm: {steps} steps, {time.time() - t0:.0f} s this run; EMA weights in {final}")
    acc.end_training()
    return final


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym train-wm``."""
    train(cfg)
    return 0
