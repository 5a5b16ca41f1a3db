"""The ``dreamgym`` command line.

Every subcommand reads a Hydra config from ``configs/`` (shipped with the package) and takes Hydra
overrides on the command line, e.g.::

    dreamgym demo out=runs/demo
    dreamgym bench env out=bench_env.json
    dreamgym collect task=reach steps=20000 out=data/reach

A subcommand is an entry of ``COMMANDS``: its name, the config it composes and the function that
runs it. ``dreamgym bench <what>`` composes ``bench/<what>``.

The config is composed onto the command's schema (``app/schemas``) and checked before the
command starts: a wrong key or value exits with status 2 and one line on stderr,
``dreamgym <command>: <what was wrong>; <what to do>``. So does any other error caused by the
input (a missing file, a damaged shard, a checkpoint that fails its checks); a bug keeps its
traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from dreamgym.configs import UserError, compose

from .schemas import BadValue, check, schema_of

# name -> (config name under configs/, "module:function", one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("demo", "dreamgym.app.demo:run", "the end-to-end demo on the embedded default"),
    "train-wm": ("train_wm", "dreamgym.worldmodel.train:run", "train the world model on a dataset (data=DIR out=RUN); re-run to resume"),
    "eval-wm": ("eval_wm", "dreamgym.worldmodel.evaluate:run", "a world model vs the simulator on held-out rooms, beside baselines"),
    "train-probe": (
        "train_probe",
        "dreamgym.worldmodel.probe_train:run",
        "the frame probe of eval-wm's object and Frechet scores (data=[DIRS] out=DIR)",
    ),
    "collect": ("collect", "dreamgym.rollouts.collect:run", "collect episodes into a resumable dataset (out=DIR)"),
    "video": ("video", "dreamgym.rollouts.video:run", "mp4 of a dataset episode: ego, overhead, occupancy"),
    "dataset verify": ("dataset", "dreamgym.rollouts.dataset:run_verify", "check every shard checksum of a dataset"),
    "dataset info": ("dataset", "dreamgym.rollouts.dataset:run_info", "episodes, steps, splits, behaviours of a dataset"),
    "train-vla": (
        "train_vla",
        "dreamgym.policies.vla_train:run",
        "VLA policy: BC (DAgger) in the simulator, then AWR in the dream (out=DIR); re-run to resume",
    ),
    "train-social": (
        "train_social",
        "dreamgym.policies.social_train:run_train",
        "social avatar: motion VQ-VAE, response transformer, inverse controller (out=DIR)",
    ),
    "avatar-demo": (
        "avatar_demo",
        "dreamgym.app.avatar_demo:run",
        "a scripted conversation with the social avatar: video, motions, metrics.json (out=DIR)",
    ),
    "export": (
        "export",
        "dreamgym.avatars.export_cli:run",
        "SMPL-X .npz, BVH and .glb of every episode, agent and partner (data=DIR out=DIR)",
    ),
    "live": ("live", "dreamgym.app.live:run", "a person in WebXR is the partner, the social avatar answers live (127.0.0.1 unless host=)"),
    "view": ("view", "dreamgym.avatars.viewer.server:run", "three.js/WebXR viewer of a dataset or run, real beside dream, on 127.0.0.1"),
    "train-policy": (
        "train_policy",
        "dreamgym.policies.train:run",
        "SB3 PPO/SAC policy in the dream (env=dream) or the simulator (env=real) (out=DIR)",
    ),
    "eval-policy": (
        "eval_policy",
        "dreamgym.policies.evaluate:run",
        "a policy's return and success (95 % CIs) on held-out rooms of the simulator (JSON)",
    ),
    "diamond": (
        "diamond",
        "dreamgym.policies.diamond:run",
        "DIAMOND-style loop: real collection, world-model update, policy in imagination (budget=real steps)",
    ),
}
# what -> (config name, "module:function", help) for `dreamgym bench <what>`
BENCHES: dict[str, tuple[str, str, str]] = {
    "env": ("bench/env", "dreamgym.benchmarks.env:run", "env steps/s: EgoRoomVecEnv vs EgoRoomEnv and Gymnasium's AsyncVectorEnv over it"),
    "collect": ("bench/collect", "dreamgym.benchmarks.rollouts:run_collect", "collection steps/s vs bare EgoRoomVecEnv"),
    "loader": ("bench/loader", "dreamgym.benchmarks.rollouts:run_loader", "training windows/s of the dataset loader"),
    "wm": ("bench/wm", "dreamgym.benchmarks.wm:run", "world model: training samples/s, dreaming transitions/s vs the simulator"),
    "dream": ("bench/dream", "dreamgym.benchmarks.dream:run", "DreamVecEnv transitions/s vs EgoRoomVecEnv at B = 1, 16, 64"),
    "push": ("bench/push", "dreamgym.benchmarks.push:run", "dreamed prop pushes vs the simulator's, beside hold-pose"),
    "vla": (
        "bench/vla",
        "dreamgym.benchmarks.vla:run",
        "VLA success on held-out rooms: training phrasings, paraphrases, unseen combos, BC only, random",
    ),
    "transfer": (
        "bench/transfer",
        "dreamgym.benchmarks.transfer:run",
        "PPO in the dream vs PPO in the simulator on N and 10 N real steps, expert, random: every task, state and pixels",
    ),
    "gym": (
        "bench/gym",
        "dreamgym.benchmarks.gym_loop:run",
        "the loop (diamond env=<id>) vs SB3 PPO and SAC on the same real-step budget: InvertedPendulum, Hopper, HalfCheetah",
    ),
    "gym_verdict": (
        "bench/gym_verdict",
        "dreamgym.benchmarks.gym_verdict:run",
        "does a Gymnasium env's dream rank policies (a loop's iterations) as the env does? Spearman of returns",
    ),
    "verdict": (
        "bench/verdict",
        "dreamgym.benchmarks.verdict:run",
        "does the dream rank policies as the simulator does? Spearman per task, sim vs dream success",
    ),
    "social": (
        "bench/social",
        "dreamgym.benchmarks.social:run",
        "the dream-fine-tuned social avatar vs the simulator-only one and the scripted responder, paired on held-out scenes",
    ),
    "live": ("bench/live", "dreamgym.benchmarks.live:run", "dreamgym live: server work per step and round trip over loopback at 30 Hz"),
    "reliability": (
        "bench/reliability",
        "dreamgym.app.reliability:run",
        "bad input of every kind: refused in one line, naming what was wrong, nothing lost or written",
    ),
}


def _load(target: str) -> Callable[[DictConfig], object]:
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def _usage() -> str:
    lines = ["usage: dreamgym <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["  bench <what>   benchmarks: " + ", ".join(BENCHES)]
    lines += [f"    bench {name:<8} {help_}" for name, (_, _, help_) in BENCHES.items()]
    lines += ["", "Add --cfg to print the composed config instead of running."]
    lines += ["A wrong key or value is refused with one line and exit status 2 (DREAMGYM_TRACEBACK=1: the traceback)."]
    return "\n".join(lines)


class Refused(SystemExit):
    """A user error, already printed as one line on stderr; exits with status 2.

    ``str()`` is that line (``dreamgym <command>: <what was wrong>; <what to do>``).
    """

    def __init__(self, line: str):
        super().__init__(2)
        self.line = line

    def __str__(self) -> str:
        return self.line


def _refuse(name: str, message: str) -> Refused:
    line = f"dreamgym {name}: {message}" if name else f"dreamgym: {message}"
    print(line, file=sys.stderr, flush=True)
    return Refused(line)


def _resolve(argv: list[str]) -> tuple[str, str, str, list[str]]:
    """(command name, config name, "module:function", the remaining arguments)."""
    name, rest = argv[0], argv[1:]
    if name == "bench":
        if not rest or rest[0] not in BENCHES:
            got = rest[0] if rest else "nothing"
            raise _refuse("bench", f"unknown benchmark {got!r}; choose one of {', '.join(BENCHES)}")
        config_name, target, _ = BENCHES[rest[0]]
        return f"bench {rest[0]}", config_name, target, rest[1:]
    if name in COMMANDS:
        config_name, target, _ = COMMANDS[name]
        return name, config_name, target, rest
    if rest and f"{name} {rest[0]}" in COMMANDS:  # two-word commands, e.g. `dataset verify`
        config_name, target, _ = COMMANDS[f"{name} {rest[0]}"]
        return f"{name} {rest[0]}", config_name, target, rest[1:]
    known = sorted({c.split()[0] for c in COMMANDS} | {"bench"})
    raise _refuse(
        "", f"unknown command {' '.join(argv[:2]) if name == 'dataset' else name!r}; choose one of {', '.join(known)} (dreamgym --help)"
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``dreamgym <command> [key=value ...]``; returns the exit status.

    A user error (a bad key or value, a missing path, a file that is not what it should be) is
    printed as one line on stderr and raises ``Refused`` (``SystemExit(2)``); anything else is a
    bug and keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, config_name, target, rest = _resolve(argv)
    print_cfg = "--cfg" in rest
    overrides = [a for a in rest if a != "--cfg"]
    try:
        # Positional arguments (a path, say) become `path=...` for commands that take one.
        positional = [a for a in overrides if "=" not in a]
        if len(positional) > 1:
            raise UserError(f"at most one positional argument (a path), got {positional}; write the others as key=value")
        if positional:
            overrides = [a for a in overrides if "=" in a] + [f"path={positional[0]}"]
        schema = schema_of(config_name)
        cfg = compose(config_name, overrides, schema=schema)
        if print_cfg:
            print(OmegaConf.to_yaml(cfg))
            return 0
        if schema is not None:
            check(cfg)
            cfg = _plain(cfg)
        result = _load(target)(cfg)
    except Refused:
        raise
    except (Exception, SystemExit) as e:
        message = user_error_message(e)
        if message is None or os.environ.get("DREAMGYM_TRACEBACK"):
            raise
        raise _refuse(name, _one_line(name, message, e, config_name)) from None
    return int(result) if isinstance(result, int) else 0


def _plain(cfg: DictConfig) -> DictConfig:
    """The checked values as a plain (untyped, closed) DictConfig, the kind Hydra's compose returns."""
    plain = OmegaConf.create(OmegaConf.to_container(cfg))
    OmegaConf.set_struct(plain, True)
    return plain


