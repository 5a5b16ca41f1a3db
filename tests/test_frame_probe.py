"""The frame probe and the video metrics: geometry labels on analytically rendered frames, scores on
hand-made cases, the Fréchet distance, probe files, and ``dreamgym train-probe`` end to end."""

import json
import math

import pytest
import torch

from dreamgym.envs.motion import MOTION_DIM
from dreamgym.envs.scene import PROP_BALL_RADIUS, PROP_BOX_HALF
from dreamgym.envs.skeleton import BONES, rest_positions
from dreamgym.envs.spaces import MAX_DEPTH
from dreamgym.worldmodel import frame_probe as fp
from dreamgym.worldmodel import video_metrics as vm
from dreamgym.worldmodel.warp import _rays, ego_camera_pose

RES = 32
FAR_AWAY = (-3.0, 0.0)  # behind the agent, which stands at the origin facing +x


def standing(x: float, y: float, yaw: float) -> torch.Tensor:
    """A motion vector (1, 227) of a body standing in the rest pose at (x, y), facing ``yaw``."""
    m = torch.zeros(1, MOTION_DIM)
    m[0, 0:3] = torch.tensor([x, y, 0.93])
    m[0, 3:7] = torch.tensor([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])
    m[0, 7:73] = torch.as_tensor(rest_positions(), dtype=torch.float32).reshape(-1)
    m[0, 73:161] = torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(22)
    return m


def render_depth(agent: torch.Tensor, spheres, boxes=(), walls_x=()) -> torch.Tensor:
    """Planar depth (1, 1, RES, RES) of a scene of spheres ((centre, r)), upright boxes ((centre,
    half)), walls x = const and the floor, seen from ``agent``'s head camera."""
    pos, rot = ego_camera_pose(agent)
    d = _rays(RES, RES, 90.0, "cpu") @ rot[0].T  # world direction per unit of planar depth
    o = pos[0]
    best = torch.full((RES * RES,), MAX_DEPTH)
    down = d[:, 2] < 0
    best = torch.where(down, torch.minimum(best, -o[2] / d[:, 2].clamp(max=-1e-9)), best)
    for x in walls_x:
        t = (x - o[0]) / d[:, 0]
        best = torch.where(t > 0, torch.minimum(best, t), best)
    for c, r in spheres:
        oc = o - torch.as_tensor(c, dtype=torch.float32)
        a, b, cc = (d * d).sum(1), 2 * (d * oc).sum(1), (oc * oc).sum() - r * r
        disc = b * b - 4 * a * cc
        t = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
        best = torch.where((disc >= 0) & (t > 0), torch.minimum(best, t), best)
    for c, h in boxes:
        c = torch.as_tensor(c, dtype=torch.float32)
        t1, t2 = (c - h - o) / d, (c + h - o) / d
        tn, tf = torch.minimum(t1, t2).amax(1), torch.maximum(t1, t2).amin(1)
        best = torch.where((tn <= tf) & (tn > 0), torch.minimum(best, tn), best)
    return best.clamp(max=MAX_DEPTH).reshape(1, 1, RES, RES)


def partner_spheres(partner: torch.Tensor):
    """The partner's bones as chains of small spheres (within each bone's radius of the bone)."""
    from dreamgym.worldmodel.data import joints_world

    j = joints_world(partner)[0]
    out = []
    for p, c in BONES:
        if c in (13, 14):
            continue
        r = fp.BONE_RADIUS.get(p, fp.BONE_RADIUS_OTHER)
        for w in torch.linspace(0, 1, 12):
            out.append((j[p] * (1 - w) + j[c] * w, r))
    return out


def props_at(*xyz) -> torch.Tensor:
    return torch.tensor([list(xyz[i]) if i < len(xyz) else [*FAR_AWAY, 0.2] for i in range(4)], dtype=torch.float32)[None]


AGENT = standing(0.0, 0.0, 0.0)
FAR_PARTNER = standing(*FAR_AWAY, 0.0)


