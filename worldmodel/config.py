"""A world model's three configs, split as diffusers splits a model from its scheduler.

- ``ArchitectureConfig``: what the weights were trained as (shapes, branches, EDM's sigma_data and
  sigma_max). Changing a field means retraining. Saved as ``config.json`` beside the weights.
- ``SamplerConfig``: how a dream is sampled and decoded (steps, initial noise, the schedule's
  sigma_min and rho, the props' decoding rules). Changeable without retraining; saved as
  ``sampler.json`` beside the weights.
- ``TrainingConfig``: how ``train-wm`` (and every caller of the one trainer) trains: optimiser,
  batches, the noise levels drawn, loss weights.

Every default is the shipped model's value (``worldmodel/default``), so ``ArchitectureConfig()``
builds the shipped architecture and ``TrainingConfig()`` repeats its training run.

Every field is checked when a config is built, from code or from a file (``from_dict``): its type,
its range, and the rules between fields. A bad value raises ``ConfigError`` (a ``ValueError``) in
one line that names the source, the key, the value and what is allowed.

On disk (format 2 and later) ``config.json`` holds ``format_version`` and the architecture,
``sampler.json`` ``format_version`` and the sampler. ``upgrade`` turns a format-1 ``config.json``
(one file that mixed all three) into the two; ``upgrade_sampler`` gives an older ``sampler.json``
the settings that reproduce how it sampled.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

from . import data as D

# Version of the on-disk layout of config.json / sampler.json. A checkpoint of an older version is
# upgraded on load (``upgrade``); a newer one is refused.
FORMAT_VERSION = 4


class ConfigError(ValueError):
    """A config value that is not allowed: ``<source>: <key> = <value> is invalid (expected <allowed>)``."""

    def __init__(self, source: str, key: str, value: Any, allowed: str):
        self.source, self.key, self.value, self.allowed = source, key, value, allowed
        super().__init__(f"{source}: {key} = {value!r} is invalid (expected {allowed})")


class UnknownKeysError(ValueError):
    """Keys that a config does not have: ``<source>: unknown <what> [...]; allowed: ...``."""

    def __init__(self, source: str, detail: str):
        self.source, self.detail = source, detail
        super().__init__(f"{source}: {detail}")


# ----------------------------------------------------------------------------- the configs
@dataclass
class ArchitectureConfig:
    """Everything that defines a world model's weights (JSON-serialisable)."""

    resolution: int = 32  # ego frames are denoised at resolution x resolution
    data_resolution: int = 32  # the dataset's ego frames (imagine() returns this size)
    context: int = 2  # K context steps
    action_dim: int = 6
    modalities: list[str] = field(default_factory=lambda: list(D.MODALITIES))
    ego_depth: bool = True  # depth as a 4th frame channel
    occupancy_shape: list[int] = field(default_factory=lambda: [8, 32, 32])  # (Z, X, Y)
    occupancy_voxel: float = 0.25  # metres per voxel of the data's grid (``occupancy_warp`` moves the grid by it)
    frame_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    occupancy_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    layers_per_block: int = 1
    groups: int = 8  # GroupNorm groups of the U-Nets (every channel count a multiple of it)
    dim: int = 96  # transformer width, and the embedding width of the U-Nets
    depth: int = 3
    heads: int = 4
    grid_tokens: int = 4  # each U-Net's bottleneck is pooled to grid_tokens^2 tokens
    n_instructions: int = 26
    reward_hidden: int = 256
    # The actions also enter the agent's body tokens directly (a linear path from the command to
    # the root and joint changes), not only through the shared conditioning vector: without it a
    # small model learns to extrapolate the context's motion and ignores turn commands.
    action_tokens: bool = True
    # Frames are predicted relative to the last frame *warped to the next head pose* (``warp``:
    # depth-based reprojection) whenever the next motion is known -- given, or dreamed first in a
    # state-only pass (``imagine`` then runs two passes). Needs ``ego_depth``.
    ego_warp: bool = True
    # The frame branch also reads the dreamed 3-D state drawn into the dreamed head camera
    # (``render``): the next grid (the last one carried to the next bodies) ray-cast into the next
    # head pose as classes and depth, painted from a colour memory of a real frame; where the
    # reprojection leaves a hole, the painted render fills the base. Needs ``ego_warp``,
    # ``occupancy_warp`` and the occupancy modality.
    ego_render: bool = True
    # A deterministic prior for the bodies' next change: an MLP over the whole flattened context
    # regresses the conditional mean of both bodies' normalised changes, and the diffusion denoises
    # the residual around it (the prior is also an input of the body tokens). The token
    # transformer alone underfits fine pose detail (the head's turn, which places the camera).
    # Width of its hidden layers; 0: none.
    state_prior: int = 512
    # A per-prop dynamics network (an MLP shared by the props; hidden width, 0: none): each prop's
    # next displacement from its last displacement and height, its place relative to the agent and
    # the next joints of both bodies (a contact model). Needs ``state_prior`` and ``context`` >= 2.
    props_dynamics: int = 256
    # The egocentric occupancy grid is predicted relative to the last grid *carried into the next
    # heading frame* (``D.warp_occupancy``) whenever the next bodies are known.
    occupancy_warp: bool = True
    # The partner's controller commands (6 floats per step) are a condition: the partner is
    # scripted, and its script is known wherever the model dreams. Without them (a caller that has
    # none) the model runs as trained with ``noise.p_drop_partner_actions``.
    partner_actions: bool = True
    deterministic: bool = False  # true: the MSE-regression twin of the same network (no noise, one step)
    sigma_data: float = 1.0  # EDM preconditioning
    sigma_max: float = 20.0  # the highest noise level trained (the one-step sampler denoises from it)

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)

    @property
    def n_frame_channels(self) -> int:
        return 4 if self.ego_depth else 3

    @property
    def n_occ_channels(self) -> int:
        return self.occupancy_shape[0] * D.N_OCC_CLASSES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> ArchitectureConfig:
        """Build from a mapping (a file's contents); every key and value is checked, naming ``source``."""
        return _from_dict(cls, d, source, "architecture config fields", hint_for=_sampler_field_names())


