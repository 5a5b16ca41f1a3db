"""eval-wm's output: plots, real | dream videos and the tables (``tables.md``, ready for EVAL.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .eval_summary import REPORT_ORDER, higher_is_better

if TYPE_CHECKING:
    from .eval_episodes import Episode
    from .eval_tasks import Start

LABELS = {
    "psnr_db": "ego RGB PSNR (dB)",
    "ssim": "ego RGB SSIM",
    "depth_abs_err_m": "ego depth abs. error (m)",
    "vis_f_target": "visibility F-score, target object",
    "frame_fd": "frame Fréchet distance",
    "mpjpe_mm": "agent MPJPE (mm)",
    "root_trans_err_m": "agent root translation error (m)",
    "root_rot_err_rad": "agent root rotation error (rad)",
    "partner_mpjpe_mm": "partner MPJPE (mm)",
    "partner_root_trans_err_m": "partner root translation error (m)",
    "props_err_m": "props error (m)",
    "occ_iou": "occupancy IoU (pooled)",
    "occ_iou_start": "occupancy IoU (per start)",
    "occ_miou": "occupancy mIoU (pooled)",
    "reward_abs_err": "reward abs. error",
}


def label(metric: str) -> str:
    """A metric's name in the tables, with its direction."""
    if metric.startswith("vis_f_") and metric not in LABELS:
        name = f"visibility F-score, {metric[len('vis_f_') :]}"
    elif metric.startswith("pos_err_px_"):
        name = f"image-position error (px), {metric[len('pos_err_px_') :]}"
    else:
        name = LABELS.get(metric, metric)
    return name + (" ↑" if higher_is_better(metric) else " ↓")


def _metrics_of(section: dict) -> list[str]:
    have = {m for arm in section["model"].values() for m in arm} | {m for b in section["baselines"].values() for m in b}
    return [m for m in REPORT_ORDER if m in have]


