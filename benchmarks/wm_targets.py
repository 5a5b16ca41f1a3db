"""The world model's targets, checked on an ``eval-wm`` output: ``python -m dreamgym.benchmarks.wm_targets EVAL_DIR --out JSON``.

``eval-wm`` tests the model against the strongest baseline of each metric; some targets name one
baseline (reproject-only), so this re-runs the same paired bootstrap test against it from the
per-start records (``EVAL_DIR/per_start/<task>.npz``), and reads the rest from ``metrics.json``:

- at h = 16 the task's target object's visibility F-score is >= 0.8 and beats every baseline;
- PSNR, SSIM and the frame Fréchet distance beat reproject-only at h = 4 and 16;
- over a push, the dreamed displacement is >= 0.8 of the simulator's, correlation >= 0.8;
- partner MPJPE beats constant velocity at every horizon in social and avoid (and, reported
  beside it, the strongest baseline, which may be the MSE twin);
- occupancy IoU at h = 16 is >= 0.6 in every task.

Each check lists its values, intervals and test, and ``met``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from dreamgym.worldmodel import eval_stats as S
from dreamgym.worldmodel.video_metrics import frechet_distance

TASKS = ("reach", "push", "social", "avoid")
REPROJECT_ARM = "geometric"  # the per-start records' arm of reproject-only (and the analytic grid)


def _paired(z: Any, metric: str, j: int, seed: int, arm: str = REPROJECT_ARM, higher_is_better: bool = True) -> dict[str, Any]:
    """The sampler against a baseline ``arm`` (reproject-only) on the starts both have at horizon index ``j``."""
    if metric == "frame_fd":
        a, b, real = z["sampler/feats"][:, j], z[f"{REPROJECT_ARM}/feats"][:, j], z["real/feats"][:, j]
        rows = np.flatnonzero(np.isfinite(a[:, 0]) & np.isfinite(b[:, 0]) & np.isfinite(real[:, 0]))
        fd = lambda x, y: float(frechet_distance(x, y))  # noqa: E731
        sm, sb = S.set_statistic(fd, a[rows], real[rows]), S.set_statistic(fd, b[rows], real[rows])
        return S.paired_test(sm, sb, len(rows), False, 200, seed, recentre=True)
    a, b = z[f"sampler/{metric}"][:, j], z[f"{arm}/{metric}"][:, j]
    rows = np.flatnonzero(np.isfinite(a) & np.isfinite(b))
    return S.paired_test(S.mean_of(a[rows]), S.mean_of(b[rows]), len(rows), higher_is_better, 1000, seed)


def check(eval_dir: Path, mid: int = 4, long: int = 16) -> dict[str, Any]:
    """Every target of the world model on the eval-wm output in ``eval_dir`` (the targets' horizons
    4 and 16: ``mid`` and ``long``, which the eval must have scored)."""
    d = json.loads((eval_dir / "metrics.json").read_text())
    H = list(d["horizons"])
    missing = [h for h in (mid, long) if h not in H]
    if missing:
        raise ValueError(f"{eval_dir}: the eval has horizons {H}, not {missing}")
    j4, j16 = H.index(mid), H.index(long)
    out: dict[str, Any] = {"eval": str(eval_dir), "horizons": H, "tasks": {}}
    for t in TASKS:
        r = d["tasks"].get(t)
        if r is None:
            continue
        z = np.load(eval_dir / "per_start" / f"{t}.npz")
        model = r["model"]["sampler"]
        cmp = r["comparison"]["sampler"]
        c: dict[str, Any] = {}
        vis = model.get("vis_f_target")
        if vis is not None:
            v, test = vis["value"][j16], cmp["vis_f_target"][j16]
            c["target_visibility_h16"] = {
                "value": v,
                "ci": vis["ci"][j16],
                "against": test,
                "met": bool(v is not None and v >= 0.8 and test["won"]),
            }
        for m in ("psnr_db", "ssim", "frame_fd"):
            tests = {f"h{H[j]}": _paired(z, m, j, 7 + j) for j in (j4, j16)}
            c[f"{m}_vs_reproject_only"] = {"tests": tests, "met": all(x["won"] for x in tests.values())}
        if t in ("social", "avoid"):
            cv = {f"h{h}": _paired(z, "partner_mpjpe_mm", j, 11 + j, "constant_velocity", False) for j, h in enumerate(H)}
            c["partner_mpjpe_vs_constant_velocity"] = {"tests": cv, "met": all(x["won"] for x in cv.values())}
            per_h = cmp["partner_mpjpe_mm"]
            c["partner_mpjpe_vs_strongest"] = {"against": per_h, "met": all(x is not None and x["won"] for x in per_h)}
        occ = model["occ_iou"]
        c["occupancy_iou_h16"] = {"value": occ["value"][j16], "ci": occ["ci"][j16], "met": bool(occ["value"][j16] >= 0.6)}
        if t == "push":
            p = r["push"]["sampler"]
            c["push_displacement"] = {
                "ratio": p["ratio"],
                "corr": p["corr"],
                "n_moved": p["n_moved"],
                "met": bool(p["ratio"]["value"] >= 0.8 and p["corr"]["value"] >= 0.8),
            }
        out["tasks"][t] = c
    out["met"] = {t: {k: v["met"] for k, v in c.items()} for t, c in out["tasks"].items()}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", type=Path, help="an eval-wm output directory (metrics.json, per_start/)")
    ap.add_argument("--out", type=Path, required=True, help="the JSON to write")
    a = ap.parse_args(argv)
    if not (a.eval_dir / "metrics.json").is_file():
        raise SystemExit(f"{a.eval_dir}: no metrics.json (give an eval-wm output directory)")
    r = check(a.eval_dir)
    a.out.write_text(json.dumps(r, indent=1) + "\n")
    for t, m in r["met"].items():
        print(t, " ".join(f"{k}={'met' if v else 'not met'}" for k, v in m.items()))


if __name__ == "__main__":
    main()
