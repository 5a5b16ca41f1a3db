"""The world-model trainer: one loop for ``train-wm``, the DIAMOND-style loop, the benchmarks and the demo.

``train_world_model(model, windows, training, out)`` trains ``model`` on a window source
(``worldmodel.windows``) as ``training`` (a ``TrainingConfig``) says, keeping the run in ``out``.
One step (read ``Trainer._step`` top to bottom):

  1. the global batch of this step is a pure function of (seed, step): a fixed permutation per
     epoch, split between processes (``rank::world``); each sample's noise levels and noise are
     drawn from a generator seeded by (seed, step, its position in the global batch), and whether
     the frame / occupancy branches run this step from (seed, step). So N processes with batch
     B/N each train the same model as one process with batch B, and a resumed run repeats exactly
     what an uninterrupted one does, whatever part of the data is cached in memory;
  2. per modality and sample: sigma ~ log-normal (EDM), sometimes sigma_max (the one-step
     sampling regime), sometimes 0 (the modality is given clean: a condition, no loss); for a
     ``partner_actions`` model, some samples go without the partner's commands;
  3. loss = sum over modalities of EDM-weighted denoising losses + reward MSE + termination BCE
     (+ for a ``state_prior`` model, the prior's MSE on its own larger batch of state-only
     windows, ``prior_batch``, drawn like the main batch from (seed, step); with
     ``prior_rollout`` the prior first dreams a few steps on some steps' windows and learns the
     recorded next step from its own dreamed context, so that it learns to undo drift rather than
     carry it); a NaN or infinite loss stops the run naming the step and the loss, before the
     weights change (the last checkpoint on disk is the last good one);
  4. AdamW step after a linear warm-up (gradients averaged across processes by Accelerate / DDP),
     gradient clipping, EMA update;
  5. logs: ``metrics.jsonl`` and tensorboard (losses per modality; held-out one-step metrics
     against the copy-last / hold-pose / static-occupancy baselines, and a frame grid).

After the main steps a ``props_dynamics`` model's props network alone learns from its own
multi-step rollouts (``props_rollout_steps``; ``worldmodel/props_stage.py``).

A model whose normalisation statistics are not fitted yet gets them from ``stats_windows``
training windows first; a pretrained one keeps its own.

Checkpoints: ``<out>/checkpoints/step_XXXXXXXX/`` with ``model.safetensors`` + ``config.json``
(raw weights), ``ema.safetensors``, ``optimizer.safetensors`` and ``trainer_state.json`` (step,
optimizer hyperparameters, RNG states); written to a temporary folder and renamed, so a kill never
leaves a half-written checkpoint. ``<out>/run.json`` records what the run trains on and how (data
fingerprint, model and training configs, code version): a re-run into the same ``out`` resumes
from the newest checkpoint only if they all match, and otherwise refuses, listing the
differences. At the end ``<out>/final/`` holds the EMA weights (``WorldModel.from_pretrained``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import data as D
from .config import TrainingConfig
from .model import DEFAULT_CHECKPOINT, WorldModel
from .train_state import (
    EMA,
    PROPS_STAGE_LOG,
    RUN_RECORD,
    ResumeMismatchError,
    latest_checkpoint,
    open_run_folder,
    record_differences,
    restore_checkpoint,
    run_record,
    save_checkpoint,
    write_result,
)
from .windows import OBS_KEYS, PRIOR_KEYS, WindowSource


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainerOptions:
    """How a run is kept and shown; nothing here changes the weights."""

    name: str = "train-wm"  # in messages and on the progress bar
    device: str = "cpu"  # cpu or cuda
    resume: bool = True  # continue from the newest checkpoint in out (false: start over)
    log_every: int = 20  # tensorboard scalars every this many steps
    eval_every: int = 500  # held-out metrics every this many steps (0: never)
    eval_batch: int = 32
    # a training-time check that follows the loss, not what users dream (eval-wm and the dream
    # env use the model's own sampler): one denoising step is enough and cheap
    eval_num_steps: int = 1
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    stop_after: int | None = None  # stop after this step (continue by re-running)
    progress: bool = True
    num_workers: int = 0  # loader worker processes reading the main batches
    save_raw: bool = True  # also write the raw (not averaged) weights to <out>/final_raw
    tensorboard: bool = True
    files: dict[str, str] = field(default_factory=dict)  # more files to write into out once the run starts


def check_training_config(tc: TrainingConfig, options: TrainerOptions) -> None:
    """Refuse out-of-range settings in one line naming the key, its value and what is allowed."""
    n = tc.noise
    rules = [
        ("steps", tc.steps, isinstance(tc.steps, int) and tc.steps > 0, "a positive integer"),
        ("batch_size", tc.batch_size, isinstance(tc.batch_size, int) and tc.batch_size > 0, "a positive integer"),
        ("prior_batch", tc.prior_batch, isinstance(tc.prior_batch, int) and tc.prior_batch >= 0, "an integer >= 0"),
        ("prior_rollout", tc.prior_rollout, isinstance(tc.prior_rollout, int) and tc.prior_rollout >= 0, "an integer >= 0"),
        ("lr", tc.lr, tc.lr > 0, "> 0"),
        ("warmup_steps", tc.warmup_steps, tc.warmup_steps >= 0, ">= 0"),
        ("weight_decay", tc.weight_decay, tc.weight_decay >= 0, ">= 0"),
        ("grad_clip", tc.grad_clip, tc.grad_clip > 0, "> 0"),
        ("ema_decay", tc.ema_decay, 0 <= tc.ema_decay < 1, "in [0, 1)"),
        ("stats_windows", tc.stats_windows, tc.stats_windows > 0, "> 0"),
        ("log_every", options.log_every, options.log_every > 0, "> 0"),
        ("ckpt_every", options.ckpt_every, options.ckpt_every > 0, "> 0"),
        ("eval_every", options.eval_every, options.eval_every >= 0, ">= 0"),
        ("eval_batch", options.eval_batch, options.eval_batch > 0, "> 0"),
        ("keep_checkpoints", options.keep_checkpoints, options.keep_checkpoints > 0, "> 0"),
        ("num_workers", options.num_workers, options.num_workers >= 0, ">= 0"),
    ]
    rules += [
        (f"noise.{f.name}", getattr(n, f.name), 0 <= getattr(n, f.name) <= 1, "in [0, 1]")
        for f in dataclasses.fields(n)
        if f.name.startswith("p_") and f.name not in ("p_mean", "p_std")
    ]
    rules.append(("noise.p_clean + noise.p_sigma_max", n.p_clean + n.p_sigma_max, n.p_clean + n.p_sigma_max <= 1, "<= 1"))
    for key, value, ok, allowed in rules:
        if not ok:
            raise ValueError(f"{options.name}: {key}={value} is not allowed; it must be {allowed}")
    if options.device not in ("cpu", "cuda"):
        raise ValueError(f"{options.name}: device={options.device!r} is not allowed; it must be cpu or cuda")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{options.name}: device=cuda, but this machine has no CUDA device; use device=cpu")


def load_init(init: Any) -> WorldModel:
    """The model to fine-tune: a ``WorldModel`` (copied), a checkpoint folder, or None / ``"default"``
    for the shipped default."""
    if isinstance(init, WorldModel):
        return copy.deepcopy(init).cpu()
    path = DEFAULT_CHECKPOINT if init is None or str(init) == "default" else Path(str(init))
    return WorldModel.from_pretrained(path)


# ----------------------------------------------------------------------------- batches
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


class StepBatches:
    """The window indices this process reads at steps ``start .. stop-1`` (a batch sampler)."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed, self.start, self.stop, self.rank, self.world = n, batch, seed, start, stop, rank, world

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            g = batch_indices(step, self.n, self.batch, self.seed)
            yield [g[j] for j in range(self.rank, self.batch, self.world)]


