"""Viewer bundles: real and dreamed sequences of a few episodes, as one JSON index plus raw arrays.

A bundle is a folder the viewer's page reads over HTTP (and ``dreamgym export`` reads to export
dreamed motion)::

    <bundle>/viewer.json                       the index (below)
    <bundle>/episodes/<name>/<stream>.<key>.bin  one raw little-endian array per file

``viewer.json`` holds ``format``/``format_version``, ``fps``, the skeleton (joint names and
parents), colours, the occupancy grid (shape (Z, X, Y), voxel size, class names), where the
bundle came from (``source``: data, checkpoint and the settings it was built with), the
``sampler`` its dream was sampled with (None without a dream), ``notes``, and per episode its task,
instruction, room (floor, walls, furniture, mat, props, in the viewer frame) and its streams,
``real`` and, with a world model, ``dream``. A stream lists its arrays as ``{"file", "dtype",
"shape"}``; T below is the stream's frame count:

==================  ==============  ===================================================================
key                 shape, dtype    meaning
==================  ==============  ===================================================================
agent_joints        (T, 22, 3) f32  joint positions, forward kinematics of the SMPL-X parameters
partner_joints      (T, 22, 3) f32  the same for the partner
agent_root          (T, 4) f32      pelvis position (3) and heading (rad, about the vertical axis):
                                    where the agent-centred occupancy grid sits
props               (T, 4, 3) f32   prop centres
occupancy           (T, Z, X, Y) u8 class per voxel, the agent's heading frame (envs.occupancy)
ego_rgb             (T, H, W, 3) u8 the ego camera
agent_motion        (T, 227) f32    the motion vectors themselves (MuJoCo frame), for exports
partner_motion      (T, 227) f32
==================  ==============  ===================================================================

The viewer frame is SMPL-X's and three.js's: x left, y up, z forward, metres; a MuJoCo vector
(x, y, z) is (y, z, x) there (``skeleton.SMPLX_FROM_MUJOCO``), so the skeletons are exactly the
joints of the .npz/.bvh/.glb exports.

**The dream.** With a world model of context K, the dream of an episode starts from the real
observations 0..K-1 and rolls out autoregressively with the episode's recorded actions
(``WorldModel.rollout``), for ``dream_steps`` steps or to the episode's end. The dream stream
repeats the real context rows, so its row t is the same time step as the real stream's row t;
``dream_start`` (= K) is its first dreamed row. Episodes dreaming the same number of steps roll
out together (batch first); the noise is seeded (``seed``) per batch. A dream whose motion turns
non-finite is cut at the last finite step (and a note says so).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...envs.skeleton import JOINT_NAMES, PARENTS, SMPLX_FROM_MUJOCO
from ..episodes import BUNDLE_INDEX, DatasetEpisode, dataset_fps, detect_source, iter_dataset_episodes
from ..smplx_params import motion_to_smplx

FORMAT = "dreamgym-viewer"
FORMAT_VERSION = 1
DREAM_KEYS = ("motion", "partner_motion", "props", "ego_rgb", "ego_depth", "occupancy")
# Occupancy class colours (free, static, movable, partner, agent): the bodies' own hues for the
# bodies' voxels, so a dreamed partner's voxels read as the partner.
OCCUPANCY_RGB = ((0.93, 0.93, 0.93), (0.55, 0.55, 0.58), (0.95, 0.6, 0.15), (0.98, 0.55, 0.7), (0.35, 0.65, 1.0))


@dataclass
class BundleSettings:
    """How a bundle is built; recorded in ``viewer.json`` so a cached bundle is reused only when
    it was built the same way."""

    data: str
    checkpoint: str | None = None
    split: str = "all"
    episodes: list[int] | None = None
    max_episodes: int | None = 8
    dream_steps: int | None = None  # None: to the end of each episode
    num_steps: int | None = None  # denoising steps per dreamed step (None: the model's own sampler)
    init_noise: float | None = None  # the sampler's initial-noise scale (None: the model's own)
    seed: int = 0

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = str(Path(self.data).resolve())
        d["checkpoint"] = str(Path(self.checkpoint).resolve()) if self.checkpoint else None
        return d


# ---------------------------------------------------------------------------------------- frames
def to_viewer(v: np.ndarray) -> np.ndarray:
    """MuJoCo-frame vectors (..., 3) in the viewer frame (x left, y up, z forward)."""
    return np.asarray(v, np.float64) @ SMPLX_FROM_MUJOCO.T


def heading(root_quat: np.ndarray) -> np.ndarray:
    """Yaw (rad) about the vertical axis of (..., 4) root quaternions (w, x, y, z), MuJoCo frame.
    The same angle turns the viewer frame about its y axis (the frames differ by a cyclic swap)."""
    w, x, y, z = np.moveaxis(np.asarray(root_quat, np.float64), -1, 0)
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def stream_arrays(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of one stream (see the module docstring) from observations with a time axis:
    ``motion`` and ``partner_motion`` (T, 227) are required; ``props`` (T, 4, 3),
    ``occupancy`` (T, Z, X, Y) and ``ego_rgb`` (T, 3, H, W) are used when present."""
    motion = np.asarray(obs["motion"], np.float32)
    partner = np.asarray(obs["partner_motion"], np.float32)
    root = np.concatenate((to_viewer(motion[:, 0:3]), heading(motion[:, 3:7])[:, None]), axis=1)
    out = {
        "agent_joints": motion_to_smplx(motion).joints,
        "partner_joints": motion_to_smplx(partner).joints,
        "agent_root": root,
        "agent_motion": motion,
        "partner_motion": partner,
    }
    if "props" in obs:
        out["props"] = to_viewer(obs["props"])
    if "occupancy" in obs:
        out["occupancy"] = np.asarray(obs["occupancy"], np.uint8)
    if "ego_rgb" in obs:
        out["ego_rgb"] = np.ascontiguousarray(np.asarray(obs["ego_rgb"], np.uint8).transpose(0, 2, 3, 1))
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in out.items()}