PRECISIONS = ("auto", "float32", "bfloat16")  # a sampler's network number formats ("auto": see SamplerConfig)


@dataclass
class SamplerConfig:
    """How a dream is sampled and decoded; changes no weights."""

    num_steps: int = 2  # denoising steps of the state pass per dreamed step (1 with init_noise 0: the mean)
    # Scale of the initial noise. 1: a diffusion sample. 0 with one step: D(0; sigma_max), the
    # network's estimate of the conditional mean -- the lowest expected error per step, and what a
    # reward-maximising RL user usually wants.
    init_noise: float = 1.0
    # the schedule's lowest noise level (Karras et al.'s rho schedule); with 2 steps, the one noise
    # level a sample is drawn at after the first step's estimate (its temperature)
    sigma_min: float = 0.5
    rho: float = 7.0
    # The ego frames' and the occupancy grid's own pass (a model that dreams the state first, then
    # the frames and grid given it): its steps and initial noise (None: num_steps and init_noise).
    # 1 and 0: the conditional-mean frame and grid given the sampled bodies -- the samples differ
    # where the bodies do and stay sharp, at the cost of one frame-network call per step.
    frame_num_steps: int | None = 1
    frame_init_noise: float | None = 0.0
    # false: the agent's own next body is its conditional mean (it follows the agent's action: the
    # state prior's regression, or the denoiser's one-step estimate for a model without a prior)
    # and only the partner, the props and the rest are sampled given it.
    sample_agent: bool = False
    # A predicted prop displacement under this (metres per step) is dropped (0: off): props sit
    # still on almost every step and a regression's small drift on a resting prop compounds.
    props_rest_threshold: float = 0.0002
    # A resting prop with no joint of either body within this many metres stays at rest (props
    # network models; 0: off): props are passive.
    props_contact_radius: float = 0.5
    # The number format of the denoiser's network (the token transformer and the U-Nets) while
    # dreaming: "bfloat16" runs it under autocast (the small MLPs, the geometry and the sampler's
    # arithmetic stay float32); "auto" is bfloat16 on a device that multiplies it natively (a GPU
    # with bfloat16, a CPU with AVX512-BF16 or AMX) and float32 elsewhere, where bfloat16 is
    # emulated and several times slower (``sampling.network_dtype`` resolves it).
    precision: str = "auto"

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "sampler") -> SamplerConfig:
        """Build from a mapping (a file's contents); every key and value is checked, naming ``source``."""
        return _from_dict(cls, d, source, "sampler config fields")


