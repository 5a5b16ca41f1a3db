"""``dreamgym train-probe data=[dirs] out=<dir>``: train the frame probe on real frames, then measure it.

Read top to bottom: the train split of the datasets' frames is loaded with its geometry labels
(``frame_probe.object_truth``, turned into colour classes with each room's prop colours), a
``FrameProbe`` is fitted by class-weighted cross-entropy (objects are a few per cent of the
pixels) with random left-right flips, and the held-out split measures it:

- per object, the visibility F-score (precision, recall) of what the probe sees against what
  geometry says, and the image-position error of objects visible in both: the ceiling that any
  dreamed frame can reach with this probe;
- the Fréchet distance between two disjoint halves of the held-out frames (by episode: the noise
  floor), at several set sizes, and between real frames and the same frames blurred with a 3 x 3
  box filter (how much blur costs).

``<out>`` gets ``probe.safetensors`` + ``probe.json`` (``frame_probe.load_probe`` reads them)
and ``metrics.json`` with those figures, the settings and the wall time; ``log.jsonl`` the losses.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dreamgym.envs.scene import COLOUR_NAMES

from .frame_probe import NUM_CLASSES, OBJECT_NAMES, FrameProbe, ProbeConfig, colour_classes, object_truth, room_prop_colours, save_probe
from .video_metrics import frechet_distance, fscore, object_scores, probe_objects

FRAME_KEYS = ("ego_rgb", "ego_depth", "motion", "partner_motion", "props")
FD_SET_SIZES = (250, 1000, 4000)  # frames per set at which the Fréchet noise floor is measured


def _dirs(data: str | Sequence[str]) -> list[str]:
    dirs = [data] if isinstance(data, (str, Path)) else [str(d) for d in data]
    if not dirs:
        raise ValueError("train-probe: data is empty; give data=<dataset dir> or data=[dir1,dir2]")
    return [str(d) for d in dirs]


@torch.no_grad()
def load_frames(data: str | Sequence[str], split: str, max_episodes: int | None = None) -> dict[str, torch.Tensor]:
    """Every frame of ``split`` in the datasets: ``rgb`` (N, 3, H, W) uint8, ``labels`` (N, H, W)
    uint8 object labels (geometry), ``classes`` (N, H, W) uint8 probe classes, ``vis`` (N, 5),
    ``pos`` (N, 5, 2), ``prop_colours`` (N, 4), ``episode`` (N,) (a running episode number) and
    ``step`` (N,) (the frame's row in its episode)."""
    from dreamgym.rollouts.episodes import EpisodeReader, index_dataset

    index = index_dataset(_dirs(data), split=split, verify="size", max_episodes=max_episodes)
    reader = EpisodeReader(index.episodes, FRAME_KEYS)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("rgb", "labels", "classes", "vis", "pos", "prop_colours", "episode", "step")}
    for e, ref in enumerate(index.episodes):
        ep = {k: torch.from_numpy(v) for k, v in reader.episode(e).items()}
        truth = object_truth(ep["ego_depth"], ep["motion"], ep["partner_motion"], ep["props"])
        cols = room_prop_colours([ref.room_seed]).expand(len(truth["vis"]), -1)
        parts["rgb"].append(ep["ego_rgb"])
        parts["labels"].append(truth["labels"].to(torch.uint8))
        parts["classes"].append(colour_classes(truth["labels"], cols).to(torch.uint8))
        parts["vis"].append(truth["vis"])
        parts["pos"].append(truth["pos"])
        parts["prop_colours"].append(cols)
        parts["episode"].append(torch.full((len(cols),), e))
        parts["step"].append(torch.arange(len(cols)))
    if not parts["rgb"]:
        raise ValueError(f"train-probe: {', '.join(_dirs(data))} has no {split} episodes")
    return {k: torch.cat(v) for k, v in parts.items()}


def class_weights(object_weight: float, device) -> torch.Tensor:
    """Cross-entropy weights: 1 for background, ``object_weight`` for every object class."""
    w = torch.full((NUM_CLASSES,), float(object_weight), device=device)
    w[0] = 1.0
    return w


