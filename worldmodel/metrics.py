"""Metrics that compare a predicted step with the simulator's ground truth (batched, torch).

Every function takes a batch first, ``(B, ...)``, and returns one value per sample ``(B,)``
(or per-sample counts), on the inputs' device, so that callers can average over samples or
accumulate counts over a whole dataset. Units are in each docstring.

=========================  ==============  ===================================================
function                   unit            what
=========================  ==============  ===================================================
``psnr``                   dB              peak signal-to-noise ratio of ego frames
``ssim``                   1 (0..1)        structural similarity of ego frames (Gaussian 11x11)
``depth_abs_error``        metres          mean absolute depth difference per pixel
``mpjpe_mm``               millimetres     mean per-joint position error, joints in the root frame
``root_translation_error`` metres          distance between root (pelvis) positions, world
``root_rotation_error``    radians         geodesic angle between root orientations, world
``props_error``            metres          mean distance between prop positions, world
``occupancy_counts``       voxels          per-class intersections and unions (OccWorld)
``iou_from_counts``        1 (0..1)        IoU (occupied vs free) and mIoU (classes 1..4)
=========================  ==============  ===================================================

Occupancy follows OccWorld's protocol: *IoU* is the IoU of the binary occupied-vs-free grids,
*mIoU* the mean over the semantic classes (1 static, 2 movable, 3 partner, 4 agent; free is not a
class) of each class's IoU, and both are computed from intersections and unions summed over the
whole evaluation set (not averaged per sample). A class whose union is empty over the set is left
out of the mean.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dreamgym.envs.motion import JOINT_POS, ROOT_POS, ROOT_QUAT
from dreamgym.envs.occupancy import CLASS_NAMES, FREE

OCC_CLASSES = tuple(range(1, len(CLASS_NAMES)))  # semantic classes of the mIoU: 1..4
PSNR_MAX_DB = 100.0  # identical images would give +inf; capped so that means stay finite


def _check_same_shape(pred: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{what}: prediction has shape {tuple(pred.shape)}, ground truth {tuple(target.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, one per image: ``10 log10(range^2 / MSE)``.

    ``pred``, ``target``: (B, C, H, W) images (uint8 frames: ``data_range=255``). The MSE is over
    all channels and pixels of an image. Identical images give ``PSNR_MAX_DB`` (100 dB).
    """
    _check_same_shape(pred, target, "psnr")
    p, t = pred.double(), target.double()
    mse = ((p - t) ** 2).flatten(1).mean(1)
    floor = data_range**2 * 10 ** (-PSNR_MAX_DB / 10)
    return (10 * torch.log10(data_range**2 / mse.clamp_min(floor))).float()


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 255.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), one per image, in [-1, 1] (1 = identical).

    ``pred``, ``target``: (B, C, H, W). Gaussian window ``window`` x ``window`` with ``sigma``
    (11, 1.5 as in the paper; shrunk to the image size for tiny images), K1 = 0.01, K2 = 0.03,
    statistics per channel over valid (unpadded) window positions, averaged over channels and
    positions.
    """
    _check_same_shape(pred, target, "ssim")
    if pred.dim() != 4:
        raise ValueError(f"ssim expects (B, C, H, W) images, got shape {tuple(pred.shape)}")
    B, C, H, W = pred.shape
    window = min(window, H, W)
    x, y = pred.double(), target.double()
    k = _gaussian_window(window, sigma, x.device, x.dtype).expand(C, 1, window, window)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, k, groups=C)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


def depth_abs_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute depth error in metres per image; ``pred``, ``target``: (B, 1, H, W) in metres."""
    _check_same_shape(pred, target, "depth_abs_error")
    return (pred.float() - target.float()).abs().flatten(1).mean(1)


def mpjpe_mm(pred_motion: torch.Tensor, target_motion: torch.Tensor) -> torch.Tensor:
    """Mean per-joint position error in millimetres, one per sample.

    ``pred_motion``, ``target_motion``: (B, 227) motion vectors (``envs.motion``). The 22 joint
    positions are compared in each body's own root frame (origin at the pelvis, heading-aligned),
    so the error is about the pose, not where the body is (that is ``root_translation_error``).
    """
    _check_same_shape(pred_motion, target_motion, "mpjpe_mm")
    p = pred_motion[..., JOINT_POS].reshape(*pred_motion.shape[:-1], -1, 3).float()
    t = target_motion[..., JOINT_POS].reshape(*target_motion.shape[:-1], -1, 3).float()
    return 1000.0 * torch.linalg.norm(p - t, dim=-1).mean(-1)


