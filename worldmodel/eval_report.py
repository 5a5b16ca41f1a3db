"""eval-wm's output: plots, real | dream videos and the summary table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .eval_replay import HIGHER_IS_BETTER

if TYPE_CHECKING:
    from .eval_replay import Start
    from .evaluate import Episode


def write_plots(out: Path, horizons: Sequence[int], model: dict, baselines: dict, counterfactual: dict | None) -> list[Path]:
    """One PNG per metric (model and baselines over horizons) and a counterfactual scatter plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = [m for m in model if m != "num_samples"]
    for metric in names:
        fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=110)
        series = [("model", model[metric])] + [(b, v[metric]) for b, v in baselines.items() if metric in v]
        for label, ys in series:
            pts = [(h, y) for h, y in zip(horizons, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label, lw=2 if label == "model" else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(horizons), [str(h) for h in horizons])
        ax.set_xlabel("horizon (steps at 20 Hz)")
        ax.set_ylabel(metric)
        ax.set_title(metric + (" (higher is better)" if metric in HIGHER_IS_BETTER else " (lower is better)"), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / f"{metric}.png"
        fig.savefig(p)
        plt.close(fig)
        written.append(p)
    if counterfactual and "model" in counterfactual and "_points" in counterfactual["model"]:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.5), dpi=110)
        seqs = counterfactual["sequences"]
        for who, res in [("model", counterfactual["model"])] + [(k, v) for k, v in counterfactual.get("baselines", {}).items()]:
            if "_points" not in res:
                continue
            pts = res["_points"]
            sd, dd = np.array(pts["sim_disp"]), np.array(pts["dream_disp"])
            sy, dy = np.array(pts["sim_dyaw"]), np.array(pts["dream_dyaw"])
            alive = np.array(pts["alive"], bool)
            seq = np.tile(np.arange(len(seqs)), len(alive) // len(seqs))
            if who != "model":
                continue
            for s, name in enumerate(seqs):
                m = alive & (seq == s)
                axes[0].scatter(sd[m, 0], dd[m, 0], s=12, label=name)
                axes[1].scatter(sd[m, 1], dd[m, 1], s=12, label=name)
                axes[2].scatter(sy[m], dy[m], s=12, label=name)
        for ax, t in zip(axes, ("forward displacement (m)", "leftward displacement (m)", "heading change (rad)")):
            lim = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
            ax.plot(lim, lim, "k--", lw=0.8)
            ax.set_xlabel("simulator")
            ax.set_ylabel("dream")
            ax.set_title(t, fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"counterfactual: same context, different actions, after {counterfactual['horizon']} steps", fontsize=10)
        fig.tight_layout()
        p = out / "counterfactual.png"
        fig.savefig(p)
        plt.close(fig)
        written.append(p)
    return written


def occupancy_image(occ: np.ndarray) -> np.ndarray:
    """Top view (X, Y, 3) uint8 of an occupancy grid (Z, X, Y): each column shows its highest class,
    agent facing up (the colours of ``dreamgym collect``'s videos)."""
    from dreamgym.rollouts.video import occupancy_image as top_view

    return top_view(occ, occ.shape[-1])


def _label(img: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    ImageDraw.Draw(im).text((3, 1), text, fill=(255, 255, 0))
    return np.asarray(im)


def video_frames(real: dict[str, np.ndarray], dream: dict[str, np.ndarray], scale: int = 4) -> np.ndarray:
    """(T, H, W, 3) uint8 frames: real on the left, dream on the right; each side is the ego frame
    (if any) above the occupancy top view (if any). ``real``, ``dream``: (T, ...) per key."""

    def side(d: dict[str, np.ndarray], t: int) -> np.ndarray:
        parts = []
        if "ego_rgb" in d:
            parts.append(np.repeat(np.repeat(d["ego_rgb"][t].transpose(1, 2, 0), scale, 0), scale, 1))
        if "occupancy" in d:
            w = parts[0].shape[1] if parts else 32 * scale
            o = occupancy_image(d["occupancy"][t])
            f = max(1, w // o.shape[1])
            o = np.repeat(np.repeat(o, f, 0), f, 1)
            pad = np.full((o.shape[0], w, 3), 255, np.uint8)
            pad[:, : o.shape[1]] = o[:, :w]
            parts.append(pad)
        return np.concatenate(parts, 0)

    T = next(iter(real.values())).shape[0]
    frames = []
    for t in range(T):
        left, right = _label(side(real, t), "real"), _label(side(dream, t), "dream")
        gap = np.zeros((left.shape[0], 4, 3), np.uint8)
        frames.append(np.concatenate((left, gap, right), 1))
    return np.stack(frames)


def write_videos(out: Path, episodes: Sequence[Episode], starts: Sequence[Start], kept: dict, context: int, fps: int = 10) -> list[Path]:
    """Side-by-side mp4s (real | dream) of the kept starts: the context (real on both sides), then
    the rollout."""
    import imageio.v2 as imageio

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, pred in kept.items():
        s = starts[i]
        ep = episodes[s.episode]
        keys = [k for k in ("ego_rgb", "occupancy") if k in pred]
        if not keys:
            continue
        L = s.length
        ctx = {k: ep.obs[k][s.t0 - context + 1 : s.t0 + 1] for k in keys}
        real = {k: np.concatenate((ctx[k], ep.obs[k][s.t0 + 1 : s.t0 + 1 + L])) for k in keys}
        dream = {k: np.concatenate((ctx[k], pred[k][:L])) for k in keys}
        frames = video_frames(real, dream)
        p = out / f"{ep.name or f'episode{s.episode}'}_t{s.t0}.mp4"
        with imageio.get_writer(p, fps=fps, codec="libx264", quality=8, macro_block_size=1) as w:
            for f in frames:
                w.append_data(f)
        written.append(p)
    return written


def _strip_points(cf: dict) -> dict:
    """The counterfactual section without the raw points (they go to counterfactual_points.json)."""
    if not isinstance(cf, dict):
        return cf
    return {k: _strip_points(v) for k, v in cf.items() if k != "_points"}


def format_table(horizons: Sequence[int], model: dict, baselines: dict) -> str:
    """A plain-text table: one row per metric, model then the baselines that report it."""
    head = f"{'metric':<26}{'who':<20}" + "".join(f"{'h=' + str(h):>11}" for h in horizons)
    lines = [head, "-" * len(head)]
    fmt = lambda v: f"{v:>11.4g}" if v is not None else f"{'-':>11}"  # noqa: E731
    for metric in model:
        if metric == "num_samples":
            continue
        lines.append(f"{metric:<26}{'model':<20}" + "".join(fmt(v) for v in model[metric]))
        for b, vals in baselines.items():
            if metric in vals:
                lines.append(f"{'':<26}{b:<20}" + "".join(fmt(v) for v in vals[metric]))
    lines.append(f"{'num_samples':<26}{'':<20}" + "".join(f"{n:>11d}" for n in model["num_samples"]))
    return "\n".join(lines)