def test_a_ball_straight_ahead_is_labelled_at_the_image_centre():
    cam_z = float(ego_camera_pose(AGENT)[0][0, 2])
    ball = (2.5, 0.0, cam_z)
    props = props_at((*FAR_AWAY, 0.2), ball)
    depth = render_depth(AGENT, [(ball, PROP_BALL_RADIUS)], walls_x=[6.0])
    t = vm.object_truth(depth, AGENT, FAR_PARTNER, props)
    assert t["labels"].shape == (1, RES, RES) and t["vis"].shape == (1, 5) and t["pos"].shape == (1, 5, 2)
    assert t["vis"][0].tolist() == [False, True, False, False, False]
    # the ball subtends 2 atan(0.18 / 2.5) ~ 8.2 deg of the 90: a disc about 3 px across, centred
    assert 4 <= int((t["labels"] == 2).sum()) <= 16
    assert torch.allclose(t["pos"][0, 1], torch.tensor([16.0, 16.0]), atol=0.6)
    assert torch.isnan(t["pos"][0, [0, 2, 3, 4]]).all()
    # floor and wall pixels are background
    assert int((t["labels"] > 0).sum()) == int((t["labels"] == 2).sum())


def test_boxes_and_the_partner_land_on_their_side_of_the_image_under_a_turned_agent():
    yaw = 0.7
    agent = standing(1.0, 1.0, yaw)
    fwd, left = torch.tensor([math.cos(yaw), math.sin(yaw)]), torch.tensor([-math.sin(yaw), math.cos(yaw)])
    box_xy = torch.tensor([1.0, 1.0]) + 2.5 * fwd - 1.0 * left  # ahead and to the right
    box = (float(box_xy[0]), float(box_xy[1]), PROP_BOX_HALF)
    p_xy = torch.tensor([1.0, 1.0]) + 3.5 * fwd + 1.2 * left  # ahead and to the left, facing the agent
    partner = standing(float(p_xy[0]), float(p_xy[1]), yaw + math.pi)
    props = props_at(box)
    spheres = partner_spheres(partner)
    depth = render_depth(agent, spheres, boxes=[(box, PROP_BOX_HALF)])
    t = vm.object_truth(depth, agent, partner, props)
    assert t["vis"][0].tolist() == [True, False, False, False, True]
    assert float(t["pos"][0, 0, 0]) > 20 and float(t["pos"][0, 0, 1]) > 16  # right of centre, below the horizon
    assert float(t["pos"][0, 4, 0]) < 12  # the partner is on the left
    rows = torch.nonzero(t["labels"][0] == 5)[:, 0]
    assert int(rows.max() - rows.min()) >= 6  # a standing body: from about the horizon down to the floor


def test_occluded_objects_are_not_visible():
    cam_z = float(ego_camera_pose(AGENT)[0][0, 2])
    near, behind = (2.0, 0.0, cam_z), (4.0, 0.0, cam_z)
    props = props_at((*FAR_AWAY, 0.2), near, (*FAR_AWAY, 0.2), behind)
    spheres = [(near, PROP_BALL_RADIUS), (behind, PROP_BALL_RADIUS)]
    t = vm.object_truth(render_depth(AGENT, spheres), AGENT, FAR_PARTNER, props)
    assert t["vis"][0].tolist() == [False, True, False, False, False]  # ball 3 is hidden by ball 1
    walled = vm.object_truth(render_depth(AGENT, spheres, walls_x=[1.0]), AGENT, FAR_PARTNER, props)
    assert not walled["vis"].any() and int((walled["labels"] > 0).sum()) == 0


def test_object_truth_refuses_wrong_shapes():
    depth = torch.full((1, 1, RES, RES), MAX_DEPTH)
    with pytest.raises(ValueError, match="props has shape"):
        vm.object_truth(depth, AGENT, FAR_PARTNER, torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="depth must be"):
        vm.object_truth(depth[0, 0], AGENT, FAR_PARTNER, props_at())


def test_colour_classes_and_slot_labels_invert_each_other():
    labels = torch.tensor([[[0, 1, 2], [3, 4, 5]]])
    cols = torch.tensor([[4, 0, 5, 2]])
    classes = fp.colour_classes(labels, cols)
    assert classes.tolist() == [[[0, 5, 1], [6, 3, fp.PARTNER_CLASS]]]
    assert torch.equal(fp.slot_labels(classes, cols), labels)
    # a colour that no prop of this room has is background
    assert fp.slot_labels(torch.tensor([[[1 + 1]]]), cols).item() == 0  # colour 1
    assert fp.room_prop_colours([5, 5]).shape == (2, 4)


