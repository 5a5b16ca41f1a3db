"""eval-wm's figures of one task: per-start records -> metrics with intervals, and model vs the strongest baseline.

``ArmMetrics`` names every metric one arm's ``StartRecord`` supports and builds its statistic
(``eval_stats``) on any subset of starts at any horizon:

- means of per-start values: the ``per_sample_metrics`` (PSNR, SSIM, depth, MPJPE, root errors,
  props, reward, ``occ_iou_start``) and the image-position error per object ``pos_err_px_<object>``
  (over the starts where both the dream and the truth see it);
- pooled over starts: ``occ_iou`` and ``occ_miou`` (OccWorld's protocol, from summed counts), the
  visibility F-score per object ``vis_f_<object>`` and of the task's target object
  ``vis_f_target``;
- ``frame_fd``: the Fréchet distance of the dreamed frames' probe features to the real frames'.

``summarise`` gives each metric's value, 95 % interval and n per horizon; ``compare`` sets a model
arm against the strongest baseline of each metric and horizon (the best value among every
baseline that reports it) with a paired test on the starts both have; ``push_displacement`` scores
dreamed pushes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import eval_stats as S
from .eval_replay import HIGHER_IS_BETTER, MODALITY_METRICS, StartRecord
from .eval_tasks import OBJECT_NAMES

MEAN_METRICS = tuple(m for mods in MODALITY_METRICS.values() for m in mods if m not in ("occ_iou", "occ_miou"))
VIDEO_METRICS = ("vis_f_target", *(f"vis_f_{o}" for o in OBJECT_NAMES), *(f"pos_err_px_{o}" for o in OBJECT_NAMES), "frame_fd")
METRIC_MODALITY: dict[str, str] = {m: mod for mod, ms in MODALITY_METRICS.items() for m in ms} | {m: "ego_rgb" for m in VIDEO_METRICS}
REPORT_ORDER = (*MODALITY_METRICS["ego_rgb"], *VIDEO_METRICS, *(m for mod, ms in MODALITY_METRICS.items() if mod != "ego_rgb" for m in ms))


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better."""
    return metric in HIGHER_IS_BETTER or metric.startswith("vis_f_")


class ArmMetrics:
    """The metrics of one arm's per-start record.

    ``targets`` (N,): each start's target object (index into ``OBJECT_NAMES``; -1: none);
    ``real``: the real frames' record (``VideoScorer.real_frames``) and ``frechet`` the distance
    function, for ``frame_fd``; ``modalities``: report only the metrics of these (a baseline's).
    """

    def __init__(
        self,
        rec: StartRecord,
        targets: np.ndarray | None = None,
        real: StartRecord | None = None,
        frechet: Any = None,
        modalities: Sequence[str] | None = None,
    ):
        self.rec, self.v = rec, rec.values
        self.targets = targets if targets is not None else np.full(rec.num_starts, -1)
        self.real, self.frechet = real, frechet
        names = [m for m in MEAN_METRICS if m in self.v]
        if "occ_counts" in self.v:
            names += ["occ_iou", "occ_miou"]
        if "vis_tp" in self.v:
            names += [m for m in VIDEO_METRICS if m != "frame_fd" and (m != "vis_f_target" or (self.targets >= 0).any())]
            if real is not None and frechet is not None and "feats" in self.v and "feats" in real.values:
                names.append("frame_fd")
        if modalities is not None:
            names = [m for m in names if METRIC_MODALITY[m] in modalities]
        self.names = [m for m in REPORT_ORDER if m in names]

    def present(self, metric: str, j: int) -> np.ndarray:
        """(N,) bool: the starts that have ``metric`` at horizon index ``j``."""
        if metric in ("occ_iou", "occ_miou"):
            return np.isfinite(self.v["occ_counts"][:, j, 0])
        if metric.startswith(("vis_f_", "pos_err_px_")) or metric == "frame_fd":
            ok = np.isfinite(self.v["vis_tp"][:, j, 0])
            if metric == "vis_f_target":
                ok &= self.targets >= 0
            if metric == "frame_fd":
                ok &= np.isfinite(self.real.values["feats"][:, j, 0])
            return ok
        return np.isfinite(self.v[metric][:, j])

    def statistic(self, metric: str, j: int, rows: np.ndarray) -> S.Statistic:
        """The statistic of ``metric`` at horizon index ``j`` over the starts ``rows``."""
        v = self.v
        if metric == "occ_iou":
            c = v["occ_counts"][rows, j]
            return S.ratio_of(c[:, 0], c[:, 1])
        if metric == "occ_miou":
            c = v["occ_counts"][rows, j]
            C = (c.shape[1] - 2) // 2
            return S.miou_of(c[:, 2 + 1 : 2 + C], c[:, 2 + C + 1 :])  # semantic classes 1..C-1
        if metric.startswith("vis_f_"):
            if metric == "vis_f_target":
                t = self.targets[rows]
                pick = lambda name: v[name][rows, j][np.arange(len(rows)), t]  # noqa: E731
            else:
                o = OBJECT_NAMES.index(metric[len("vis_f_") :])
                pick = lambda name: v[name][rows, j, o]  # noqa: E731
            return S.fscore_of(pick("vis_tp"), pick("vis_fp"), pick("vis_fn"))
        if metric.startswith("pos_err_px_"):
            return S.mean_of(v["pos_err_px"][rows, j, OBJECT_NAMES.index(metric[len("pos_err_px_") :])])
        if metric == "frame_fd":
            if len(rows) < 2:  # a covariance needs two frames
                return lambda idx: np.full(len(idx), np.nan)
            return S.set_statistic(self.frechet, v["feats"][rows, j], self.real.values["feats"][rows, j])
        return S.mean_of(v[metric][rows, j])