def root_translation_error(pred_motion: torch.Tensor, target_motion: torch.Tensor) -> torch.Tensor:
    """Euclidean distance in metres between predicted and true root (pelvis) positions, world frame.

    ``pred_motion``, ``target_motion``: (B, 227) motion vectors.
    """
    _check_same_shape(pred_motion, target_motion, "root_translation_error")
    return torch.linalg.norm(pred_motion[..., ROOT_POS].float() - target_motion[..., ROOT_POS].float(), dim=-1)


def quat_angle(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in radians (0..pi) between (..., 4) quaternions; normalises both first."""
    q1 = F.normalize(q1.double(), dim=-1)
    q2 = F.normalize(q2.double(), dim=-1)
    d = (q1 * q2).sum(-1).abs().clamp(max=1.0)
    return (2 * torch.acos(d)).float()


def root_rotation_error(pred_motion: torch.Tensor, target_motion: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in radians (0..pi) between predicted and true root orientations, world frame.

    ``pred_motion``, ``target_motion``: (B, 227) motion vectors; the predicted quaternion is
    normalised first (a model need not output unit quaternions).
    """
    _check_same_shape(pred_motion, target_motion, "root_rotation_error")
    return quat_angle(pred_motion[..., ROOT_QUAT], target_motion[..., ROOT_QUAT])


def props_error(pred_props: torch.Tensor, target_props: torch.Tensor) -> torch.Tensor:
    """Mean distance in metres between predicted and true prop positions; (B, N, 3) each, world frame."""
    _check_same_shape(pred_props, target_props, "props_error")
    return torch.linalg.norm(pred_props.float() - target_props.float(), dim=-1).mean(-1)


def occupancy_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int = len(CLASS_NAMES)) -> dict[str, torch.Tensor]:
    """Per-sample voxel counts for OccWorld's IoU and mIoU.

    ``pred``, ``target``: (B, ...) integer class grids (0 free, 1..num_classes-1 semantic). Returns
    ``{"occ_inter": (B,), "occ_union": (B,), "class_inter": (B, num_classes), "class_union":
    (B, num_classes)}`` as int64 voxel counts, where *occ* is occupied (class != free) and row c of
    the class counts is class c (row 0, free, is counted but not used by the mIoU). Sum them over
    the evaluation set and pass them to ``iou_from_counts``.
    """
    _check_same_shape(pred, target, "occupancy_counts")
    p = pred.long().flatten(1)
    t = target.long().flatten(1)
    po, to = p != FREE, t != FREE
    out = {"occ_inter": (po & to).sum(1), "occ_union": (po | to).sum(1)}
    classes = torch.arange(num_classes, device=p.device)[None, :, None]
    pc, tc = p[:, None] == classes, t[:, None] == classes  # (B, C, V)
    out["class_inter"] = (pc & tc).sum(2)
    out["class_union"] = (pc | tc).sum(2)
    return out


def iou_from_counts(counts: dict[str, torch.Tensor], classes=OCC_CLASSES) -> dict[str, float]:
    """OccWorld's IoU and mIoU from (summed) ``occupancy_counts``: ``{"occ_iou", "occ_miou"}``.

    Counts with a leading batch axis are summed over it first (dataset-level ratios). IoU is the
    occupied-vs-free IoU; mIoU the mean over ``classes`` (1..4) of intersection / union, leaving
    out classes whose union is empty. A value is NaN when nothing is left to average.
    """
    c = {k: v.sum(0) if v.dim() > (1 if k.startswith("class") else 0) else v for k, v in counts.items()}
    union = float(c["occ_union"])
    iou = float(c["occ_inter"]) / union if union > 0 else math.nan
    per_class = [float(c["class_inter"][k]) / float(c["class_union"][k]) for k in classes if float(c["class_union"][k]) > 0]
    miou = sum(per_class) / len(per_class) if per_class else math.nan
    return {"occ_iou": iou, "occ_miou": miou}


def occupancy_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample occupied-vs-free IoU (B,) in [0, 1] (NaN where both grids are empty)."""
    c = occupancy_counts(pred, target)
    return c["occ_inter"].double().div(c["occ_union"].double()).float()