def test_object_scores_and_fscore_on_hand_made_cases():
    nan = float("nan")
    seen = {
        "vis": torch.tensor([[True, True, False, False, True]]),
        "pos": torch.tensor([[[3.0, 4.0], [1, 1], [nan, nan], [nan, nan], [5, 5]]]),
    }
    truth = {
        "vis": torch.tensor([[True, False, True, False, True]]),
        "pos": torch.tensor([[[0.0, 0.0], [nan, nan], [2, 2], [nan, nan], [5, 6]]]),
    }
    s = vm.object_scores(seen, truth)
    assert s["tp"][0].tolist() == [True, False, False, False, True]
    assert s["fp"][0].tolist() == [False, True, False, False, False]
    assert s["fn"][0].tolist() == [False, False, True, False, False]
    assert s["pos_err_px"][0, 0].item() == pytest.approx(5.0) and s["pos_err_px"][0, 4].item() == pytest.approx(1.0)
    assert torch.isnan(s["pos_err_px"][0, 1:4]).all()
    assert vm.fscore(s["tp"], s["fp"], s["fn"]) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert vm.fscore(s["tp"][:, 0], s["fp"][:, 0], s["fn"][:, 0]) == 1.0
    assert vm.fscore(s["tp"][:, 2], s["fp"][:, 2], s["fn"][:, 2]) == 0.0
    assert vm.fscore(s["tp"][:, 3], s["fp"][:, 3], s["fn"][:, 3]) is None  # neither seen nor visible
    with pytest.raises(ValueError, match="vis must both be"):
        vm.object_scores({"vis": torch.zeros(2, 4, dtype=torch.bool), "pos": torch.zeros(2, 4, 2)}, truth)


def test_objects_from_labels_counts_the_minimum_pixels():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2, 3] = 1  # one pixel: below MIN_PIXELS
    labels[0, 4:6, 6] = 5
    out = fp.objects_from_labels(labels)
    assert fp.MIN_PIXELS == 2 and out["vis"][0].tolist() == [False, False, False, False, True]
    assert out["pos"][0, 4].tolist() == [6.5, 5.0]


def test_frechet_distance_is_zero_on_a_set_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 16, generator=g) @ torch.randn(16, 16, generator=g)
    assert vm.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifts = [vm.frechet_distance(a, a + s) for s in (0.5, 1.0, 2.0)]
    assert shifts == pytest.approx([16 * 0.25, 16 * 1.0, 16 * 4.0], rel=1e-6)  # |mu shift|^2, covariances equal
    b = torch.randn(2000, 16, generator=g) @ torch.randn(16, 16, generator=g)
    assert vm.frechet_distance(a, b) > 1.0 and vm.frechet_distance(a, 0.5 * a) > 0.1
    # a rank-deficient covariance (constant features) stays finite
    c = torch.cat([a[:, :8], torch.zeros(2000, 8)], 1)
    assert math.isfinite(vm.frechet_distance(c, c + 0.1))
    with pytest.raises(ValueError, match="same F"):
        vm.frechet_distance(a, a[:, :8])


def test_probe_save_load_round_trip_and_refusals(tmp_path):
    probe = fp.FrameProbe(fp.ProbeConfig(widths=(8, 16, 16))).eval()
    rgb = torch.randint(0, 256, (3, 3, RES, RES), dtype=torch.uint8)
    fp.save_probe(probe, tmp_path / "p", meta={"note": "test"})
    again = fp.load_probe(tmp_path / "p")
    with torch.no_grad():
        for x, y in zip(probe(rgb), again(rgb)):
            assert torch.equal(x, y)
    assert again.config.feature_dim == 16 and json.loads((tmp_path / "p" / fp.CONFIG_NAME).read_text())["meta"] == {"note": "test"}
    seen = vm.probe_objects(again, rgb, torch.tensor([[0, 1, 2, 3]] * 3))
    assert seen["vis"].shape == (3, 5) and seen["pos"].shape == (3, 5, 2) and seen["feats"].shape == (3, 16)
    weights = tmp_path / "p" / fp.WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated|not a safetensors") as e:
        fp.load_probe(tmp_path / "p")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not found"):
        fp.load_probe(tmp_path / "nothing")
    fp.save_probe(fp.FrameProbe(fp.ProbeConfig(widths=(8, 16, 24))), tmp_path / "q")
    (tmp_path / "q" / fp.CONFIG_NAME).write_text((tmp_path / "p" / fp.CONFIG_NAME).read_text())
    with pytest.raises(ValueError, match="does not fit"):
        fp.load_probe(tmp_path / "q")
    (tmp_path / "q" / fp.CONFIG_NAME).write_text("{oops")
    with pytest.raises(ValueError, match="not a frame-probe config"):
        fp.load_probe(tmp_path / "q")