@dataclass
class NoiseConfig:
    """The noise levels a training sample is given, per modality."""

    p_mean: float = -0.4  # log-normal training sigma (EDM's P_mean, P_std)
    p_std: float = 1.2
    p_clean: float = 0.1  # a modality is given clean (sigma = 0: a condition)
    p_sigma_max: float = 0.5  # sigma = sigma_max: the one-step sampling regime
    p_skip_frames: float = 0.5  # the frame branch is absent this step (state-only dreaming)
    p_skip_occupancy: float = 0.1
    p_warp: float = 0.7  # warping models: a sample gets its next motion clean
    p_drop_partner_actions: float = 0.2  # partner_actions models: a sample trains without them

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "noise") -> NoiseConfig:
        """Build from a mapping; every key and value is checked, naming ``source``."""
        return _from_dict(cls, d, source, "noise config fields")


@dataclass
class TrainingConfig:
    """One world-model training run (``train-wm``, the DIAMOND-style loop, the demo, benchmarks)."""

    steps: int = 3000
    batch_size: int = 16  # global, split across processes
    prior_batch: int = 512  # state-only windows per step for the state prior's regression (0: the main batch)
    prior_rollout: int = 8  # the prior also learns from 1..prior_rollout steps it dreamed itself (0: never)
    lr: float = 1.0e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # Weight of the agent's root change (position + orientation: 7 of the 227 motion numbers) in
    # the motion loss and the state prior's, relative to the other numbers (renormalised to mean 1).
    root_loss_weight: float = 10.0
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    stats_windows: int = 2000  # training windows used for the normalisation statistics
    seed: int = 0
    # After the main steps, a props_dynamics model's props network alone learns from its own
    # rollouts: it dreams ``props_rollout_horizon`` steps of props under the recorded bodies and
    # learns from the error of every dreamed position (``worldmodel/props_stage.py``; 0 steps: no
    # stage). Pushes dreamed step by step otherwise fall behind the simulator's.
    props_rollout_steps: int = 3000
    props_rollout_horizon: int = 16
    props_rollout_batch: int = 64
    props_rollout_lr: float = 1.0e-3

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "training") -> TrainingConfig:
        """Build from a mapping; every key and value (``noise`` too) is checked, naming ``source``."""
        return _from_dict(cls, d, source, "training config fields")


# ----------------------------------------------------------------------------- ranges and rules
Rule = tuple[Callable[[Any], bool], str]


def _at_least(n: float) -> Rule:
    return (lambda v: v >= n), f">= {n}"


_POSITIVE: Rule = (lambda v: v > 0), "> 0"
_PROBABILITY: Rule = (lambda v: 0.0 <= v <= 1.0), "in [0, 1]"
_ANY: Rule = (lambda v: True), ""