def gather(ds: Any, indices: list[int]) -> dict[str, torch.Tensor]:
    """A batch of windows ``indices`` (one gather per key where the source can)."""
    if hasattr(ds, "batch"):
        return ds.batch(indices)
    return D.collate([ds[i] for i in indices])


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


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run (see the module docstring); ``train()`` runs it, or resumes it."""

    def __init__(
        self,
        model: WorldModel,
        windows: WindowSource,
        training: TrainingConfig,
        out: Path,
        heldout: WindowSource | None,
        options: TrainerOptions,
        record: Mapping[str, Any],
    ):
        check_training_config(training, options)
        self.raw, self.windows, self.tc, self.out, self.heldout, self.o = model, windows, training, Path(out), heldout, options
        self.extra_record = dict(record)
        self.cfg = model.config

    def train(self) -> Path:
        """Train (or resume) as configured; returns ``<out>/final``."""
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs
        from tqdm.auto import tqdm

        o, tc = self.o, self.tc
        acc = self.acc = Accelerator(cpu=o.device == "cpu", kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.world, self.rank = acc.num_processes, acc.process_index
        self._open_data()
        record = run_record(self.raw, tc, self.windows, self.heldout, self.extra_record)
        ckpt = self._check_resume(record)
        start = self._prepare(ckpt)
        writer = self._start_logs(record, start) if acc.is_main_process else None
        held_batch = self._heldout_batch()
        bar = tqdm(total=tc.steps, initial=start, desc=o.name, disable=not (acc.is_main_process and o.progress), dynamic_ncols=True)
        self.t0, self.samples = time.time(), 0
        batches = StepBatches(len(self.ds), tc.batch_size, tc.seed, start, tc.steps, self.rank, self.world)
        done = start
        for step, batch in zip(range(start, tc.steps), self._loader(batches)):
            logged, gn, branches = self._step(step, batch, bar)
            done = step + 1
            if acc.is_main_process:
                self._log(done, logged, gn, branches, writer)
                bar.set_postfix(loss=f"{logged['total']:.3f}")
                bar.update(1)
            if held_batch is not None and o.eval_every > 0 and (done % o.eval_every == 0 or done == tc.steps) and acc.is_main_process:
                self._evaluate(done, held_batch, writer)
            if done % o.ckpt_every == 0 or done == tc.steps:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    save_checkpoint(self.out, done, self.raw, self.ema, self.opt, {"elapsed_s": time.time() - self.t0}, o.keep_checkpoints)
            if o.stop_after is not None and done >= int(o.stop_after):
                break
        bar.close()
        if done >= tc.steps and getattr(self.cfg, "props_dynamics", False) and tc.props_rollout_steps and acc.is_main_process:
            self._props_stage(writer)
        return self._finish(done, writer)

    def _props_stage(self, writer) -> None:
        """The props network's rollout stage (``worldmodel/props_stage.py``), after the main steps."""
        from .props_stage import train_props_rollouts

        path = self.out / PROPS_STAGE_LOG
        path.write_text("")  # a re-run redoes the stage from its start

        def log(entry: dict) -> None:
            with open(path, "a") as f:
                f.write(json.dumps(entry) + "\n")
            if writer is not None:
                writer.add_scalar("props_rollout/loss", entry["props_rollout_loss"], entry["props_rollout_step"])

        print(f"{self.o.name}: props rollout stage, {self.tc.props_rollout_steps} steps of {self.tc.props_rollout_horizon}-step rollouts")
        self.props_stage = train_props_rollouts(self.raw, self.ema.shadow, self.windows, self.tc, log, self.heldout)
        with open(path, "a") as f:
            f.write(json.dumps({"summary": self.props_stage}) + "\n")
        print(f"{self.o.name}: props rollout stage done in {self.props_stage['seconds']:.0f} s (loss {self.props_stage['final_loss']:.4f})")

    # ------------------------------------------------------------------ set-up
    def _open_data(self) -> None:
        """The window sets: the main batches', the state prior's and the held-out ones."""
        c, tc, name = self.cfg, self.tc, self.windows.name
        K = c.context
        self.ds = self.windows.windows(K + 1)
        if len(self.ds) == 0:
            raise ValueError(f"{name}: no training window of {K + 1} steps (episodes too short for context={K})")
        self.raw.check_training_windows(self.ds[0], tc.noise, name)
        if tc.batch_size % self.world:
            raise ValueError(f"batch_size={tc.batch_size} must be divisible by the number of processes ({self.world})")
        self.PB = int(tc.prior_batch) if getattr(c, "state_prior", False) else 0
        if self.PB % self.world:
            raise ValueError(f"prior_batch={self.PB} must be divisible by the number of processes ({self.world})")
        # the state prior's own batches: state-only windows (cheap to slice and to run), long
        # enough for the prior to dream up to ``prior_rollout`` steps first
        self.NR = int(tc.prior_rollout) if self.PB else 0
        self.ds_state = self.windows.windows(K + 1 + self.NR, PRIOR_KEYS) if self.PB else None
        if self.ds_state is not None and len(self.ds_state) == 0:
            raise ValueError(f"{name}: no episode holds {K + 1 + self.NR} steps (context {K}, prior_rollout {self.NR})")
        self.held = self.heldout.windows(K + 1) if self.heldout is not None else None

    def _check_resume(self, record: Mapping[str, Any]) -> Path | None:
        """The checkpoint to resume from (None: start afresh); refuses a run of other settings."""
        path = self.out / RUN_RECORD
        if not self.o.resume or not path.exists():
            return None
        diff = record_differences(json.loads(path.read_text()), record)
        if diff:
            raise ResumeMismatchError(
                f"{self.o.name}: {self.out} holds a run with other data, settings or code ({'; '.join(diff)}); "
                "re-run with that run's settings to continue it, choose another out=, or give resume=false to start over"
            )
        return latest_checkpoint(self.out)

    def _prepare(self, ckpt: Path | None) -> int:
        """Statistics (for an unfitted model), optimizer, EMA and the checkpoint's state; returns the first step."""
        tc, raw = self.tc, self.raw
        if ckpt is None and not raw.statistics_fitted:
            # statistics from a fixed sample of training windows (the same on every process)
            n_stat = min(len(self.ds), int(tc.stats_windows))
            idx = torch.randperm(len(self.ds), generator=torch.Generator().manual_seed(tc.seed))[:n_stat].tolist()
            raw.fit_statistics(lambda: (D.collate([self.ds[i] for i in idx[j : j + 64]]) for j in range(0, n_stat, 64)))
        raw.train()
        self.opt = torch.optim.AdamW(raw.parameters(), lr=float(tc.lr), weight_decay=float(tc.weight_decay), betas=(0.9, 0.99))
        self.ema = EMA(raw, float(tc.ema_decay))
        start = 0
        if ckpt is not None:
            start = restore_checkpoint(ckpt, raw, self.ema, self.opt)
            if self.acc.is_main_process:
                print(f"{self.o.name}: resuming from {ckpt} at step {start}")
        self.model, self.opt = self.acc.prepare(raw, self.opt)
        self.raw = self.acc.unwrap_model(self.model)
        return start

    def _start_logs(self, record: Mapping[str, Any], start: int):
        """The run folder: its record, its files, logs cut back to ``start``, a tensorboard writer."""
        open_run_folder(self.out, record, start, self.tc.steps, self.o.files)
        if not self.o.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run purges what a killed one logged after its last checkpoint (steps > start),
        # so TensorBoard shows each step once
        return SummaryWriter(str(self.out / "tb"), purge_step=start + 1 if start > 0 else None)

    def _heldout_batch(self) -> dict[str, torch.Tensor] | None:
        if self.held is None or len(self.held) == 0:
            return None
        g = torch.Generator().manual_seed(self.tc.seed + 1)
        hidx = torch.randperm(len(self.held), generator=g)[: self.o.eval_batch].tolist()
        return D.collate([self.held[i] for i in hidx])

    def _loader(self, batches: StepBatches):
        from dreamgym.rollouts.loader import make_loader

        return make_loader(self.ds, batches=batches, num_workers=self.o.num_workers, seed=self.tc.seed, collate_fn=D.collate)

    # ------------------------------------------------------------------ one step
    def _lr(self, step: int) -> float:
        return float(self.tc.lr) * min(1.0, (step + 1) / max(1, int(self.tc.warmup_steps)))

    def _prior_window(self, step: int) -> dict[str, torch.Tensor] | None:
        """This step's state-only windows for the state prior (None: it learns on the main batch)."""
        if self.ds_state is None:
            return None
        tc, K, PB = self.tc, self.cfg.context, self.PB
        pidx = batch_indices(step, len(self.ds_state), PB, tc.seed + 1_000)
        ppos = list(range(self.rank, PB, self.world))
        window = gather(self.ds_state, [pidx[j] for j in ppos])
        if self.cfg.partner_actions:
            gk = torch.Generator().manual_seed(tc.seed * 7_717 + step * 131 + 5)
            keep = torch.rand(PB, generator=gk) >= float(tc.noise.p_drop_partner_actions)
            window["partner_known"] = keep[ppos]
        if not self.NR:
            return window
        # on some steps the prior first dreams n steps from the window's start and then learns the
        # recorded next step from its own dreamed context (it learns to undo its drift); n = 0 on
        # half of the steps, else uniform in 1..cap, where the cap grows by one step every 100
        # steps up to prior_rollout (an untrained prior's dreams are noise)
        gr = torch.Generator().manual_seed(tc.seed * 4_051 + step * 389 + 13)
        cap = min(self.NR, 1 + step // 100)
        n = 0 if float(torch.rand(1, generator=gr)[0]) < 0.5 else int(torch.randint(1, cap + 1, (1,), generator=gr)[0])
        if n:
            return self.raw.prior_rollout(window, n)
        return {k: (v[:, : K + 1] if v.dim() >= 2 else v) for k, v in window.items()}

    def _step(self, step: int, batch: Mapping[str, torch.Tensor], bar) -> tuple[dict[str, float], float, list[str]]:
        """One optimisation step (see the module docstring); returns the global batch's losses."""
        acc, tc = self.acc, self.tc
        positions = list(range(self.rank, tc.batch_size, self.world))
        noise, sigma, branches = self.raw.training_noise(tc, step, positions, tc.seed)
        prior_window = self._prior_window(step)
        for group in self.opt.param_groups:
            group["lr"] = self._lr(step)
        dev = acc.device  # the batch and its noise go where the model is (a no-op on the CPU)
        batch, noise, sigma = ({k: v.to(dev) for k, v in d.items()} for d in (batch, noise, sigma))
        prior_window = {k: v.to(dev) for k, v in prior_window.items()} if prior_window is not None else None
        losses = self.model(batch, noise, sigma, branches, prior_window, training=tc)
        # the global batch's losses (the mean over processes), for the guard and the logs
        names = list(losses)
        glob = acc.reduce(torch.stack([losses[k].detach().float() for k in names]), reduction="mean")
        logged = {k: float(v) for k, v in zip(names, glob)}
        total = glob[names.index("total")].reshape(1)
        if not bool(torch.isfinite(total).all()):
            bar.close()
            raise NonFiniteLossError(
                f"{self.o.name}: non-finite loss {float(total[0])} at step {step} (per term: {logged}); "
                f"stopped before updating the weights; the last good checkpoint is {latest_checkpoint(self.out)}"
            )
        acc.backward(losses["total"])
        gn = acc.clip_grad_norm_(self.model.parameters(), float(tc.grad_clip))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.raw, step)
        self.samples += tc.batch_size
        return logged, float(gn), branches

    # ------------------------------------------------------------------ logs, evaluation, the end
    def _log(self, done: int, logged: Mapping[str, float], gn: float, branches: list[str], writer) -> None:
        rec = {"step": done, **{k: round(v, 6) for k, v in logged.items()}, "grad_norm": gn, "branches": branches}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if writer is not None and (done % self.o.log_every == 0 or done == self.tc.steps):
            for k, v in logged.items():
                writer.add_scalar(f"loss/{k}", v, done)
            writer.add_scalar("train/grad_norm", gn, done)
            writer.add_scalar("train/lr", self._lr(done - 1), done)
            writer.add_scalar("train/samples_per_s", self.samples / max(1e-9, time.time() - self.t0), done)

    def _evaluate(self, done: int, held_batch: Mapping[str, torch.Tensor], writer) -> None:
        ema_model = copy.deepcopy(self.raw)
        ema_model.load_state_dict(self.ema.shadow)
        mets, grid = ema_model.heldout_metrics(held_batch, self.o.eval_num_steps, self.tc.seed)
        if writer is not None:
            for k, v in mets.items():
                writer.add_scalar(f"heldout/{k}", v, done)
            if grid is not None:
                writer.add_image("heldout/last_truth_pred", grid, done)
        with open(self.out / "heldout.jsonl", "a") as f:
            f.write(json.dumps({"step": done, **mets}) + "\n")

    def _finish(self, done: int, writer) -> Path:
        final = self.out / "final"
        self.acc.wait_for_everyone()
        if self.acc.is_main_process and done >= self.tc.steps:
            if self.o.save_raw:  # first: final/ is what marks the run finished
                write_result(self.out / "final_raw", self.raw)
            write_result(final, self.raw, self.ema.shadow)
            print(f"{self.o.name}: {self.tc.steps} steps, {time.time() - self.t0:.0f} s this run; EMA weights in {final}")
        if writer is not None:
            writer.close()
        self.acc.end_training()
        return final