def user_error_message(e: BaseException) -> str | None:
    """The message of an error caused by the user's input, or None for a bug (or an exit status)."""
    if isinstance(e, SystemExit):
        return e.code if isinstance(e.code, str) else None
    return str(e) if isinstance(e, _user_errors()) else None


def _user_errors() -> tuple[type[BaseException], ...]:
    # ValueError covers UserError and the library's checks of its inputs; OSError a missing,
    # unreadable or damaged file (h5py and safetensors name theirs so).
    # The others are raised only by modules already imported when they are (none is imported here).
    errors: list[type[BaseException]] = [ValueError, OSError]
    for module, name in (
        ("dreamgym.rollouts.dataset", "CorruptShardError"),
        ("dreamgym.worldmodel.train", "NonFiniteLossError"),
        ("dreamgym.avatars.viewer.headless", "ChromiumNotFound"),
        ("safetensors", "SafetensorError"),
    ):
        error = getattr(sys.modules.get(module), name, None)
        if isinstance(error, type):
            errors.append(error)
    return tuple(errors)


def _one_line(name: str, message: str, e: BaseException, config_name: str) -> str:
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()] or [type(e).__name__]
    text = "; ".join(lines)
    for prefix in (f"dreamgym {name}: ", f"{name}: ", "dreamgym: "):
        text = text.removeprefix(prefix)
    if isinstance(e, BadValue):
        default = _default(config_name, e.key)
        if default not in (None, "[]"):
            text += f" (default: {e.key}={default})"
    if "; " not in text:
        if text.split(" ", 1)[0] in ("give", "say", "use", "run", "install", "choose", "set"):  # only what to do
            text = f"a setting is missing or wrong; {text}"
        else:
            text += f"; fix it and re-run (`dreamgym {name} --cfg` prints the settings)"
    return text


def _default(config_name: str, key: str) -> str | None:
    """The YAML's value of ``key``, as written on the command line (None when unset)."""
    from .schemas.fields import fmt

    try:
        value = OmegaConf.select(compose(config_name, []), key)
    except UserError:
        return None
    if value is None or isinstance(value, DictConfig):
        return None
    return fmt(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


if __name__ == "__main__":
    sys.exit(main())