RANGES: dict[type, dict[str, Rule]] = {
    ArchitectureConfig: {
        "resolution": _at_least(1),
        "data_resolution": _at_least(1),
        "context": _at_least(1),
        "action_dim": _at_least(1),
        "modalities": (lambda v: len(v) > 0 and set(v) <= set(D.MODALITIES), f"a list from {list(D.MODALITIES)}"),
        "occupancy_shape": (lambda v: len(v) == 3 and min(v) >= 1, "three sizes >= 1 (Z, X, Y)"),
        "occupancy_voxel": _POSITIVE,
        "frame_channels": (lambda v: len(v) > 0 and min(v) >= 1, "a non-empty list of channel counts >= 1"),
        "occupancy_channels": (lambda v: len(v) > 0 and min(v) >= 1, "a non-empty list of channel counts >= 1"),
        "layers_per_block": _at_least(1),
        "groups": _at_least(1),
        "dim": (lambda v: v >= 2 and v % 2 == 0, "an even number >= 2"),
        "depth": _at_least(1),
        "heads": _at_least(1),
        "grid_tokens": _at_least(1),
        "n_instructions": _at_least(1),
        "reward_hidden": _at_least(1),
        "state_prior": _at_least(0),
        "props_dynamics": _at_least(0),
        "sigma_data": _POSITIVE,
        "sigma_max": _POSITIVE,
    },
    SamplerConfig: {
        "num_steps": _at_least(1),
        "init_noise": _at_least(0.0),
        "sigma_min": _POSITIVE,
        "rho": _POSITIVE,
        "frame_num_steps": ((lambda v: v is None or v >= 1), "an integer >= 1, or null"),
        "frame_init_noise": ((lambda v: v is None or v >= 0.0), "a number >= 0.0, or null"),
        "props_rest_threshold": _at_least(0.0),
        "props_contact_radius": _at_least(0.0),
        "precision": ((lambda v: v in PRECISIONS), f"one of {list(PRECISIONS)}"),
    },
    NoiseConfig: {
        "p_mean": _ANY,
        "p_std": _POSITIVE,
        **{k: _PROBABILITY for k in ("p_clean", "p_sigma_max", "p_skip_frames", "p_skip_occupancy", "p_warp", "p_drop_partner_actions")},
    },
    TrainingConfig: {
        "steps": _at_least(1),
        "batch_size": _at_least(1),
        "prior_batch": _at_least(0),
        "prior_rollout": _at_least(0),
        "lr": _POSITIVE,
        "warmup_steps": _at_least(0),
        "weight_decay": _at_least(0.0),
        "grad_clip": _POSITIVE,
        "ema_decay": ((lambda v: 0.0 <= v < 1.0), "in [0, 1)"),
        "root_loss_weight": _POSITIVE,
        "stats_windows": _at_least(1),
        "seed": _at_least(0),
        "props_rollout_steps": _at_least(0),
        "props_rollout_horizon": _at_least(1),
        "props_rollout_batch": _at_least(1),
        "props_rollout_lr": _POSITIVE,
    },
}


def _architecture_rules(c: ArchitectureConfig, source: str) -> None:
    missing = [m for m in D.STATE_MODALITIES if m not in c.modalities]
    if missing:
        raise ConfigError(source, "modalities", c.modalities, f"a list that includes the state modalities {list(D.STATE_MODALITIES)}")
    c.modalities = [m for m in D.MODALITIES if m in c.modalities]
    if c.dim % c.heads:
        raise ConfigError(source, "heads", c.heads, f"a divisor of dim ({c.dim})")
    for m, key, size in (("ego", "frame_channels", (c.resolution,)), ("occupancy", "occupancy_channels", tuple(c.occupancy_shape[1:]))):
        if m not in c.modalities:
            continue
        channels = getattr(c, key)
        if any(ch % c.groups for ch in channels):
            raise ConfigError(source, key, channels, f"channel counts that are multiples of groups ({c.groups})")
        down = 2 ** (len(channels) - 1)
        if any(s % down for s in size):
            what = "resolution" if m == "ego" else "occupancy_shape's X and Y"
            raise ConfigError(
                source, key, channels, f"at most as many levels as {what} {list(size)} can halve ({down}x does not divide it)"
            )
    if c.ego_warp and not (c.ego_depth and "ego" in c.modalities):
        raise ConfigError(source, "ego_warp", True, "false, or ego frames with depth (modalities with 'ego' and ego_depth: true)")
    if c.ego_render and not (c.ego_warp and c.occupancy_warp):
        raise ConfigError(source, "ego_render", True, "false, or ego_warp and occupancy_warp (with the occupancy modality)")
    if c.occupancy_warp and "occupancy" not in c.modalities:
        raise ConfigError(source, "occupancy_warp", True, "false, or the occupancy modality in modalities")
    if c.props_dynamics and not (c.state_prior and c.context >= 2):
        raise ConfigError(
            source, "props_dynamics", c.props_dynamics, f"0, or a state_prior (got {c.state_prior}) and context >= 2 (got {c.context})"
        )