def _resamples(metric: str, settings: Mapping[str, int]) -> int:
    return int(settings["frechet_resamples"] if metric == "frame_fd" else settings["resamples"])


def summarise(arm: ArmMetrics, settings: Mapping[str, int]) -> dict[str, dict[str, list]]:
    """``{metric: {"value": [per horizon], "ci": [[lo, hi], ...], "n": [...]}}`` (None where undefined)."""
    out = {}
    for m in arm.names:
        vals, cis, ns = [], [], []
        for j in range(len(arm.rec.horizons)):
            rows = np.flatnonzero(arm.present(m, j))
            r = S.interval(
                arm.statistic(m, j, rows), len(rows), _resamples(m, settings), int(settings["seed"]) + j, recentre=m == "frame_fd"
            )
            vals.append(r["value"])
            cis.append(r["ci"])
            ns.append(r["n"])
        out[m] = {"value": vals, "ci": cis, "n": ns}
    return out


def compare(
    model: ArmMetrics, baselines: Mapping[str, ArmMetrics], summaries: Mapping[str, dict], settings: Mapping[str, int]
) -> dict[str, list]:
    """Per metric and horizon: the strongest baseline (best value among those reporting it) and
    the paired test of the model against it (``eval_stats.paired_test``), or None where no
    baseline reports the metric."""
    out = {}
    for m in model.names:
        hib = higher_is_better(m)
        per_h = []
        for j in range(len(model.rec.horizons)):
            cands = [(summaries[b][m]["value"][j], b) for b in baselines if m in summaries[b] and summaries[b][m]["value"][j] is not None]
            if not cands:
                per_h.append(None)
                continue
            best_value, best = max(cands) if hib else min(cands)
            rows = np.flatnonzero(model.present(m, j) & baselines[best].present(m, j))
            test = S.paired_test(
                model.statistic(m, j, rows),
                baselines[best].statistic(m, j, rows),
                len(rows),
                hib,
                _resamples(m, settings),
                int(settings["seed"]) + 1000 + j,
                recentre=m == "frame_fd",
            )
            per_h.append({"baseline": best, "baseline_value": best_value} | test)
        if any(x is not None for x in per_h):
            out[m] = per_h
    return out


def push_displacement(
    rec: StartRecord, start_props: np.ndarray, real_props: np.ndarray, j: int, threshold: float, settings: Mapping[str, int]
) -> dict[str, Any] | None:
    """Dreamed vs simulated prop displacement over the window to horizon index ``j``.

    ``start_props``, ``real_props`` (N, 4, 3): the props at each start's last context step and
    ``j``'s horizon later in the simulator. Over the (start, prop) pairs the simulator moved more
    than ``threshold`` m horizontally: the ratio of means (dreamed / simulated displacement) and
    their Pearson correlation, each with a bootstrap interval over the pairs. None without props."""
    if "props" not in rec.values:
        return None
    dream = rec.values["props"][:, j]
    ok = np.isfinite(dream[:, 0, 0]) & np.isfinite(real_props[:, 0, 0])
    r = np.linalg.norm((real_props - start_props)[ok, :, :2], axis=-1).reshape(-1)
    d = np.linalg.norm((dream - start_props)[ok, :, :2], axis=-1).reshape(-1)
    moved = r > threshold
    r, d = r[moved], d[moved]
    n, res, seed = int(moved.sum()), int(settings["resamples"]), int(settings["seed"])
    return {
        "horizon": rec.horizons[j],
        "threshold_m": threshold,
        "n_windows": int(ok.sum()),
        "n_moved": n,
        "sim_mean_m": float(r.mean()) if n else None,
        "dream_mean_m": float(d.mean()) if n else None,
        "ratio": S.interval(S.ratio_of(d, r), n, res, seed),
        "corr": S.interval(S.pearson_of(r, d), n, res, seed),
    }