def room_description(room_seed: int) -> dict[str, Any]:
    """The room of ``room_seed`` (``envs.scene.generate_room``) in the viewer frame: boxes as
    centre and half sizes, colours as RGB in [0, 1]."""
    from ...envs import scene

    spec = scene.generate_room(int(room_seed))
    hx, hy = (float(v) for v in spec.half_extent)
    t, h = scene.WALL_THICK, scene.WALL_HEIGHT / 2

    def box(centre, half, rgb) -> dict[str, Any]:
        return {
            "centre": to_viewer(centre).round(4).tolist(),
            "half": to_viewer(half).round(4).tolist(),
            "rgb": [round(float(c), 3) for c in rgb[:3]],
        }

    walls = [
        ((hx + t, 0, h), (t, hy + 2 * t, h)),
        ((-hx - t, 0, h), (t, hy + 2 * t, h)),
        ((0, hy + t, h), (hx + 2 * t, t, h)),
        ((0, -hy - t, h), (hx + 2 * t, t, h)),
    ]
    props = []
    for i, shape in enumerate(scene.PROP_SHAPES):
        colour = scene.COLOUR_NAMES[int(spec.prop_colour[i])]
        size = scene.PROP_BOX_HALF if shape == "box" else scene.PROP_BALL_RADIUS
        props.append({"name": spec.prop_name(i), "shape": shape, "size": size, "rgb": list(scene.COLOURS[colour][:3])})
    return {
        "seed": int(room_seed),
        "floor": box((0, 0, -0.005), (hx, hy, 0.005), spec.floor_rgba),
        "walls": [box(c, s, spec.wall_rgba) for c, s in walls],
        "furniture": [box(c, s, rgb) for c, s, rgb in zip(spec.furniture_pos, spec.furniture_size, spec.furniture_rgba)],
        "mat": box((*spec.mat_pos, 0.004), (scene.MAT_HALF, scene.MAT_HALF, 0.004), scene.MAT_RGBA),
        "props": props,
    }


# ---------------------------------------------------------------------------------------- dream
@dataclass
class Dream:
    """The dream of one episode: observations with a time axis (the K real context rows, then the
    dreamed rows), ``start`` = K (the first dreamed row), and notes (or only a note, ``obs`` None,
    when the episode could not be dreamed)."""

    obs: dict[str, np.ndarray] | None
    start: int
    notes: list[str]


