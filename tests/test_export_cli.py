"""``dreamgym export``: every episode's agent and partner as .npz, BVH and .glb (and meshes), from
a dataset, an eval-wm run (with the dream) or a viewer bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch
from bvh import Bvh

# helpers shared with the viewer's tests (pytest puts tests/ on sys.path)
from test_avatars import NUM_VERTS, write_synthetic_smplx
from test_viewer import CONTEXT, FPS, ROOM_SEEDS, STEPS, save_tiny_world_model, synthetic_episode, write_run, write_tiny_dataset

from dreamgym.app.cli import main
from dreamgym.avatars.smplx_params import motion_to_smplx
from dreamgym.envs.skeleton import NUM_JOINTS

DREAM_STEPS = 3
TOL = 1e-5  # metres: float32 motion through the exporters (see test_avatars)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("export") / "data")


@pytest.fixture(scope="module")
def run_folder(dataset: Path, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("export")
    return write_run(base / "run", dataset, save_tiny_world_model(base / "wm", dataset))


def glb_keyframes(path: Path) -> int:
    gltf = pygltflib.GLTF2().load(str(path))
    sampler = gltf.animations[0].samplers[0]
    return gltf.accessors[sampler.input].count


def test_export_dataset_writes_every_episode_and_side(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["export", f"data={dataset}", f"out={out}"]) == 0
    captured = capsys.readouterr()
    assert "export: 100%" in captured.err and "4/4" in captured.err  # the progress bar: 2 episodes x 2 sides
    assert "4 sequences of 2 episodes" in captured.out
    index = json.loads((out / "export.json").read_text())
    assert index["fps"] == FPS and sorted(index["episodes"]) == ["episode_000000", "episode_000001"]
    for i, seed in enumerate(ROOM_SEEDS):
        source = synthetic_episode(seed, i).observations
        folder = out / f"episode_{i:06d}"
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.{e}" for s in ("agent", "partner") for e in ("npz", "bvh", "glb"))
        for side, key in (("agent", "motion"), ("partner", "partner_motion")):
            params = motion_to_smplx(source[key])
            npz = np.load(folder / f"{side}.npz")
            assert npz["poses"].shape == (STEPS + 1, 165) and float(npz["mocap_framerate"]) == FPS
            np.testing.assert_allclose(npz["trans"], params.transl, atol=TOL)
            np.testing.assert_allclose(npz["joints"], params.joints, atol=TOL)
            bvh = Bvh((folder / f"{side}.bvh").read_text())
            assert bvh.nframes == STEPS + 1 and abs(bvh.frame_time - 1 / FPS) < 1e-6 and len(bvh.get_joints()) == NUM_JOINTS
            assert glb_keyframes(folder / f"{side}.glb") == STEPS + 1
        assert index["episodes"][f"episode_{i:06d}"]["agent"]["files"]["npz"] == f"episode_{i:06d}/agent.npz"


def test_export_run_adds_the_dream(run_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["export", f"data={run_folder}", f"out={out}", "progress=false", f"dream_steps={DREAM_STEPS}", "num_steps=1"]) == 0
    index = json.loads((out / "export.json").read_text())
    assert list(index["episodes"]) == ["episode_000001"]  # a run shows its held-out rooms
    entry = index["episodes"]["episode_000001"]
    assert sorted(entry) == ["agent", "dream_agent", "dream_partner", "partner"]
    assert entry["dream_agent"]["dream_start"] == CONTEXT and entry["dream_agent"]["stream"] == "dream"
    folder = out / "episode_000001"
    dream = np.load(folder / "dream_agent.npz")
    real = np.load(folder / "agent.npz")
    assert dream["poses"].shape == (CONTEXT + DREAM_STEPS, 165)
    np.testing.assert_allclose(dream["joints"][:CONTEXT], real["joints"][:CONTEXT], atol=TOL)  # the real context, then the dream
    assert Bvh((folder / "dream_partner.bvh").read_text()).nframes == CONTEXT + DREAM_STEPS
    # the dream was kept as the run's viewer bundle; exporting from the bundle gives the same files
    assert (run_folder / "viewer" / "viewer.json").is_file()
    again = tmp_path / "again"
    assert main(["export", str(run_folder / "viewer"), f"out={again}", "progress=false", "streams=[dream]"]) == 0
    assert sorted(p.name for p in (again / "episode_000001").iterdir()) == sorted(
        f"dream_{s}.{e}" for s in ("agent", "partner") for e in ("npz", "bvh", "glb")
    )
    np.testing.assert_array_equal(np.load(again / "episode_000001" / "dream_agent.npz")["poses"], dream["poses"])


def test_export_with_smplx_model_writes_meshes(dataset: Path, tmp_path: Path) -> None:
    write_synthetic_smplx(tmp_path / "models" / "smplx")
    out = tmp_path / "out"
    assert (
        main(["export", f"data={dataset}", f"out={out}", f"smplx_model_dir={tmp_path / 'models'}", "episodes=[1]", "progress=false"]) == 0
    )
    mesh = np.load(out / "episode_000001" / "partner_mesh.npz")
    assert mesh["vertices"].shape == (STEPS + 1, NUM_VERTS, 3) and float(mesh["fps"]) == FPS
    source = synthetic_episode(ROOM_SEEDS[1], 1).observations["partner_motion"]
    np.testing.assert_allclose(mesh["joints"], motion_to_smplx(source).joints, atol=TOL)  # the mesh stands where the skeleton does
    assert sorted(json.loads((out / "export.json").read_text())["episodes"]) == ["episode_000001"]


def test_export_errors_say_what_to_do(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="give data=.*out="):
        main(["export", f"data={dataset}"])
    with pytest.raises(SystemExit, match=r"SMPLX_NEUTRAL\.npz.*smplx_model_dir"):
        main(["export", f"data={dataset}", f"out={tmp_path / 'o'}", f"smplx_model_dir={tmp_path / 'none'}", "progress=false"])
    with pytest.raises(SystemExit, match="not a dataset"):
        main(["export", f"data={tmp_path}", f"out={tmp_path / 'o'}"])
    with pytest.raises(SystemExit, match="no heldout episode"):
        main(["export", f"data={dataset}", f"out={tmp_path / 'o'}", "split=heldout", "episodes=[0]"])