def _noise_rules(c: NoiseConfig, source: str) -> None:
    if c.p_clean + c.p_sigma_max > 1.0:
        raise ConfigError(source, "p_sigma_max", c.p_sigma_max, f"at most 1 - p_clean ({1.0 - c.p_clean:g})")


RULES: dict[type, Callable[[Any, str], None]] = {ArchitectureConfig: _architecture_rules, NoiseConfig: _noise_rules}


def check_sampler(arch: ArchitectureConfig, sampler: SamplerConfig, source: str = "SamplerConfig") -> None:
    """The rule between a sampler and the architecture it samples: sigma_min < sigma_max."""
    if not sampler.sigma_min < arch.sigma_max:
        raise ConfigError(source, "sigma_min", sampler.sigma_min, f"a number below the architecture's sigma_max ({arch.sigma_max})")


# ----------------------------------------------------------------------------- checking
def _type_name(hint: Any) -> str:
    if get_origin(hint) is list:
        return f"a list of {_type_name(get_args(hint)[0])}s"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """``value`` as a ``hint`` (int -> float, tuple -> list), or a ``ConfigError``."""
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:  # X | None
        args = [a for a in get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], source, key)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            try:
                return hint.from_dict(value, source=source)
            except ConfigError as e:
                raise ConfigError(source, f"{key}.{e.key}", e.value, e.allowed) from None
        raise ConfigError(source, key, value, f"a mapping of {hint.__name__} fields")
    ok = True
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is list:
        ok = isinstance(value, Sequence) and not isinstance(value, str)
        if ok:
            try:
                value = [_coerce(v, get_args(hint)[0], source, key) for v in value]
            except ConfigError:
                raise ConfigError(source, key, value, _type_name(hint)) from None
    if not ok:
        raise ConfigError(source, key, value, _type_name(hint))
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def check_fields(obj: Any, source: str) -> None:
    """Check (and normalise in place) every field of a config dataclass: type, range, cross-field rules."""
    hints = _hints(type(obj))
    ranges = RANGES.get(type(obj), {})
    for f in dataclasses.fields(obj):
        ok, allowed = ranges.get(f.name, _ANY)
        # a bare bound (">= 1") reads after the type ("an integer >= 1")
        if not allowed or allowed.startswith((">", "<", "in ")):
            allowed = f"{_type_name(hints[f.name])} {allowed}".strip()
        try:
            value = _coerce(getattr(obj, f.name), hints[f.name], source, f.name)
        except ConfigError as e:
            plain = e.key == f.name and not dataclasses.is_dataclass(hints[f.name])
            raise ConfigError(source, e.key, e.value, allowed if plain else e.allowed) from None
        if not ok(value):
            raise ConfigError(source, f.name, value, allowed)
        setattr(obj, f.name, value)
    rules = RULES.get(type(obj))
    if rules is not None:
        rules(obj, source)


def _sampler_field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(SamplerConfig)}