def test_the_shipped_probe_loads_and_sees_objects_in_frames():
    probe = vm.load_probe()
    assert sum(p.numel() for p in probe.parameters()) * 4 < 1_000_000
    rgb = torch.full((2, 3, RES, RES), 128, dtype=torch.uint8)
    seen = vm.probe_objects(probe, rgb, torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5]]))
    assert seen["feats"].shape == (2, probe.config.feature_dim) and torch.isfinite(seen["feats"]).all()


def test_fit_lowers_the_loss_on_a_synthetic_set(tmp_path):
    from omegaconf import OmegaConf

    from dreamgym.worldmodel.probe_train import fit

    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 60, (64, 3, 16, 16), dtype=torch.uint8, generator=g)
    classes = torch.zeros(64, 16, 16, dtype=torch.uint8)
    rgb[:32, 0, 4:8, 4:8] = 250  # a red square: class 1 (colour 0)
    classes[:32, 4:8, 4:8] = 1
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "lr": 3e-2,
            "weight_decay": 0.0,
            "warmup_steps": 5,
            "steps": 40,
            "object_weight": 4.0,
            "batch_size": 16,
            "log_every": 10,
        }
    )
    torch.manual_seed(0)
    probe = fp.FrameProbe(fp.ProbeConfig(widths=(8, 16, 16)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: more threads only contend
    try:
        rec = fit(probe, {"rgb": rgb, "classes": classes}, cfg, tmp_path / "log.jsonl")
    finally:
        torch.set_num_threads(threads)
    assert len(rec) == 4 and rec[-1]["loss"] < 0.2 * rec[0]["loss"]
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [10, 20, 30, 40]
    with torch.no_grad():
        pred = probe(rgb)[0].argmax(1)
    assert (pred[:32, 4:8, 4:8] == 1).float().mean() > 0.9 and (pred[32:] == 0).float().mean() > 0.9


@pytest.mark.slow
def test_train_probe_command_on_a_collected_dataset(tmp_path):
    from dreamgym.app.cli import main
    from dreamgym.envs.scene import COLOUR_NAMES, COLOURS
    from dreamgym.worldmodel.probe_train import load_frames

    data = tmp_path / "data"
    main(
        [
            "collect",
            "task=social",
            "steps=96",
            "num_envs=4",
            "round_steps=8",
            "resolution=16",
            "heldout_fraction=0.5",
            f"out={data}",
            "progress=false",
        ]
    )
    out = tmp_path / "probe"
    assert main(["train-probe", f"data=[{data}]", f"out={out}", "steps=20", "batch_size=16", "log_every=10", "widths=[8,16,16]"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["heldout_objects"]) >= set(vm.OBJECT_NAMES) and m["frames"]["train"] > 0 and m["frames"]["heldout"] > 0
    assert m["frechet"]["feature_dim"] == 16
    assert fp.load_probe(out).config.widths == (8, 16, 16)
    # on real frames, the pixels that geometry gives a prop have that prop's colour
    frames = load_frames(data, "all")
    palette = torch.tensor([COLOURS[c][:3] for c in COLOUR_NAMES])
    chroma = lambda v: v / v.sum(-1, keepdim=True)  # noqa: E731 - shading scales a colour; its chromaticity stays
    checked = right = 0
    for e in frames["episode"].unique():
        rows = frames["episode"] == e
        rgb, labels, cols = frames["rgb"][rows].float().permute(0, 2, 3, 1) / 255, frames["labels"][rows], frames["prop_colours"][rows][0]
        for k in range(4):
            mask = labels == k + 1
            if int(mask.sum()) >= 10:
                nearest = int((chroma(palette) - chroma(rgb[mask].mean(0))).norm(dim=-1).argmin())
                checked, right = checked + 1, right + int(nearest == int(cols[k]))
    assert checked >= 2 and right >= 0.8 * checked, (right, checked)
