"""Ego video judged by what a policy needs to see: objects, where they are, and a frame distance.

For every frame, real or dreamed, ``probe_objects`` says which of the five objects
(``OBJECT_NAMES``: props 0..3, then the partner; index 0..4 of every ``(B, 5)`` array) the
frame probe sees and where; ``object_truth`` says the same from the simulator's geometry for a
real frame. ``object_scores`` compares the two per sample, so that callers can sum counts over a
set or bootstrap confidence intervals over starts, and ``fscore`` turns summed counts into a
visibility F-score. ``frechet_distance`` compares two sets of frames in the probe's feature
space (blur, smearing and lost objects move it; PSNR rewards blur).

============================  ==========  ===============================================
function                      unit        what
============================  ==========  ===============================================
``probe_objects``             px          what the probe sees: vis (B, 5), pos (B, 5, 2), feats
``object_truth``              px          what geometry says a real frame shows (same layout)
``object_scores``             px          tp, fp, fn (B, 5) bool and pos_err_px (B, 5)
``fscore``                    1 (0..1)    2 TP / (2 TP + FP + FN) of summed counts
``frechet_distance``          feature^2   Fréchet distance of two Gaussians fitted to features
============================  ==========  ===============================================

Positions are ``(x, y)`` pixels from the image's top-left corner (a pixel's centre is at
``col + 0.5, row + 0.5``); an object is visible with at least ``MIN_PIXELS`` pixels. The probe's
own ceiling (its F-score on real held-out frames against geometry) is in ``worldmodel/probe/TRAINING.md``.
"""

from __future__ import annotations

import math

import torch

from .frame_probe import (
    MIN_PIXELS,
    NUM_OBJECTS,
    OBJECT_NAMES,
    FrameProbe,
    load_probe,
    object_truth,
    objects_from_labels,
    probe_labels,
    room_prop_colours,
    slot_labels,
)

__all__ = [
    "MIN_PIXELS",
    "NUM_OBJECTS",
    "OBJECT_NAMES",
    "fscore",
    "frechet_distance",
    "load_probe",
    "object_scores",
    "object_truth",
    "probe_objects",
    "room_prop_colours",
]


@torch.no_grad()
def probe_objects(probe: FrameProbe, rgb_uint8: torch.Tensor, prop_colours: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the probe sees in frames (B, 3, H, W) uint8, real or dreamed.

    ``prop_colours`` (B, 4) long: each prop slot's colour in the frame's room
    (``room_prop_colours(room_seeds)``): a frame shows colours, and a room's colours say which
    prop slot each is. Returns ``vis`` (B, 5) bool, ``pos`` (B, 5, 2) float px (NaN unless
    visible), ``feats`` (B, F) float (the Fréchet features) and ``labels`` (B, H, W) long (0
    background, 1..5 objects), on the probe's device.
    """
    if rgb_uint8.dim() != 4 or rgb_uint8.shape[1] != 3 or rgb_uint8.dtype != torch.uint8:
        raise ValueError(f"probe_objects: rgb_uint8 must be (B, 3, H, W) uint8, got {tuple(rgb_uint8.shape)} {rgb_uint8.dtype}")
    classes, feats = probe_labels(probe, rgb_uint8)
    labels = slot_labels(classes, torch.as_tensor(prop_colours).to(classes.device))
    seen = objects_from_labels(labels)
    return {"vis": seen["vis"], "pos": seen["pos"], "feats": feats, "labels": labels}


def object_scores(seen: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per sample and object: ``tp``, ``fp``, ``fn`` (B, 5) bool (seen vs truly visible) and
    ``pos_err_px`` (B, 5) float, the distance in pixels between the two positions, NaN unless
    the object is visible in both. ``seen``, ``truth``: dicts with ``vis`` (B, 5), ``pos`` (B, 5, 2)."""
    vs, vt = seen["vis"].bool(), truth["vis"].bool().to(seen["vis"].device)
    if vs.shape != vt.shape or vs.dim() != 2 or vs.shape[1] != NUM_OBJECTS:
        raise ValueError(f"object_scores: vis must both be (B, {NUM_OBJECTS}), got {tuple(vs.shape)} and {tuple(vt.shape)}")
    err = (seen["pos"].float() - truth["pos"].float().to(vs.device)).norm(dim=-1)
    err = torch.where(vs & vt, err, torch.full_like(err, float("nan")))
    return {"tp": vs & vt, "fp": vs & ~vt, "fn": ~vs & vt, "pos_err_px": err}


def fscore(tp, fp, fn) -> float | None:
    """Visibility F-score ``2 TP / (2 TP + FP + FN)`` of counts summed over everything given
    (bool arrays or counts of any shape; pass ``tp[:, k]`` for object k). None when the object
    was neither seen nor visible anywhere (the score is undefined)."""
    t, p, n = (float(torch.as_tensor(x).double().sum()) for x in (tp, fp, fn))
    den = 2 * t + p + n
    return None if den == 0 else 2 * t / den


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0, from
    rounding, are taken as 0)."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F):
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, in float64.

    The matrix square roots come from symmetric eigendecompositions (no complex parts, no
    ``scipy.linalg.sqrtm`` instability for near-singular covariances). The estimate is biased
    upward for finite sets: compare only values computed with the same N and M.

    What N it needs, with the shipped probe (F = 32; ``worldmodel/probe/TRAINING.md``): between
    sets of the *same starts* (the same rooms and moments, e.g. dreamed vs real frames at one
    horizon) the noise floor of real frames is 0.021 at N = 250, 0.006 at N = 1000 and 0.0015 at
    N = 4000, while blurring one set with a 3 x 3 box filter costs about 0.2; so N >= 250 (about
    8 F) separates blur from noise. Between sets of *different rooms* the rooms' own difference
    (0.19 between two halves of the held-out rooms) is as large as that blur: such a value does
    not measure frame quality.
    """
    a, b = torch.as_tensor(feats_a).double().cpu(), torch.as_tensor(feats_b).double().cpu()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: feats must be (N, F) and (M, F) with the same F, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"frechet_distance: needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("frechet_distance: features contain NaN or inf")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    r = _sqrt_psd(s_a)
    m = r @ s_b @ r
    cross = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    d = float(((mu_a - mu_b) ** 2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * cross)
    return max(d, 0.0) if math.isfinite(d) else float("nan")
