"""The viewer: bundles of real and dreamed episodes, the loopback server, and the page in headless Chromium."""

from __future__ import annotations

import http.client
import io
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from dreamgym.avatars.kinematics import motion_from_pose
from dreamgym.avatars.smplx_params import motion_to_smplx
from dreamgym.avatars.viewer.bundle import Bundle, resolve_bundle
from dreamgym.avatars.viewer.headless import HeadlessChromium, find_chromium
from dreamgym.avatars.viewer.server import PortInUseError, ViewerServer
from dreamgym.envs import scene
from dreamgym.envs.skeleton import NUM_JOINTS, PELVIS_HEIGHT, SMPLX_FROM_MUJOCO
from dreamgym.rollouts.dataset import Episode, Manifest, write_shard

RESOLUTION = 16
STEPS = 12  # transitions per episode: 13 observations
FPS = 20.0
OCC_SHAPE = (8, 32, 32)  # (Z, X, Y)
ROOM_SEEDS = (1, 3)  # one train room, one held-out room at heldout_fraction 0.5
CONTEXT = 2
DREAM_STEPS = 4
NQ, NV = 74, 70
PROP_QPOS = (0, 7, 14, 21)


# ---------------------------------------------------------------------------------------- data
def walking_motion(start_xy: np.ndarray, yaw: float, steps: int, speed: float, seed: int) -> np.ndarray:
    """(steps + 1, 227) motion of a body walking straight from ``start_xy`` (MuJoCo frame),
    swinging its arms and legs."""
    t = np.arange(steps + 1) / FPS
    forward = np.array([np.cos(yaw), np.sin(yaw)])
    root = np.zeros((steps + 1, 3))
    root[:, :2] = start_xy + speed * t[:, None] * forward
    root[:, 2] = PELVIS_HEIGHT
    rotvec = np.zeros((steps + 1, NUM_JOINTS, 3))
    rotvec[:, 0, 2] = yaw
    phase = 2 * np.pi * 1.5 * t + seed
    for j, sign in ((1, 1), (2, -1), (16, -1), (17, 1)):  # hips and shoulders swing about the body's y axis
        rotvec[:, j, 1] = sign * 0.5 * np.sin(phase)
    rotvec[:, 4, 1] = 0.6 * np.clip(np.sin(phase), 0, None)  # knees
    rotvec[:, 5, 1] = 0.6 * np.clip(-np.sin(phase), 0, None)
    rotvec[:, 16, 0] = -1.2  # arms down from the T-pose
    rotvec[:, 17, 0] = 1.2
    quats = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_quat(scalar_first=True).reshape(steps + 1, NUM_JOINTS, 4)
    return motion_from_pose(root, quats, dt=1.0 / FPS)


