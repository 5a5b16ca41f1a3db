"""The ``dreamgym`` command line.

Every subcommand reads a Hydra config from ``configs/`` (shipped with the package) and takes Hydra
overrides on the command line, e.g.::

    dreamgym demo out=runs/demo
    dreamgym bench env out=bench_env.json
    dreamgym collect task=reach steps=20000 out=data/reach

A subcommand is an entry of ``COMMANDS``: its name, the config it composes and the function that
runs it. ``dreamgym bench <what>`` composes ``bench/<what>``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from dreamgym.configs import compose

# name -> (config name under configs/, "module:function", one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("demo", "dreamgym.app.demo:run", "the end-to-end demo on the embedded default"),
    "train-wm": ("train_wm", "dreamgym.worldmodel.train:run", "train the world model on a dataset (data=DIR out=RUN); re-run to resume"),
    "eval-wm": ("eval_wm", "dreamgym.worldmodel.evaluate:run", "a world model vs the simulator on held-out rooms, beside baselines"),
    "collect": ("collect", "dreamgym.rollouts.collect:run", "collect episodes into a resumable dataset (out=DIR)"),
    "video": ("video", "dreamgym.rollouts.video:run", "mp4 of a dataset episode: ego, overhead, occupancy"),
    "dataset verify": ("dataset", "dreamgym.rollouts.dataset:run_verify", "check every shard checksum of a dataset"),
    "dataset info": ("dataset", "dreamgym.rollouts.dataset:run_info", "episodes, steps, splits, behaviours of a dataset"),
    "train-vla": (
        "train_vla",
        "dreamgym.policies.vla_train:run",
        "VLA policy: BC (DAgger) in the simulator, then AWR in the dream (out=DIR)",
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
        "dreamgym.app.diamond:run",
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
        "policy trained in imagination vs PPO with 10x real steps, random, expert (real-env success)",
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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name == "bench":
        if not rest or rest[0] not in BENCHES:
            got = rest[0] if rest else "nothing"
            raise SystemExit(f"dreamgym bench: unknown benchmark {got!r}; choose one of {sorted(BENCHES)}")
        config_name, target, _ = BENCHES[rest[0]]
        rest = rest[1:]
    elif name in COMMANDS:
        config_name, target, _ = COMMANDS[name]
    elif rest and f"{name} {rest[0]}" in COMMANDS:  # two-word commands, e.g. `dataset verify`
        name = f"{name} {rest[0]}"
        config_name, target, _ = COMMANDS[name]
        rest = rest[1:]
    else:
        raise SystemExit(f"dreamgym: unknown command {name!r}; choose one of {sorted([*COMMANDS, 'bench'])}")
    print_cfg = "--cfg" in rest
    overrides = [a for a in rest if a != "--cfg"]
    # Positional arguments (a path, say) become `path=...` for commands that take one.
    positional = [a for a in overrides if "=" not in a]
    if positional:
        if len(positional) > 1:
            raise SystemExit(f"dreamgym {name}: at most one positional argument, got {positional}")
        overrides = [a for a in overrides if "=" in a] + [f"path={positional[0]}"]
    cfg = compose(config_name, overrides)
    if print_cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    result = _load(target)(cfg)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
