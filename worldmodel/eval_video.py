"""eval-wm's video-object metrics: does a dreamed frame show what a policy needs to see?

A frame probe (``frame_probe.load_probe``: a small encoder the project trains on real frames)
reads, from an RGB frame, which objects are visible (the four props and the partner,
``OBJECT_NAMES``), where they are in the image and a feature vector. The truth comes from the
simulator's state of the same step, each object's known geometry projected into the real head
camera with a depth test against the real depth (``video_metrics.object_truth``). Per start and
horizon this gives, for each object, a true/false positive or false negative of visibility and
the image-position error (pixels, where both the dream and the truth see it); the statistics
pool them into F-scores (per object, and for the task's target object) and mean errors, and set
the dreamed frames' features against the real frames' with a Fréchet distance, so that blur is
measured rather than rewarded.

The metrics come from ``dreamgym.worldmodel.video_metrics`` and ``dreamgym.worldmodel.frame_probe``;
when they cannot be imported (or the probe cannot be loaded) ``load_video_scorer`` says why, and
the evaluation runs without these metrics and writes that note.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .eval_replay import StartRecord
from .eval_tasks import OBJECT_NAMES

if TYPE_CHECKING:
    from .eval_episodes import Episode
    from .eval_tasks import Start

VIDEO_MODULE = "dreamgym.worldmodel.video_metrics"
PROBE_MODULE = "dreamgym.worldmodel.frame_probe"
TRUTH_KEYS = ("ego_depth", "motion", "partner_motion", "props")


class VideoScorer:
    """Scores dreamed frames against the simulator's objects with a frame probe.

    ``metrics``: the ``video_metrics`` module (``probe_objects``, ``object_truth``,
    ``object_scores``, ``frechet_distance``, ``room_prop_colours``); ``probe``: what
    ``load_probe`` returned.
    """

    def __init__(self, metrics: Any, probe: Any):
        self.metrics = metrics
        self.probe = probe

    def colours(self, room_seeds: Sequence[int]) -> torch.Tensor:
        """(B, 4) the colour of each prop slot in each room: which prop a colour in a frame is."""
        return torch.as_tensor(self.metrics.room_prop_colours(list(room_seeds)))

    def score(self, rgb: torch.Tensor, real: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-frame values of ``rgb`` (B, 3, H, W) uint8 against the real step ``real`` (its depth,
        both bodies, the props and ``prop_colours`` (B, 4), see ``colours``): ``vis_tp``,
        ``vis_fp``, ``vis_fn`` (B, 5) as 0/1, ``pos_err_px`` (B, 5) (NaN unless both see the
        object) and the probe's ``feats`` (B, F)."""
        vm = self.metrics
        seen = vm.probe_objects(self.probe, rgb, real["prop_colours"])
        truth = vm.object_truth(*(real[k] for k in TRUTH_KEYS))
        s = vm.object_scores(seen, truth)
        return {
            "vis_tp": torch.as_tensor(s["tp"]).float(),
            "vis_fp": torch.as_tensor(s["fp"]).float(),
            "vis_fn": torch.as_tensor(s["fn"]).float(),
            "pos_err_px": torch.as_tensor(s["pos_err_px"]).float(),
            "feats": torch.as_tensor(seen["feats"]).float(),
        }

    def frechet(self, a: np.ndarray, b: np.ndarray) -> float:
        """The Fréchet distance of two feature sets (N, F) and (M, F)."""
        return float(self.metrics.frechet_distance(a, b))

    def real_frames(
        self,
        episodes: Sequence[Episode],
        starts: Sequence[Start],
        horizons: Sequence[int],
        batch_size: int = 32,
        frame_horizon: int | None = None,
    ) -> StartRecord:
        """The same values for the real frames at each horizon (up to ``frame_horizon``): the probe's
        own score (a ceiling for any dream) and the real features the dreamed ones are compared with."""
        horizons = sorted(int(h) for h in horizons)
        rec = StartRecord(horizons, len(starts))
        for i in range(0, len(starts), batch_size):
            chunk = list(starts[i : i + batch_size])
            for j, h in enumerate(horizons):
                if frame_horizon is not None and h > frame_horizon:
                    continue
                ok = np.array([s.length >= h for s in chunk])
                if not ok.any():
                    continue
                rows = [(episodes[s.episode], s.t0 + h) for s, k in zip(chunk, ok) if k]
                real = {k: torch.as_tensor(np.stack([ep.obs[k][t] for ep, t in rows])) for k in ("ego_rgb", *TRUTH_KEYS)}
                real["prop_colours"] = self.colours([ep.room_seed for ep, _ in rows])
                for name, v in self.score(real["ego_rgb"], real).items():
                    rec.put(name, np.arange(i, i + len(chunk))[ok], j, v)
        return rec


def load_video_scorer(probe: str | None, episodes: Sequence[Episode]) -> tuple[VideoScorer | None, str | None]:
    """The scorer, or None and a note saying why the video-object metrics are skipped."""
    try:
        vm = importlib.import_module(VIDEO_MODULE)
        fp = importlib.import_module(PROBE_MODULE)
    except ImportError as e:
        return (
            None,
            f"video-object metrics (visibility F-score, image-position error, frame Fréchet distance) skipped: {VIDEO_MODULE} cannot be imported ({e})",
        )
    names = tuple(getattr(vm, "OBJECT_NAMES", OBJECT_NAMES))
    if names != OBJECT_NAMES:
        raise RuntimeError(f"{VIDEO_MODULE}.OBJECT_NAMES is {names}, but the evaluation reports {OBJECT_NAMES}")
    missing = [k for k in ("ego_rgb", *TRUTH_KEYS) if k not in episodes[0].obs]
    if missing:
        return None, f"video-object metrics skipped: the data has no {missing} (the objects' truth needs them)"
    if any(e.room_seed < 0 for e in episodes):
        return None, "video-object metrics skipped: some episodes' rooms are unknown (room_seed < 0), so their props' colours are"
    try:
        loaded = fp.load_probe(probe)
    except (FileNotFoundError, ValueError, KeyError) as e:  # a missing or damaged probe file
        return None, f"video-object metrics skipped: the frame probe {probe or '(shipped)'} cannot be loaded ({e})"
    return VideoScorer(vm, loaded), None