def synthetic_episode(room_seed: int, index: int) -> Episode:
    """One episode in the layout ``dreamgym collect`` writes: the agent walks, the partner strolls."""
    spec = scene.generate_room(room_seed)
    rng = np.random.default_rng(room_seed)
    T = STEPS
    motion = walking_motion(spec.agent_pos, spec.agent_yaw, T, 0.9, index)
    partner = walking_motion(spec.partner_pos, spec.partner_yaw, T, 0.3, index + 1)
    ego = np.zeros((T + 1, 3, RESOLUTION, RESOLUTION), np.uint8)
    for t in range(T + 1):  # a bar sweeping across the image, so every frame differs
        ego[t, 2] = 90
        ego[t, 0, :, (t * 3) % RESOLUTION] = 250
    occupancy = np.zeros((T + 1, *OCC_SHAPE), np.uint8)
    occupancy[:, :4, 0, :] = 1  # a wall ahead-right of the grid
    occupancy[:, :2, 20:22, 10:12] = 2  # a prop
    for t in range(T + 1):
        occupancy[t, :6, 16 + t // 4, 16] = 3  # the partner, drifting
    qpos = np.zeros((T + 1, NQ), np.float32)
    for k, adr in enumerate(PROP_QPOS):
        qpos[:, adr : adr + 2] = spec.prop_pos[k]
        qpos[:, adr + 2] = 0.2
        qpos[:, adr + 3] = 1.0  # unit quaternion
    obs = {
        "ego_rgb": ego,
        "ego_depth": np.full((T + 1, 1, RESOLUTION, RESOLUTION), 3.0, np.float32),
        "motion": motion,
        "occupancy": occupancy,
        "partner_motion": partner,
        "instruction": np.full(T + 1, 24, np.int64),
        "task_obs": np.zeros((T + 1, 8), np.float32),
    }
    actions = np.tile(np.array([0.8, 0, 0, 0, 0, 0], np.float32), (T, 1))
    actions[:, 2] = rng.uniform(-0.2, 0.2, T)
    attrs = {
        "key": f"r0-w{index}-e0",
        "task": "social",
        "instruction": 24,
        "instruction_text": "greet the person",
        "room_seed": room_seed,
        "behaviour": "expert",
        "partner_behaviour": "walk",
        "utterance": "",
        "success": False,
        "terminated": False,
        "truncated": True,
        "cut": False,
        "split": "heldout" if room_seed == 3 else "train",
    }
    zeros = np.zeros(T, bool)
    return Episode(obs, actions, rng.normal(size=T).astype(np.float32), zeros, zeros.copy(), qpos, np.zeros((T + 1, NV), np.float32), attrs)


def write_tiny_dataset(root: Path) -> Path:
    """A two-episode dataset written with the rollouts writer, exactly as ``dreamgym collect`` lays it out."""
    root.mkdir(parents=True)
    space = {
        "ego_rgb": {"shape": [3, RESOLUTION, RESOLUTION], "dtype": "uint8"},
        "ego_depth": {"shape": [1, RESOLUTION, RESOLUTION], "dtype": "float32"},
        "motion": {"shape": [227], "dtype": "float32"},
        "occupancy": {"shape": list(OCC_SHAPE), "dtype": "uint8"},
        "partner_motion": {"shape": [227], "dtype": "float32"},
        "instruction": {"shape": [], "dtype": "int64"},
        "task_obs": {"shape": [8], "dtype": "float32"},
    }
    env = {
        "env_id": "dreamgym/EgoRoomVec-v0",
        "task": "social",
        "resolution": [RESOLUTION, RESOLUTION],
        "obs_keys": list(space),
        "observation_space": space,
        "control_dt": 1.0 / FPS,
        "nq": NQ,
        "nv": NV,
        "occupancy": {
            "size_xyz": [OCC_SHAPE[1], OCC_SHAPE[2], OCC_SHAPE[0]],
            "voxel": 0.25,
            "classes": ["free", "static", "movable", "partner", "agent"],
        },
    }
    manifest = Manifest.new(root, env, {"task": "social"}, heldout_fraction=0.5)
    episodes = [(i, synthetic_episode(seed, i)) for i, seed in enumerate(ROOM_SEEDS)]
    manifest.shards.append(write_shard(root, manifest.next_shard_name(), episodes, env))
    manifest.save()
    return root


def save_tiny_world_model(directory: Path, data: Path) -> Path:
    """A small randomly initialised world model for the dataset's resolution, its statistics fitted."""
    from dreamgym.rollouts.loader import WindowDataset
    from dreamgym.worldmodel.data import collate
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    cfg = WorldModelConfig(
        resolution=RESOLUTION,
        data_resolution=RESOLUTION,
        context=CONTEXT,
        frame_channels=[8, 16],
        occupancy_channels=[8, 16],
        dim=32,
        depth=1,
        heads=2,
        grid_tokens=2,
        reward_hidden=32,
        groups=4,
    )
    model = WorldModel(cfg)
    windows = WindowDataset(
        data, context=CONTEXT, horizon=1, split="all", keys=["ego_rgb", "ego_depth", "motion", "partner_motion", "occupancy", "qpos"]
    )
    model.norm.fit([collate([windows[i] for i in range(len(windows))])], RESOLUTION, True)
    windows.close()
    return model.save_pretrained(directory)


def write_run(folder: Path, data: Path, checkpoint: Path) -> Path:
    """An eval-wm run folder as far as the viewer reads it: run_info.json naming data and checkpoint."""
    folder.mkdir(parents=True)
    (folder / "run_info.json").write_text(json.dumps({"checkpoint": str(checkpoint), "data": str(data), "episodes": 1}))
    (folder / "metrics.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("viewer") / "data")


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_dataset: Path, tmp_path_factory) -> Path:
    return save_tiny_world_model(tmp_path_factory.mktemp("viewer") / "wm", tiny_dataset)


@pytest.fixture(scope="module")
def run_bundle(tiny_dataset: Path, tiny_checkpoint: Path, tmp_path_factory) -> Path:
    """The bundle of an eval-wm run: held-out episodes, real and dreamed."""
    torch.set_num_threads(1)
    run = write_run(tmp_path_factory.mktemp("viewer") / "run", tiny_dataset, tiny_checkpoint)
    resolved = resolve_bundle(run, split="auto", dream_steps=DREAM_STEPS, num_steps=1, progress=False, log=lambda s: None)
    assert resolved.path == run / "viewer" and not resolved.temporary
    return resolved.path


# ---------------------------------------------------------------------------------------- bundles
def test_bundle_holds_real_and_dream_in_the_viewer_frame(run_bundle: Path, tiny_dataset: Path) -> None:
    bundle = Bundle.load(run_bundle)
    index = bundle.index
    assert index["fps"] == FPS and index["occupancy"]["shape"] == list(OCC_SHAPE)
    assert [e["name"] for e in bundle.episodes] == ["episode_000001"]  # the run's held-out room only
    entry = bundle.episodes[0]
    assert entry["instruction"] == "greet the person" and entry["room_seed"] == 3 and entry["room"]["seed"] == 3
    real, dream = entry["streams"]["real"], entry["streams"]["dream"]
    assert real["frames"] == STEPS + 1 and real["dream_start"] is None
    assert dream["frames"] == CONTEXT + DREAM_STEPS and dream["dream_start"] == CONTEXT

    source = synthetic_episode(3, 1)
    joints = bundle.array(entry, "real", "agent_joints")
    assert joints.shape == (STEPS + 1, NUM_JOINTS, 3) and joints.dtype == np.float32
    np.testing.assert_allclose(joints, motion_to_smplx(source.observations["motion"]).joints, atol=1e-5)
    # the viewer frame is y up: the pelvis stands at its height; x, z are MuJoCo's y, x
    root = bundle.array(entry, "real", "agent_root")
    np.testing.assert_allclose(root[:, :3], source.observations["motion"][:, :3] @ SMPLX_FROM_MUJOCO.T, atol=1e-5)
    assert abs(root[0, 1] - PELVIS_HEIGHT) < 1e-5
    np.testing.assert_allclose(root[0, 3], scene.generate_room(3).agent_yaw, atol=1e-5)
    ego = bundle.array(entry, "real", "ego_rgb")
    assert ego.shape == (STEPS + 1, RESOLUTION, RESOLUTION, 3)
    np.testing.assert_array_equal(ego, source.observations["ego_rgb"].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(bundle.array(entry, "real", "occupancy"), source.observations["occupancy"])
    props = bundle.array(entry, "real", "props")
    np.testing.assert_allclose(props[0, 0], [scene.generate_room(3).prop_pos[0][1], 0.2, scene.generate_room(3).prop_pos[0][0]], atol=1e-6)

    # the dream repeats the real context, then differs; every dreamed array is finite and shaped
    dreamed = bundle.array(entry, "dream", "agent_motion")
    np.testing.assert_array_equal(dreamed[:CONTEXT], source.observations["motion"][:CONTEXT])
    assert np.isfinite(dreamed).all() and not np.allclose(dreamed[CONTEXT:], source.observations["motion"][CONTEXT : CONTEXT + DREAM_STEPS])
    for key, shape in (
        ("agent_joints", (NUM_JOINTS, 3)),
        ("partner_joints", (NUM_JOINTS, 3)),
        ("occupancy", OCC_SHAPE),
        ("ego_rgb", (RESOLUTION, RESOLUTION, 3)),
        ("props", (4, 3)),
    ):
        assert bundle.array(entry, "dream", key).shape == (CONTEXT + DREAM_STEPS, *shape)


def test_bundle_is_reused_when_built_the_same_way(run_bundle: Path) -> None:
    stamp = (run_bundle / "viewer.json").stat().st_mtime_ns
    messages: list[str] = []
    again = resolve_bundle(run_bundle.parent, split="auto", dream_steps=DREAM_STEPS, num_steps=1, progress=False, log=messages.append)
    assert again.path == run_bundle and (run_bundle / "viewer.json").stat().st_mtime_ns == stamp
    assert any("reusing" in m for m in messages)
    assert resolve_bundle(run_bundle).path == run_bundle  # a bundle is served as it is


def test_dataset_without_a_model_is_real_only(tiny_dataset: Path, tmp_path: Path) -> None:
    resolved = resolve_bundle(tiny_dataset, checkpoint="none", out=str(tmp_path / "b"), progress=False, log=lambda s: None)
    bundle = Bundle.load(resolved.path)
    assert [e["name"] for e in bundle.episodes] == ["episode_000000", "episode_000001"]
    assert all(set(e["streams"]) == {"real"} for e in bundle.episodes) and bundle.index["model"] is None


def test_mismatched_checkpoint_names_both(tiny_dataset: Path, tmp_path: Path) -> None:
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    WorldModel(
        WorldModelConfig(
            resolution=16,
            data_resolution=32,
            context=2,
            frame_channels=[8, 16],
            occupancy_channels=[8, 16],
            dim=32,
            depth=1,
            heads=2,
            grid_tokens=2,
            reward_hidden=32,
            groups=4,
        )
    ).save_pretrained(tmp_path / "wm32")
    with pytest.raises(ValueError, match=r"wm32.*32x32.*data.*16x16"):
        resolve_bundle(tiny_dataset, checkpoint=str(tmp_path / "wm32"), out=str(tmp_path / "b"), progress=False, log=lambda s: None)
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="not a dataset"):
        resolve_bundle(tmp_path)


# ---------------------------------------------------------------------------------------- server
def get(port: int, path: str, host: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    """A raw GET: the path is sent exactly as given (no client-side normalisation of '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{port}")
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server(run_bundle: Path):
    secret = run_bundle.parent / "secret.txt"
    secret.write_text("outside the bundle")
    (run_bundle / "escape").symlink_to(secret)
    with ViewerServer(run_bundle, port=0) as s:
        yield s


def test_server_serves_the_page_the_bundle_and_three(server: ViewerServer) -> None:
    assert server._server.server_address[0] == "127.0.0.1"  # loopback only
    status, body, headers = get(server.port, "/")
    assert status == 200 and b'<script type="module" src="web/viewer.js">' in body and headers["Content-Type"].startswith("text/html")
    status, body, headers = get(server.port, "/bundle/viewer.json")
    assert status == 200 and json.loads(body)["format"] == "dreamgym-viewer"
    status, body, headers = get(server.port, "/web/vendor/three/three.module.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript") and b"three.core.js" in body
    status, body, _ = get(server.port, "/bundle/episodes/episode_000001/real.agent_joints.bin")
    assert status == 200 and len(body) == (STEPS + 1) * NUM_JOINTS * 3 * 4
    assert get(server.port, "/bundle/nothing.json")[0] == 404
    assert get(server.port, "/elsewhere")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/bundle/../secret.txt",
        "/bundle/../../../etc/passwd",
        "/web/../../viewer/bundle.py",
        "/bundle/%2e%2e/secret.txt",
        "/bundle/%2E%2E%2Fsecret.txt",
        "/bundle/..%2fsecret.txt",
        "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/bundle/%252e%252e/secret.txt",
        "/bundle/..%5csecret.txt",
        "/bundle/..\\secret.txt",
        "/bundle//etc/passwd",
        "/bundle/%2fetc%2fpasswd",
        "/bundle/escape",
        "/bundle/./../secret.txt",
        "/bundle/episodes/../../secret.txt",
        "/web/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
        "/bundle/%00/secret.txt",
    ],
)
def test_server_refuses_paths_outside_its_folders(server: ViewerServer, path: str) -> None:
    status, body, _ = get(server.port, path)
    assert status in (403, 404), (path, status)
    assert b"outside the bundle" not in body and b"root:" not in body and b"[project]" not in body


def test_server_refuses_foreign_host_names(server: ViewerServer) -> None:
    assert get(server.port, "/", host="attacker.example")[0] == 403
    assert get(server.port, "/", host=f"localhost:{server.port}")[0] == 200


def test_taken_port_is_reported(run_bundle: Path) -> None:
    from dreamgym.app.cli import main

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            ViewerServer(run_bundle, port=port)
        with pytest.raises(SystemExit, match=f"port {port} on 127.0.0.1 is already in use.*port="):
            main(["view", str(run_bundle), f"port={port}"])


# ---------------------------------------------------------------------------------------- browser
AGENT_RGB = np.array(scene.AGENT_RGBA[:3])
PARTNER_RGB = np.array(scene.PARTNER_RGBA[:3])


def colour_share(img: np.ndarray, points: list, rgb: np.ndarray, radius: int = 3) -> float:
    """Share of the visible ``points`` near which some pixel has the hue of ``rgb`` (shaded: any
    brightness, the same proportions within a tolerance)."""
    target = rgb / rgb.sum()
    hits = seen = 0
    for x, y, visible in points:
        x, y = int(round(x)), int(round(y))
        if not visible or not (radius <= x < img.shape[1] - radius and radius <= y < img.shape[0] - radius):
            continue
        seen += 1
        patch = img[y - radius : y + radius + 1, x - radius : x + radius + 1].reshape(-1, 3).astype(float)
        bright = patch.sum(1) > 60
        chroma = patch[bright] / patch[bright].sum(1, keepdims=True)
        hits += bool((np.abs(chroma - target).max(1) < 0.07).any())
    assert seen >= 10, f"only {seen} joints on screen"
    return hits / seen


def decode(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="module")
def browser(server: ViewerServer):
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the browser test needs it")
    with HeadlessChromium(width=1280, height=720, timeout=120) as b:
        yield b


def test_page_draws_the_bodies_and_scrubbing_changes_the_frame(browser: HeadlessChromium, server: ViewerServer, tmp_path: Path) -> None:
    browser.open(server.url)
    browser.wait_for("window.__dreamgymReady === true || !!window.__dreamgymError", timeout=180)
    assert browser.evaluate("window.__dreamgymError || null") is None, browser.console
    assert browser.evaluate("window.__dreamgym.layout") == "split"
    assert browser.evaluate("window.__dreamgym.frameCount") == STEPS + 1
    vr = browser.evaluate("document.getElementById('VRButton') && document.getElementById('VRButton').textContent")
    assert vr in ("ENTER VR", "VR NOT SUPPORTED", "VR NOT ALLOWED", "WEBXR NOT AVAILABLE"), (
        vr
    )  # WebXR's button, whatever this machine offers

    first = browser.screenshot(tmp_path / "frame0.png")
    img0 = decode(first)
    points0 = browser.evaluate("window.__dreamgym.screenPoints()")
    for pane in ("real", "dream"):
        assert colour_share(img0, points0[pane]["agent"], AGENT_RGB) > 0.5, pane
        assert colour_share(img0, points0[pane]["partner"], PARTNER_RGB) > 0.5, pane
    # not everything is agent-coloured: the partner's joints are not blue
    assert colour_share(img0, points0["real"]["partner"], AGENT_RGB) < 0.2

    # scrub with the timeline slider, as a person would
    late = STEPS
    browser.evaluate(
        f"(() => {{ const s = document.getElementById('scrub'); s.value = '{late}'; s.dispatchEvent(new Event('input')); }})()"
    )
    browser.wait_for(f"window.__dreamgym.renderedFrame === {late}", timeout=60)
    img1 = decode(browser.screenshot(tmp_path / f"frame{late}.png"))
    points1 = browser.evaluate("window.__dreamgym.screenPoints()")
    assert colour_share(img1, points1["real"]["agent"], AGENT_RGB) > 0.5
    changed = np.abs(img1.astype(int) - img0.astype(int)).max(2) > 30
    assert changed.mean() > 0.01, f"only {changed.mean():.4f} of the pixels changed after scrubbing"
    time_label = browser.evaluate("document.getElementById('time').textContent")
    assert f"t = {late} / {STEPS}" in time_label and "dream ended" in time_label

    # overlay: one pane, the dream's bodies as ghosts over the real scene
    browser.evaluate("window.__dreamgym.setLayout('overlay')")
    browser.wait_for("window.__dreamgym.layout === 'overlay'", timeout=30)
    browser.evaluate("window.__dreamgym.setFrame(3)")
    browser.wait_for("window.__dreamgym.renderedFrame === 3", timeout=60)
    points = browser.evaluate("window.__dreamgym.screenPoints()")
    assert set(points) == {"real", "dream"}
    assert colour_share(decode(browser.screenshot(tmp_path / "overlay.png")), points["real"]["agent"], AGENT_RGB) > 0.5
    assert not [c for c in browser.console if c.startswith("exception")], browser.console


# ---------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_collected_dataset_exports_and_views(tmp_path: Path) -> None:
    """`dreamgym collect` at low resolution, then `export` and `view` (headless screenshot) of it,
    and of an eval-wm-style run dreaming it with a small world model."""
    from PIL import Image

    from dreamgym.app.cli import main

    data = tmp_path / "data"
    assert (
        main(
            [
                "collect",
                f"out={data}",
                "task=social",
                "steps=32",
                "num_envs=2",
                "resolution=16",
                "round_steps=16",
                "heldout_fraction=0.5",
                "progress=false",
            ]
        )
        == 0
    )
    assert main(["export", f"data={data}", f"out={tmp_path / 'export'}", "progress=false"]) == 0
    index = json.loads((tmp_path / "export" / "export.json").read_text())
    assert len(index["episodes"]) == 2 and all(set(e) == {"agent", "partner"} for e in index["episodes"].values())
    for name in index["episodes"]:
        npz = np.load(tmp_path / "export" / name / "agent.npz")
        assert npz["poses"].shape == (17, 165) and np.isfinite(npz["poses"]).all()

    run = write_run(tmp_path / "run", data, save_tiny_world_model(tmp_path / "wm", data))
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the screenshot needs it")
    shot = tmp_path / "view.png"
    assert (
        main(["view", str(run), "port=0", "split=all", "dream_steps=6", "num_steps=1", "progress=false", f"screenshot={shot}", "frame=5"])
        == 0
    )
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (720, 1280, 3) and img.std() > 10
    bundle = Bundle.load(run / "viewer")
    assert len(bundle.episodes) == 2 and all("dream" in e["streams"] for e in bundle.episodes)