def dream_episodes(
    model: Any,
    episodes: Sequence[DatasetEpisode],
    steps: int | None = None,
    num_steps: int | None = None,
    seed: int = 0,
    modalities: Sequence[str] | None = None,
    init_noise: float | None = None,
) -> list[Dream]:
    """Dream each episode from its first K observations with its recorded actions.

    ``steps``: dreamed steps per episode (None: to its end). ``num_steps`` and ``init_noise``
    override the model's own sampler (None: as it samples). Episodes that dream the same number of
    steps roll out together as one batch (B first), which is much faster than one at a time.
    """
    import torch

    K = int(model.config.context)
    t0 = K - 1  # last context row
    mods = list(modalities or model.output_keys())
    results: list[Dream | None] = [None] * len(episodes)
    groups: dict[tuple, list[int]] = {}
    for i, ep in enumerate(episodes):
        if ep.steps < K:
            results[i] = Dream(
                None, K, [f"{ep.name} has {ep.steps} steps; the world model needs {K} context observations and one action to dream"]
            )
            continue
        H = ep.steps - t0 if steps is None else max(1, min(int(steps), ep.steps - t0))
        has_instruction = int(ep.attrs.get("instruction", -1)) >= 0
        groups.setdefault((H, has_instruction), []).append(i)
    for (H, has_instruction), members in groups.items():
        eps = [episodes[i] for i in members]
        gen_mods = [m for m in mods if all(m in e.obs for e in eps)]
        need = {"motion", "partner_motion", "props"} | set(gen_mods)
        if "ego_rgb" in need and getattr(model.config, "ego_depth", False):
            need.add("ego_depth")
        missing = sorted(k for k in need if not all(k in e.obs for e in eps))
        if missing:
            raise ValueError(f"episodes {[e.name for e in eps]} lack {missing}, which the world model needs as context")
        device = model.device
        context = {k: torch.from_numpy(np.stack([e.obs[k][:K] for e in eps])).to(device) for k in sorted(need)}
        if has_instruction:
            context["instruction"] = torch.tensor([int(e.attrs["instruction"]) for e in eps], device=device)
        actions = torch.from_numpy(np.stack([np.asarray(e.actions[: t0 + H], np.float32) for e in eps])).to(device)
        generator = torch.Generator(device=device).manual_seed(int(seed))
        extra = {}
        if getattr(model.config, "partner_actions", False) and all("partner_actions" in e.obs for e in eps):
            # the recorded partner's commands (derived by the dataset reader from its room's script)
            extra["partner_actions"] = torch.from_numpy(np.stack([e.obs["partner_actions"][: t0 + H] for e in eps])).to(device)
        out = model.rollout(
            context,
            actions[:, t0 : t0 + H],
            past_actions=actions[:, :t0],
            num_steps=num_steps,
            init_noise=init_noise,
            modalities=gen_mods,
            generator=generator,
            **extra,
        )
        for b, (i, ep) in enumerate(zip(members, eps)):
            dreamed = {k: out[k][b].cpu().numpy() for k in need if k in out}
            notes = []
            finite = np.isfinite(dreamed["motion"]).all(1) & np.isfinite(dreamed["partner_motion"]).all(1)
            if not finite.all():
                keep = int(np.argmin(finite))
                notes.append(f"{ep.name}: the dreamed motion is not finite from dreamed step {keep + 1}; the dream is cut there")
                dreamed = {k: v[:keep] for k, v in dreamed.items()}
            obs = {k: np.concatenate((ep.obs[k][:K], dreamed[k].astype(ep.obs[k].dtype))) for k in dreamed}
            results[i] = Dream(obs, K, notes)
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------- writing
def _write_stream(root: Path, episode: str, stream: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    folder = root / "episodes" / episode
    folder.mkdir(parents=True, exist_ok=True)
    described = {}
    for key, arr in arrays.items():
        arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<")))
        rel = f"episodes/{episode}/{stream}.{key}.bin"
        arr.tofile(root / rel)
        described[key] = {"file": rel, "dtype": arr.dtype.name, "shape": list(arr.shape)}
    frames = int(next(iter(arrays.values())).shape[0])
    return {"frames": frames, "arrays": described}


def _episode_entry(ep: DatasetEpisode) -> dict[str, Any]:
    a = ep.attrs
    return {
        "name": ep.name,
        "id": ep.id,
        "steps": ep.steps,
        "task": a.get("task", ""),
        "instruction": a.get("instruction_text", ""),
        "behaviour": a.get("behaviour", ""),
        "partner_behaviour": a.get("partner_behaviour", ""),
        "utterance": a.get("utterance", ""),
        "success": bool(a.get("success", False)),
        "room_seed": int(a.get("room_seed", -1)),
        "split": a.get("split", ""),
    }


def build_bundle(
    out: str | Path,
    settings: BundleSettings,
    model: Any | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    notes: Sequence[str] = (),
    batch_size: int = 8,
) -> Path:
    """Build a viewer bundle of the dataset ``settings.data`` into ``out`` (replaced atomically).

    ``model``: a ``WorldModel`` to dream each episode with (None: real episodes only); episodes
    are read and dreamed ``batch_size`` at a time. ``notes``: shown on the page beside those the
    build adds. Returns ``out``.
    """
    from tqdm import tqdm

    from ...rollouts.dataset import Manifest, require_room

    out = Path(out)
    initial_notes = list(notes)
    data = Path(settings.data)
    require_room(data, "view")
    env = Manifest.load(data).data["env"]
    if model is not None:
        _check_model_fits(model, env, settings)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        episodes, notes = [], list(notes)
        keys = [k for k in ("motion", "partner_motion", "occupancy", "ego_rgb", "ego_depth") if k in env["obs_keys"]]
        if model is None:
            keys = [k for k in keys if k != "ego_depth"]
        elif getattr(model.config, "partner_actions", False) and env.get("task") and {"motion", "partner_motion"} <= set(keys):
            keys.append("partner_actions")
        chosen = iter_dataset_episodes(data, keys, settings.split, settings.episodes, settings.max_episodes, with_props=True)
        bar = tqdm(
            desc="viewer bundle",
            unit="episode",
            disable=not progress,
            total=settings.max_episodes if settings.episodes is None else len(settings.episodes),
        )
        while batch := list(itertools.islice(chosen, max(1, int(batch_size)))):
            dreams = [None] * len(batch)
            if model is not None:
                dreams = dream_episodes(model, batch, settings.dream_steps, settings.num_steps, settings.seed, None, settings.init_noise)
            for ep, dream in zip(batch, dreams):
                entry = _episode_entry(ep)
                entry["room"] = room_description(entry["room_seed"]) if entry["room_seed"] >= 0 else None
                real = _write_stream(tmp, ep.name, "real", stream_arrays(ep.obs))
                real["dream_start"] = None
                entry["streams"] = {"real": real}
                if dream is not None:
                    notes += dream.notes
                    if dream.obs is not None and dream.obs["motion"].shape[0] > dream.start:
                        written = _write_stream(tmp, ep.name, "dream", stream_arrays(dream.obs))
                        written["dream_start"] = dream.start
                        entry["streams"]["dream"] = written
                episodes.append(entry)
                bar.update(1)
        bar.close()
        if not episodes:
            raise ValueError(
                f"dataset {data} has no {settings.split} episodes to show"
                + (f" among ids {settings.episodes}" if settings.episodes else "")
            )
        occ = env.get("occupancy") or {}
        X, Y, Z = (int(s) for s in occ.get("size_xyz", [32, 32, 8]))
        index = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fps": dataset_fps(data),
            "byte_order": "little",
            "frame": "x left, y up, z forward, metres (SMPL-X and three.js); MuJoCo (x, y, z) -> (y, z, x)",
            "skeleton": {"names": list(JOINT_NAMES), "parents": list(PARENTS)},
            "colours": _colours(),
            "occupancy": {
                "shape": [Z, X, Y],  # as stored: (Z, X, Y)
                "voxel": float(occ.get("voxel", 0.25)),
                "classes": list(occ.get("classes", ["free", "static", "movable", "partner", "agent"])),
            },
            "source": settings.key(),
            "model": None if model is None else {"context": int(model.config.context), "modalities": list(model.output_keys())},
            "sampler": dream_sampler(model, settings),
            "notes": notes,
            "episodes": episodes,
        }
        (tmp / BUNDLE_INDEX).write_text(json.dumps(index, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for n in notes[len(initial_notes) :]:
        log(f"note: {n}")
    return out


def dream_sampler(model: Any | None, settings: BundleSettings) -> dict[str, Any] | None:
    """The sampler ``model`` dreams a bundle of ``settings`` with, JSON-ready (None: no model, or one without a sampler)."""
    pick = getattr(model, "sampler_for", None)
    return pick(None, settings.num_steps, settings.init_noise).to_dict() if callable(pick) else None


def _colours() -> dict[str, Any]:
    from ...envs import scene

    return {"agent": list(scene.AGENT_RGBA[:3]), "partner": list(scene.PARTNER_RGBA[:3]), "occupancy": [list(c) for c in OCCUPANCY_RGB]}


def _check_model_fits(model: Any, env: dict[str, Any], settings: BundleSettings) -> None:
    """Raise ValueError naming the checkpoint and the dataset when the model cannot dream it."""
    cfg = model.config
    ckpt, data = settings.checkpoint or "<model>", settings.data
    mods = model.output_keys()
    lacking = [k for k in mods if k != "props" and k not in env["obs_keys"]]
    if lacking:
        raise ValueError(
            f"checkpoint {ckpt} models {mods} but dataset {data} lacks {lacking}; collect the data with those observation keys"
        )
    if "ego_rgb" in mods:
        res = tuple(int(r) for r in env["resolution"])
        want = (int(cfg.data_resolution),) * 2
        if res != want:
            raise ValueError(
                f"checkpoint {ckpt} expects ego frames at {want[0]}x{want[1]} but dataset {data} "
                f"holds {res[0]}x{res[1]}; view data collected at resolution={want[0]}"
            )
    if "occupancy" in mods:
        X, Y, Z = env["occupancy"]["size_xyz"]
        if [Z, X, Y] != list(cfg.occupancy_shape):
            raise ValueError(
                f"checkpoint {ckpt} expects occupancy {list(cfg.occupancy_shape)} (Z, X, Y) but dataset {data} holds {[Z, X, Y]}"
            )


# ---------------------------------------------------------------------------------------- reading
@dataclass
class Bundle:
    """A viewer bundle on disk: its index and lazy access to its arrays."""

    root: Path
    index: dict[str, Any] = field(repr=False)

    @classmethod
    def load(cls, root: str | Path) -> Bundle:
        root = Path(root)
        path = root / BUNDLE_INDEX
        try:
            index = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{root} is not a viewer bundle: {BUNDLE_INDEX} not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        if index.get("format") != FORMAT:
            raise ValueError(f"{path} has format {index.get('format')!r}, expected {FORMAT!r}")
        if int(index.get("format_version", -1)) > FORMAT_VERSION:
            raise ValueError(f"{path} has format_version {index['format_version']}; this dreamgym reads up to {FORMAT_VERSION}")
        return cls(root, index)

    @property
    def fps(self) -> float:
        return float(self.index["fps"])

    @property
    def episodes(self) -> list[dict[str, Any]]:
        return self.index["episodes"]

    def array(self, episode: dict[str, Any], stream: str, key: str) -> np.ndarray:
        """One array of one stream of ``episode`` (an entry of ``episodes``)."""
        d = episode["streams"][stream]["arrays"][key]
        arr = np.fromfile(self.root / d["file"], dtype=np.dtype(d["dtype"]).newbyteorder("<"))
        expected = math.prod(d["shape"])
        if arr.size != expected:
            raise ValueError(
                f"{self.root / d['file']} holds {arr.size} values, the index says {d['shape']}: the bundle is damaged; rebuild it"
            )
        return arr.reshape(d["shape"])


# ---------------------------------------------------------------------------------------- sources
@dataclass
class Resolved:
    """A bundle ready to serve or export, and whether it is a temporary one to delete after."""

    path: Path
    temporary: bool
    notes: list[str]


def resolve_bundle(
    path: str | Path,
    data: str | None = None,
    checkpoint: str | None = "auto",
    out: str | None = None,
    split: str = "all",
    episodes: Sequence[int] | None = None,
    max_episodes: int | None = 8,
    dream_steps: int | None = None,
    num_steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    rebuild: bool = False,
    dataset_default_dream: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
    init_noise: float | None = None,
) -> Resolved:
    """The viewer bundle for ``path`` (a dataset, an eval-wm run, a checkpoint or a bundle).

    ``checkpoint``: ``auto`` (a run's own checkpoint; for a dataset the embedded default
    ``worldmodel/default`` when it exists, fits the data and ``dataset_default_dream`` is set),
    ``none`` (real episodes only) or a checkpoint path. ``out``: where to write the bundle (default:
    ``<run>/viewer`` for a run, a temporary folder otherwise). ``num_steps``, ``init_noise``: the
    dream's sampler overrides (None: the model's own). A bundle already at the target built with
    the same settings and sampler is reused unless ``rebuild``.
    """
    import tempfile

    src = detect_source(path)
    notes: list[str] = []
    if src.kind == "bundle":
        return Resolved(src.path, False, notes)
    data_path = Path(data).expanduser() if data else src.data
    if data_path is None:
        if src.kind == "run":
            raise ValueError(f"run {src.path} does not name the dataset it evaluated (run_info.json); give data=<dataset dir>")
        raise ValueError(f"{src.path} is a world-model checkpoint: give the episodes to dream with data=<dataset dir>")
    if src.kind == "run" and src.checkpoint is None and checkpoint == "auto":
        raise ValueError(
            f"run {src.path} does not name its checkpoint (run_info.json); give checkpoint=<dir>, "
            "or checkpoint=none for the real episodes only"
        )
    if src.kind == "run" and not (data_path / "manifest.json").is_file():
        raise FileNotFoundError(f"run {src.path} was evaluated on {data_path}, which is not a dataset here; give data=<dataset dir>")
    ckpt, explicit = _choose_checkpoint(checkpoint, src, dataset_default_dream, notes)
    if split == "auto":
        split = "heldout" if src.kind == "run" else "all"
    chosen = list(episodes) if episodes is not None else None
    settings = BundleSettings(str(data_path), ckpt, split, chosen, max_episodes, dream_steps, num_steps, init_noise, seed)
    temporary = False
    if out:
        target = Path(out).expanduser()
    elif src.kind == "run":
        target = src.path / "viewer"
    else:
        target = Path(tempfile.mkdtemp(prefix="dreamgym-view-")) / "bundle"
        temporary = True
    model = None
    if ckpt is not None:
        model = _load_model(ckpt, device)
        if not explicit:  # the embedded default: dream only if it fits this dataset
            from ...rollouts.dataset import Manifest

            try:
                _check_model_fits(model, Manifest.load(data_path).data["env"], settings)
            except ValueError as e:
                notes.append(f"no dream: {e}")
                model = None
                settings.checkpoint = None
    if not rebuild and (target / BUNDLE_INDEX).is_file():  # the sampler too: a checkpoint's sampler.json may change
        try:
            index = Bundle.load(target).index
            if index.get("source") == settings.key() and index.get("sampler") == dream_sampler(model, settings):
                log(f"reusing the viewer bundle {target} (rebuild=true to build it again)")
                return Resolved(target, temporary, notes)
        except ValueError:
            pass  # an unreadable bundle is not reused: it is built again below
    for n in notes:
        log(f"note: {n}")
    log(
        f"building the viewer bundle {target} from {data_path}"
        + (f" dreamed with {ckpt}" if model is not None else " (real episodes only)")
    )
    try:
        build_bundle(target, settings, model, progress=progress, log=log, notes=notes)
    except BaseException:
        if temporary:
            shutil.rmtree(target.parent, ignore_errors=True)
        raise
    return Resolved(target, temporary, notes)


def _choose_checkpoint(checkpoint: str | None, src: Any, dataset_default_dream: bool, notes: list[str]) -> tuple[str | None, bool]:
    """The world model to dream with (or None) and whether it was named explicitly (then it must fit the data)."""
    ckpt: str | None
    explicit = checkpoint not in (None, "auto", "none", "null", "")
    if explicit:
        ckpt = str(checkpoint)
    elif checkpoint in (None, "none", "null", ""):
        ckpt = None
    elif src.checkpoint is not None:
        ckpt = str(src.checkpoint)
        explicit = True  # the run's own model must fit its own data
    elif dataset_default_dream:
        from ...worldmodel.model import CONFIG_NAME, DEFAULT_CHECKPOINT

        if (DEFAULT_CHECKPOINT / CONFIG_NAME).is_file():
            ckpt = str(DEFAULT_CHECKPOINT)
        else:
            ckpt = None
            notes.append(f"no dream: the embedded default world model ({DEFAULT_CHECKPOINT}) is not there; give checkpoint=<dir>")
    else:
        ckpt = None
    return ckpt, explicit


def _load_model(checkpoint: str, device: str):
    from ...worldmodel.model import WorldModel

    return WorldModel.from_pretrained(checkpoint, device=device).eval()


def remove_temporary(resolved: Resolved) -> None:
    """Delete a temporary bundle (and the folder made for it)."""
    if resolved.temporary:
        shutil.rmtree(resolved.path.parent, ignore_errors=True)