def write_plots(out: Path, result: dict, counterfactual: dict | None) -> list[Path]:
    """One PNG per task (a panel per metric: the model arms and every baseline over horizons, with
    their 95 % intervals) and a counterfactual scatter plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    horizons = result["horizons"]
    for task, section in result["tasks"].items():
        metrics = _metrics_of(section)
        cols = 4
        rows = max(1, -(-len(metrics) // cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), dpi=72, squeeze=False)
        for ax, metric in zip(axes.flat, metrics):
            series = [(a, v[metric], 2.0) for a, v in section["model"].items() if metric in v]
            series += [(b, v[metric], 1.0) for b, v in section["baselines"].items() if metric in v]
            for who, s, lw in series:
                pts = [(h, y, c) for h, y, c in zip(horizons, s["value"], s["ci"]) if y is not None]
                if not pts:
                    continue
                hs, ys, cis = zip(*pts)
                ax.plot(hs, ys, marker="o", lw=lw, label=who)
                lo = [c[0] if c[0] is not None else y for y, c in zip(ys, cis)]
                hi = [c[1] if c[1] is not None else y for y, c in zip(ys, cis)]
                ax.fill_between(hs, lo, hi, alpha=0.15)
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(horizons), [str(h) for h in horizons])
            ax.set_title(label(metric), fontsize=8)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.axis("off")
        fig.suptitle(f"{task}: model vs baselines over horizons (steps at 20 Hz), 95 % intervals", fontsize=10)
        fig.tight_layout()
        p = out / f"plots_{task}.png"
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
        L = min(s.length, *(len(pred[k]) for k in keys))  # frames may stop at the frame horizon
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


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}"


def _cell(s: dict, j: int) -> str:
    v, (lo, hi) = s["value"][j], s["ci"][j]
    return "–" if v is None else f"{_num(v)} [{_num(lo)}, {_num(hi)}]"


def task_table(task: str, section: dict, horizons: Sequence[int]) -> list[str]:
    """The markdown table of one task: per metric, each model arm (bold with ✓ where it beats the
    strongest baseline with 95 % confidence, paired test) and the strongest baseline, by name."""
    n = " / ".join(str(x) for x in section["num_samples"])
    target = ", ".join(section.get("target_object") or []) or "none"
    lines = [
        f"### {task}",
        "",
        f"{section['num_starts']} starts drawn uniformly from {section['num_episodes']} held-out episodes; "
        f"n per horizon {n}; target object {target}. Cells: value [95 % bootstrap interval]; "
        "**bold ✓**: better than the strongest baseline (the best of all baselines at that metric and horizon) "
        "by a paired bootstrap test at 95 %.",
        "",
        "| metric | | " + " | ".join(f"h = {h}" for h in horizons) + " |",
        "|---|---|" + "---|" * len(horizons),
    ]
    for metric in _metrics_of(section):
        first = True
        for arm, summ in section["model"].items():
            if metric not in summ or (arm == "mean" and section.get("sampler_is_mean")):
                continue
            cmp = section["comparison"].get(arm, {}).get(metric) or [None] * len(horizons)
            cells = []
            for j in range(len(horizons)):
                c = _cell(summ[metric], j)
                cells.append(f"**{c} ✓**" if cmp[j] is not None and cmp[j]["won"] else c)
            who = "sampler = mean" if section.get("sampler_is_mean") else arm
            lines.append(f"| {label(metric) if first else ''} | {who} | " + " | ".join(cells) + " |")
            first = False
        cmp = next((section["comparison"][a][metric] for a in section["comparison"] if metric in section["comparison"][a]), None)
        if cmp is not None:
            cells = []
            for j, c in enumerate(cmp):
                if c is None:
                    cells.append("–")
                else:
                    cells.append(f"{c['baseline']} {_cell(section['baselines'][c['baseline']][metric], j)}")
            lines.append(f"| {'' if not first else label(metric)} | strongest baseline | " + " | ".join(cells) + " |")
        ceiling = (section.get("real_frames") or {}).get(metric)
        if ceiling is not None:  # the probe on the real frames: what a perfect dream would score
            lines.append("| | real frames (probe) | " + " | ".join(_cell(ceiling, j) for j in range(len(horizons))) + " |")
    push = {k: v for k, v in (section.get("push") or {}).items() if not (k == "mean" and section.get("sampler_is_mean"))}
    lines += (
        _push_lines(push) + _generative_lines(section.get("generative"), horizons) + _precision_lines(section.get("precision"), horizons)
    )
    return lines


def _precision_lines(prec: dict | None, horizons: Sequence[int]) -> list[str]:
    """What the shipped sampler's reduced precision changes: its cells that differ from the same
    sampler in float32 by a paired test at 95 %, or that none does."""
    if not prec:
        return []
    cells, better, worse = 0, [], []
    for metric, per_h in prec["tests"].items():
        for j, t in enumerate(per_h):
            if t is None or t.get("p") is None:
                continue
            cells += 1
            lo, hi = t["ci"]
            if lo is not None and (lo > 0 or hi < 0):  # the interval excludes 0
                (better if t["won"] else worse).append(f"{label(metric)} h = {horizons[j]} ({_num(t['diff'])})")
    head = f"Precision: the sampler's network in {prec['sampler']} against the same sampler in float32, {cells} metric cells, paired tests at 95 %: "
    if not better and not worse:
        return ["", head + "no cell differs."]
    parts = ([f"better in {', '.join(better)}"] if better else []) + ([f"worse in {', '.join(worse)}"] if worse else [])
    return ["", head + "; ".join(parts) + "; no other cell differs."]


def _push_lines(push: dict | None) -> list[str]:
    if not push:
        return []
    first = next(iter(push.values()))
    lines = [
        "",
        f"Pushes: over {first['horizon']}-step windows where the simulator moved a prop more than {first['threshold_m']} m "
        f"({first['n_moved']} (start, prop) pairs of {first['n_windows']} windows):",
        "",
        "| arm | simulator (m) | dream (m) | dream / simulator | correlation |",
        "|---|---|---|---|---|",
    ]
    for arm, p in push.items():
        r, c = p["ratio"], p["corr"]
        lines.append(
            f"| {arm} | {_num(p['sim_mean_m'])} | {_num(p['dream_mean_m'])} | {_num(r['value'])} [{_num(r['ci'][0])}, {_num(r['ci'][1])}] "
            f"| {_num(c['value'])} [{_num(c['ci'][0])}, {_num(c['ci'][1])}] |"
        )
    return lines


def _generative_lines(gen: dict | None, horizons: Sequence[int]) -> list[str]:
    if not gen:
        return []
    lines = [
        "",
        f"Sampler, {gen['best_of']} samples from each of {gen['num_starts']} starts: best-of-{gen['best_of']}, one sample (mean over samples), "
        "the conditional mean, and the spread across samples:",
        "",
        "| | " + " | ".join(f"h = {h}" for h in horizons) + " |",
        "|---|" + "---|" * len(horizons),
    ]
    for name, s in gen.items():
        if isinstance(s, dict):
            lines.append(f"| {name} | " + " | ".join(_cell(s, j) for j in range(len(horizons))) + " |")
    return lines


def markdown_tables(result: dict) -> str:
    """``tables.md``: one table per task, then the notes."""
    lines: list[str] = []
    for task, section in result["tasks"].items():
        lines += task_table(task, section, result["horizons"]) + [""]
    for key, what in (("frame_horizon", "Frames"), ("grid_horizon", "The occupancy grid")):
        if result.get(key) is not None:
            lines.append(f"{what} dreamed and scored up to h = {result[key]} (the bodies and props to the last horizon).")
    lines += [f"- {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def format_table(result: dict) -> str:
    """What eval-wm prints: the markdown tables."""
    return markdown_tables(result)


def write_per_start(path: Path, episodes: Sequence[Episode], starts: Sequence[Start], targets: np.ndarray, records: dict) -> Path:
    """Every arm's per-start values in one ``.npz``: ``<arm>/<value>`` (starts, horizons, ...) and
    the starts (``episode`` names, ``t0``, ``length``, ``target``; ``horizons``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{arm}/{name}": v.astype(np.float32) for arm, rec in records.items() for name, v in rec.values.items()}
    first = next(iter(records.values()))
    arrays |= {
        "episode": np.array([episodes[s.episode].name or str(s.episode) for s in starts]),
        "t0": np.array([s.t0 for s in starts]),
        "length": np.array([s.length for s in starts]),
        "target": np.asarray(targets),
        "horizons": np.array(first.horizons),
    }
    np.savez_compressed(path, **arrays)
    return path