def train_world_model(
    model: Any,
    windows: WindowSource,
    training: TrainingConfig,
    out: str | Path,
    heldout: WindowSource | None = None,
    options: TrainerOptions | None = None,
    record: Mapping[str, Any] | None = None,
) -> Path:
    """Train ``model`` (a ``WorldModel`` or a ``vector.VectorWorldModel``: anything with the trainer's
    hooks, see ``WorldModel.check_training_windows``; or a checkpoint folder, None or ``"default"`` to fine-tune
    that one, see ``load_init``) on ``windows`` as ``training`` says, in ``out``; returns
    ``<out>/final`` (the EMA weights). ``record``: more entries for ``run.json`` (e.g. ``init``)."""
    if not isinstance(model, torch.nn.Module):
        model = load_init(model)
    return Trainer(model, windows, training, Path(out), heldout, options or TrainerOptions(), dict(record or {})).train()


def state_finetune_config(
    steps: int,
    batch_size: int,
    seed: int = 0,
    lr: float = 3.0e-4,
    ema_decay: float = 0.99,
    noise: Mapping[str, float] | None = None,
    **more: Any,
) -> TrainingConfig:
    """The ``TrainingConfig`` of a short fine-tuning on state-only data (the DIAMOND-style loop's
    world-model update, ``bench transfer``): the frame and occupancy branches never run (the data
    hold no frames), no warm-up, the state prior on the main batch, no props rollout stage, fewer
    sigma_max samples than a full run. ``noise`` and ``more`` override any of it (``TrainingConfig`` field names)."""
    from .config import NoiseConfig

    preset = {"p_clean": 0.1, "p_sigma_max": 0.15, "p_skip_frames": 1.0, "p_skip_occupancy": 1.0}
    base = dict(steps=int(steps), batch_size=int(batch_size), lr=float(lr), ema_decay=float(ema_decay), warmup_steps=0, prior_batch=0)
    base |= {"prior_rollout": 0, "props_rollout_steps": 0, "seed": int(seed)} | more
    return TrainingConfig(**base, noise=NoiseConfig(**(preset | dict(noise or {}))))