def fit(probe: FrameProbe, frames: dict[str, torch.Tensor], cfg: Any, log: Path) -> list[dict[str, float]]:
    """Train ``probe`` in place for ``cfg.steps`` steps; returns the logged records."""
    dev = next(probe.parameters()).device
    g = torch.Generator().manual_seed(int(cfg.seed))
    opt = torch.optim.AdamW(probe.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
    warm, steps = int(cfg.warmup_steps), int(cfg.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warm)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    weights = class_weights(float(cfg.object_weight), dev)
    n, records, t0, run_loss = frames["rgb"].shape[0], [], time.time(), 0.0
    probe.train()
    for step in range(1, steps + 1):
        idx = torch.randint(n, (int(cfg.batch_size),), generator=g)
        rgb, cls = frames["rgb"][idx].to(dev), frames["classes"][idx].long().to(dev)
        flip = (torch.rand(len(idx), generator=g) < 0.5).to(dev)
        rgb = torch.where(flip[:, None, None, None], rgb.flip(-1), rgb)
        cls = torch.where(flip[:, None, None], cls.flip(-1), cls)
        logits, _ = probe(rgb)
        loss = F.cross_entropy(logits, cls, weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run_loss += float(loss.detach())
        if step % int(cfg.log_every) == 0 or step == steps:
            k = step % int(cfg.log_every) or int(cfg.log_every)
            rec = {"step": step, "loss": run_loss / k, "lr": sched.get_last_lr()[0], "wall_s": time.time() - t0}
            run_loss = 0.0
            records.append(rec)
            with open(log, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"train-probe step {step}/{steps} loss {rec['loss']:.4f} ({rec['wall_s']:.0f} s)", flush=True)
    probe.eval()
    return records


def blur3(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 frames (N, 3, H, W) blurred with a 3 x 3 box filter (the mean of the pixels inside the image)."""
    return F.avg_pool2d(rgb.float(), 3, 1, 1, count_include_pad=False).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def object_report(probe: FrameProbe, rgb: torch.Tensor, frames: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per object: F-score, precision, recall, how many frames show it, and the position error
    (median and mean px) of what the probe sees in ``rgb`` against the geometry of ``frames``."""
    seen = probe_objects(probe, rgb, frames["prop_colours"])
    s = object_scores(seen, {"vis": frames["vis"], "pos": frames["pos"]})
    out: dict[str, Any] = {}
    for k, name in enumerate(OBJECT_NAMES):
        tp, fp, fn = (int(s[c][:, k].sum()) for c in ("tp", "fp", "fn"))
        err = s["pos_err_px"][:, k]
        err = err[torch.isfinite(err)].cpu()
        out[name] = {
            "fscore": fscore(tp, fp, fn),
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "visible_frames": tp + fn,
            "pos_err_px_median": float(err.median()) if len(err) else None,
            "pos_err_px_mean": float(err.mean()) if len(err) else None,
        }
    props = [out[n]["fscore"] for n in OBJECT_NAMES[:4] if out[n]["fscore"] is not None]
    out["props_mean_fscore"] = float(np.mean(props)) if props else None
    return out


def _halves(frames: dict[str, torch.Tensor], by: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint halves of the frames, by even / odd ``by`` (``episode`` or ``step``), each shuffled."""
    even = frames[by] % 2 == 0
    g = torch.Generator().manual_seed(int(seed))
    a, b = torch.nonzero(even).reshape(-1), torch.nonzero(~even).reshape(-1)
    return a[torch.randperm(len(a), generator=g)], b[torch.randperm(len(b), generator=g)]


@torch.no_grad()
def frechet_report(probe: FrameProbe, frames: dict[str, torch.Tensor], seed: int = 0) -> dict[str, Any]:
    """Fréchet distances on held-out frames, the noise floor beside what blur costs.

    Two splits into disjoint halves: by episode (other rooms: the conservative floor) and by the
    parity of the frame's step (the same rooms, other frames: the floor of a comparison made at
    the same starts). For each, at several set sizes: real vs real, and real vs the other half
    blurred with a 3 x 3 box filter; and real frames vs the same frames blurred.
    """
    from .frame_probe import probe_labels

    feats = probe_labels(probe, frames["rgb"])[1]
    blurred = probe_labels(probe, blur3(frames["rgb"]))[1]
    out: dict[str, Any] = {"feature_dim": int(feats.shape[1]), "real_vs_same_frames_blurred": frechet_distance(feats, blurred)}
    for by in ("episode", "step"):
        a, b = _halves(frames, by, seed)
        n_max = min(len(a), len(b))
        if n_max < 2:
            out[f"halves_by_{by}"] = {"frames": [len(a), len(b)], "note": "too few frames for two halves"}
            continue
        sizes = [n for n in FD_SET_SIZES if n < n_max] + [n_max]
        out[f"halves_by_{by}"] = {
            "frames": [len(a), len(b)],
            "real_vs_real": {str(n): frechet_distance(feats[a[:n]], feats[b[:n]]) for n in sizes},
            "real_vs_blurred_other_half": {str(n): frechet_distance(feats[a[:n]], blurred[b[:n]]) for n in sizes},
        }
    return out


def train_probe(cfg: Any) -> dict[str, Any]:
    """Train and measure a probe as configured (``configs/train_probe.yaml``); returns ``metrics.json``'s content."""
    torch.manual_seed(int(cfg.seed))
    torch.set_num_threads(int(cfg.num_threads))
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.jsonl").unlink(missing_ok=True)
    t0 = time.time()
    data = _dirs(cfg.data)
    train = load_frames(data, "train", cfg.max_episodes)
    held = load_frames(data, "heldout", cfg.max_episodes)
    t_load = time.time() - t0
    print(
        f"train-probe: {len(train['rgb'])} train frames, {len(held['rgb'])} held-out frames ({t_load:.0f} s to load and label)", flush=True
    )
    probe = FrameProbe(ProbeConfig(widths=tuple(int(w) for w in cfg.widths))).to(cfg.device)
    records = fit(probe, train, cfg, out / "log.jsonl")
    t_train = time.time() - t0 - t_load
    rgb = held["rgb"]
    metrics = {
        "data": data,
        "frames": {"train": len(train["rgb"]), "heldout": len(rgb)},
        "settings": {k: cfg[k] for k in ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "object_weight", "seed", "widths")},
        "parameters": sum(p.numel() for p in probe.parameters()),
        "heldout_objects": object_report(probe, rgb, held),
        "heldout_objects_blurred": object_report(probe, blur3(rgb), held),
        "frechet": frechet_report(probe, held, int(cfg.seed)),
        "colour_classes": ["background", *COLOUR_NAMES, "partner"],
        "final_loss": records[-1]["loss"] if records else None,
        "wall_s": {"load_and_label": t_load, "train": t_train, "total": time.time() - t0},
    }
    save_probe(
        probe,
        out,
        meta={"data": data, "steps": int(cfg.steps), "heldout_fscore": {n: metrics["heldout_objects"][n]["fscore"] for n in OBJECT_NAMES}},
    )
    (out / "metrics.json").write_text(json.dumps(_plain(metrics), indent=2) + "\n")
    return metrics


def _plain(x):
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def run(cfg: Any) -> int:
    """Entry point of ``dreamgym train-probe``: a user error is one line, not a traceback."""
    from dreamgym.rollouts.dataset import CorruptShardError

    try:
        m = train_probe(cfg)
    except (ValueError, FileNotFoundError, CorruptShardError) as e:
        raise SystemExit(f"dreamgym train-probe: {str(e).removeprefix('train-probe: ')}") from None
    objs = m["heldout_objects"]
    print("train-probe: held-out visibility F-score " + ", ".join(f"{n} {objs[n]['fscore']}" for n in OBJECT_NAMES), flush=True)
    print(f"train-probe: wrote {cfg.out}/probe.safetensors, probe.json, metrics.json", flush=True)
    return 0