def _from_dict(cls: type, d: Any, source: str, what: str, hint_for: set[str] | None = None) -> Any:
    if not isinstance(d, Mapping):
        raise ValueError(f"{source}: expected a mapping of {what}, got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in set(d) - set(names))
    if unknown:
        hint = ""
        if hint_for and set(unknown) & hint_for:
            hint = f" ({sorted(set(unknown) & hint_for)} belong to the sampler: sampler.json)"
        raise UnknownKeysError(source, f"unknown {what} {unknown}{hint}; allowed: {', '.join(names)}")
    try:
        return cls(**dict(d))
    except ConfigError as e:  # re-raised naming the caller's source
        raise ConfigError(source, e.key, e.value, e.allowed) from None
    except UnknownKeysError as e:  # of a nested config
        raise UnknownKeysError(source, e.detail) from None


# ----------------------------------------------------------------------------- format 1 -> 2
# Format 1 (``config.json`` alone, every setting in it). The value format 1 gave a key that a file
# lacks: a checkpoint written before an option existed has the architecture from before it.
FORMAT1_DEFAULTS: dict[str, Any] = {
    "resolution": 32,
    "data_resolution": 64,
    "context": 4,
    "action_dim": 6,
    "modalities": list(D.MODALITIES),
    "ego_depth": True,
    "occupancy_shape": [8, 32, 32],
    "occupancy_voxel": 0.25,
    "frame_channels": [32, 64, 96],
    "occupancy_channels": [32, 64, 96],
    "layers_per_block": 1,
    "groups": 8,
    "dim": 128,
    "depth": 4,
    "heads": 4,
    "grid_tokens": 4,
    "n_instructions": 26,
    "reward_hidden": 256,
    "learn_success": False,
    "action_tokens": False,
    "root_loss_weight": 1.0,
    "camera_loss_weight": 1.0,
    "ego_warp": False,
    "ego_render": False,
    "props_rest_threshold": 0.0,
    "state_prior": 0,
    "props_dynamics": 0,
    "props_contact_radius": 0.0,
    "occupancy_warp": False,
    "partner_actions": False,
    "deterministic": False,
    "init_noise": 1.0,
    "sigma_data": 1.0,
    "p_mean": -0.4,
    "p_std": 1.2,
    "sigma_min": 0.002,
    "sigma_max": 20.0,
    "rho": 7.0,
}
# Format-1 keys that loading does not need: loss weights and the training sigma distribution
# (``TrainingConfig``; ``camera_loss_weight`` was removed).
FORMAT1_TRAINING_KEYS = ("root_loss_weight", "camera_loss_weight", "p_mean", "p_std")


def format_version(d: Mapping[str, Any], source: str) -> int:
    """A file's ``format_version`` (1 when absent); refuses one newer than this code reads."""
    v = d.get("format_version", 1)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(source, "format_version", v, f"an integer from 1 to {FORMAT_VERSION}")
    if v > FORMAT_VERSION:
        raise ValueError(f"{source}: format_version {v} is newer than this dreamgym reads (up to {FORMAT_VERSION}); upgrade dreamgym")
    return v


def upgrade(d: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``config.json`` of any format up to ``FORMAT_VERSION`` -> (architecture dict, sampler dict).

    Formats 3 and 4 are returned as they are, format 2 with ``ego_render: false`` (which it
    predates; the sampler of all three lives in ``sampler.json``: the second dict is empty).
    Format 1 is split: keys the file lacks take ``FORMAT1_DEFAULTS``, the training keys are dropped,
    and a model with a success head (``learn_success: true``) is refused. Unknown keys are named.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
    version = format_version(d, source)
    body = {k: v for k, v in d.items() if k != "format_version"}
    if version >= 3:  # format 4 changed the sampler only
        return body, {}
    if version == 2:  # format 3 added ego_render; a format-2 model has none
        return {"ego_render": False} | body, {}
    unknown = sorted(set(body) - set(FORMAT1_DEFAULTS))
    if unknown:
        raise ValueError(f"{source}: unknown world-model config fields {unknown} (format 1)")
    full = FORMAT1_DEFAULTS | body
    if full["learn_success"] is not False:
        raise ConfigError(source, "learn_success", full["learn_success"], "false (a success head is no longer supported)")
    arch_keys = {f.name for f in dataclasses.fields(ArchitectureConfig)}
    arch = {k: v for k, v in full.items() if k in arch_keys}
    sampler = {k: v for k, v in full.items() if k in _sampler_field_names()}
    return arch, upgrade_sampler({"num_steps": 1} | sampler, 1)  # format 1 left the steps to the caller (1 by default)


# Format 4 added the frame pass's own steps and noise and ``sample_agent``: an older sampler
# sampled every modality in one schedule, the agent included.
SAMPLER_BEFORE_4: dict[str, Any] = {"frame_num_steps": None, "frame_init_noise": None, "sample_agent": True}
# A file without ``precision`` predates it: its network ran in float32.
SAMPLER_BEFORE_PRECISION: dict[str, Any] = {"precision": "float32"}


def upgrade_sampler(d: Mapping[str, Any], version: int) -> dict[str, Any]:
    """A ``sampler.json``'s fields (format ``version``) -> those of this format, sampling as before."""
    return SAMPLER_BEFORE_PRECISION | (SAMPLER_BEFORE_4 if version < 4 else {}) | dict(d)
