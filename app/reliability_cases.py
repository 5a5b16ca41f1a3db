"""The bad-input cases of ``dreamgym bench reliability`` (``app/reliability.py`` runs them).

A case is a command line a user could type with one thing wrong: a value, a key, a path, a damaged
or crafted file, or a run folder that holds another run. ``argv(folder, inputs)`` builds it,
``setup(folder, inputs)`` first puts into the case's own folder what it damages, and ``names``
is what the one-line refusal must contain (the key, the value or the file). ``skip()`` says why a
case cannot be tried on this machine (``device=cuda`` where CUDA is present), or None. A case
whose ``expect`` is ``report`` is a check command that reports what it found (``dataset verify``:
exit status 1 and a line per bad shard) instead of refusing.
"""

from __future__ import annotations

import base64
import json
import pickle
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .reliability import Inputs

Build = Callable[[Path, "Inputs"], list[str]]


@dataclass(frozen=True)
class Case:
    """One hostile input: the command line, what its refusal must name, and how to prepare it."""

    name: str
    argv: Build
    names: Build
    setup: Callable[[Path, Inputs], None] | None = None
    skip: Callable[[], str | None] | None = None
    expect: str = "refusal"  # or "report"


# ----------------------------------------------------------------------------- what cases damage
def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=1))


def _wm_with(file: str, **changes) -> Callable[[Path, Inputs], None]:
    """A copy of the world model at ``<case>/wm`` whose ``file`` has ``changes``."""

    def setup(d: Path, i: Inputs) -> None:
        _edit_json(_copy(i.wm, d / "wm") / file, **changes)

    return setup


def _damaged_weights(keep: int | None) -> Callable[[Path, Inputs], None]:
    """``<case>/wm`` whose weights file is cut to ``keep`` bytes (None: not a safetensors file at all)."""

    def setup(d: Path, i: Inputs) -> None:
        f = _copy(i.wm, d / "wm") / "model.safetensors"
        f.write_bytes(f.read_bytes()[:keep] if keep is not None else b"not a safetensors file")

    return setup


def _first_shard(root: Path) -> str:
    return json.loads((root / "manifest.json").read_text())["shards"][0]["file"]


def _dataset_with(damage: Callable[[Path], None]) -> Callable[[Path, Inputs], None]:
    def setup(d: Path, i: Inputs) -> None:
        damage(_copy(i.data, d / "data"))

    return setup


def _flip_bytes(root: Path) -> None:
    with open(root / _first_shard(root), "r+b") as f:
        f.seek(2048)
        f.write(b"\x00\xff" * 64)


def _outside_shard(root: Path) -> None:
    m = json.loads((root / "manifest.json").read_text())
    _copy(root, root.parent / "other")
    m["shards"][0]["file"] = "../other/" + m["shards"][0]["file"]
    (root / "manifest.json").write_text(json.dumps(m))


def _crafted_zip(d: Path, i: Inputs) -> None:
    """An SB3-looking zip whose ``data`` part, if unpickled, writes ``<case>/marker`` (a new file)."""

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(d / 'marker')!r}, 'w').write('ran')",))

    blob = base64.b64encode(pickle.dumps(Payload())).decode()
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": blob, "__module__": "stable_baselines3.common.policies"}}
    with zipfile.ZipFile(d / "policy.zip", "w") as z:
        z.writestr("data", json.dumps(data))
        z.writestr("_stable_baselines3_version", "2.9.2")


def _policy_run_with(file: str, **changes) -> Callable[[Path, Inputs], None]:
    def setup(d: Path, i: Inputs) -> None:
        _edit_json(_copy(i.policy_run, d / "run") / file, **changes)

    return setup


def _policy_class(d: Path, i: Inputs) -> None:
    f = _copy(i.policy_run, d / "run") / "policy.json"
    cfg = json.loads(f.read_text())
    cfg["policy_kwargs"]["activation_fn"] = {"class": "posix.system"}
    f.write_text(json.dumps(cfg))


def _unfinished_wm_run(d: Path, i: Inputs) -> None:
    """A train-wm run killed before its end: checkpoints, no result."""
    run = _copy(i.wm_run, d / "run")
    for name in ("final", "final_raw"):
        shutil.rmtree(run / name)


def _truncated_vla(d: Path, i: Inputs) -> None:
    f = _copy(i.vla, d / "vla") / "model.safetensors"
    f.write_bytes(f.read_bytes()[:10_000])


def _diamond_folder(d: Path, i: Inputs) -> None:
    from omegaconf import OmegaConf

    from dreamgym.configs import compose

    (d / "run").mkdir()
    (d / "run" / "config.yaml").write_text(OmegaConf.to_yaml(compose("diamond", [f"out={d / 'run'}", "budget=40"])))


def _cuda_present() -> str | None:
    import torch

    return "this machine has CUDA, so device=cuda is not a mistake here" if torch.cuda.is_available() else None


# ----------------------------------------------------------------------------- the cases
def _wm(d: Path, i: Inputs, *more: str, data: Path | None = None) -> list[str]:
    return ["train-wm", f"data={data or i.data}", f"out={d / 'run'}", *more]


def _resume_wm(d: Path, i: Inputs, *more: str, data: Path | None = None) -> list[str]:
    return ["train-wm", f"data={data or i.data}", f"out={d / 'run'}", *i.wm_args, *more]


def _copy_wm_run(d: Path, i: Inputs) -> None:
    _copy(i.wm_run, d / "run")


def _copy_policy_run(d: Path, i: Inputs) -> None:
    _copy(i.policy_run, d / "run")


def _eval_wm(d: Path, i: Inputs) -> list[str]:
    return ["eval-wm", f"checkpoint={d / 'wm'}", f"data={i.data}", f"out={d / 'eval'}"]


def _case(name: str, argv: Build, names: Build, setup=None, skip=None, expect: str = "refusal") -> Case:
    return Case(name, argv, names, setup, skip, expect)


def _values() -> list[Case]:
    """Wrong values, types and keys on the command line."""
    n = lambda *s: lambda d, i: list(s)  # noqa: E731
    return [
        _case("train-wm steps=-5", lambda d, i: _wm(d, i, "steps=-5"), n("steps", "-5")),
        _case("train-policy steps=-5", lambda d, i: ["train-policy", "env=real", f"out={d / 'run'}", "steps=-5"], n("steps", "-5")),
        _case("collect steps=2.5", lambda d, i: ["collect", f"out={d / 'data'}", "steps=2.5"], n("steps", "2.5")),
        _case("collect +bogus_key=1", lambda d, i: ["collect", f"out={d / 'data'}", "+bogus_key=1"], n("bogus_key")),
        _case("train-wm bogus_key=1", lambda d, i: _wm(d, i, "bogus_key=1"), n("bogus_key")),
        _case("train-wm device=cuda without CUDA", lambda d, i: _wm(d, i, "device=cuda"), n("cuda"), skip=_cuda_present),
        _case("train-wm batch_size=0", lambda d, i: _wm(d, i, "batch_size=0"), n("batch_size", "0")),
        _case("train-wm lr=fast", lambda d, i: _wm(d, i, "lr=fast"), n("lr", "fast")),
        _case("train-wm worldmodel.heads=5", lambda d, i: _wm(d, i, "worldmodel.heads=5"), n("heads", "5")),
        _case("train-wm worldmodel.context=abc", lambda d, i: _wm(d, i, "worldmodel.context=abc"), n("context", "abc")),
        _case("train-wm noise.p_clean=1.5", lambda d, i: _wm(d, i, "noise.p_clean=1.5"), n("p_clean", "1.5")),
        _case("train-wm cache_mb=-1", lambda d, i: _wm(d, i, "cache_mb=-1"), n("cache_mb", "-1")),
        _case("train-policy algo=dqn", lambda d, i: ["train-policy", f"out={d / 'run'}", "algo=dqn"], n("algo", "dqn")),
        _case("collect task=fly", lambda d, i: ["collect", f"out={d / 'data'}", "task=fly"], n("task", "fly")),
        _case("collect obs_keys=[motion,smell]", lambda d, i: ["collect", f"out={d / 'data'}", "obs_keys=[motion,smell]"], n("smell")),
        _case("eval-policy episodes=0", lambda d, i: ["eval-policy", "policy=expert", "episodes=0"], n("episodes", "0")),
        _case("diamond budget=-1", lambda d, i: ["diamond", f"out={d / 'run'}", "budget=-1"], n("budget", "-1")),
        _case("view port=-1", lambda d, i: ["view", str(i.data), "port=-1"], n("port", "-1")),
        _case("view port=http", lambda d, i: ["view", str(i.data), "port=http"], n("port", "http")),
        _case("a misspelt command", lambda d, i: ["trian-wm", f"data={i.data}"], n("trian-wm")),
        _case("an override without =", lambda d, i: ["train-wm", f"data={i.data}", f"out={d / 'run'}", "steps", "100"], n("steps")),
    ]


def _paths() -> list[Case]:
    """Missing or wrong paths."""
    return [
        _case("train-wm data=<missing>", lambda d, i: _wm(d, i, data=d / "nowhere"), lambda d, i: [str(d / "nowhere")]),
        _case(
            "train-wm data=<a file that is not a dataset>",
            lambda d, i: _wm(d, i, data=d / "notes.txt"),
            lambda d, i: [str(d / "notes.txt")],
            setup=lambda d, i: (d / "notes.txt").write_text("not data"),
        ),
        _case("train-wm without out=", lambda d, i: ["train-wm", f"data={i.data}"], lambda d, i: ["out="]),
        _case(
            "eval-wm checkpoint=<missing>",
            lambda d, i: ["eval-wm", f"checkpoint={d / 'nowhere'}", f"data={i.data}", f"out={d / 'eval'}"],
            lambda d, i: [str(d / "nowhere")],
        ),
    ]


def _checkpoints() -> list[Case]:
    """World-model, policy and VLA files that are damaged, crafted or out of range."""
    wm_file = lambda d, i: [str(d / "wm")]  # noqa: E731
    return [
        _case("world model sigma_max: -5", _eval_wm, lambda d, i: ["sigma_max", "-5"], _wm_with("config.json", sigma_max=-5)),
        _case("world model sigma_data: 0", _eval_wm, lambda d, i: ["sigma_data", "0"], _wm_with("config.json", sigma_data=0)),
        _case("world model sigma_min: 50", _eval_wm, lambda d, i: ["sigma_min", "50"], _wm_with("sampler.json", sigma_min=50)),
        _case(
            "world model format_version: 99", _eval_wm, lambda d, i: ["format_version", "99"], _wm_with("config.json", format_version=99)
        ),
        _case("world model context: abc", _eval_wm, lambda d, i: ["context", "abc"], _wm_with("config.json", context="abc")),
        _case("world model heads: 5", _eval_wm, lambda d, i: ["heads", "5"], _wm_with("config.json", heads=5)),
        _case(
            "eval-wm on a train-wm run folder",
            lambda d, i: ["eval-wm", f"checkpoint={i.wm_run}", f"data={i.data}", f"out={d / 'eval'}"],
            lambda d, i: [str(i.wm_run / "final")],
        ),
        _case(
            "eval-wm on an unfinished train-wm run",
            lambda d, i: ["eval-wm", f"checkpoint={d / 'run'}", f"data={i.data}", f"out={d / 'eval'}"],
            lambda d, i: [str(d / "run"), "unfinished"],
            _unfinished_wm_run,
        ),
        _case("world model weights truncated", _eval_wm, wm_file, _damaged_weights(5_000)),
        _case("world model weights not safetensors", _eval_wm, wm_file, _damaged_weights(None)),
        _case(
            "eval-policy on a crafted SB3 zip",
            lambda d, i: ["eval-policy", f"policy={d / 'policy.zip'}", "episodes=2"],
            lambda d, i: [str(d / "policy.zip"), "allow_pickle=true"],
            _crafted_zip,
        ),
        _case(
            "train-policy init=<a crafted SB3 zip>",
            lambda d, i: ["train-policy", *i.policy_args, f"init={d / 'policy.zip'}", f"out={d / 'run'}"],
            lambda d, i: [str(d / "policy.zip"), "allow_pickle=true"],
            _crafted_zip,
        ),
        _case(
            "eval-policy on a truncated VLA checkpoint",
            lambda d, i: ["eval-policy", f"policy={d / 'vla'}", "episodes=2"],
            lambda d, i: [str(d / "vla" / "model.safetensors")],
            _truncated_vla,
        ),
        _case(
            "a policy.json naming a class to build",
            lambda d, i: ["eval-policy", f"policy={d / 'run'}", "episodes=2"],
            lambda d, i: ["posix.system"],
            _policy_class,
        ),
        _case(
            "eval-policy on an unfinished run",
            lambda d, i: ["eval-policy", f"policy={d / 'run'}", "episodes=2"],
            lambda d, i: [str(d / "run"), "unfinished"],
            _policy_run_with("run.json", status="running"),
        ),
        _case(
            "eval-policy on a stale policy",
            lambda d, i: ["eval-policy", f"policy={d / 'run'}", "episodes=2"],
            lambda d, i: [str(d / "run"), "stale"],
            _policy_run_with("policy.json", run_id="0" * 32),
        ),
    ]


def _resumes() -> list[Case]:
    """Run folders that hold a run of other data or settings."""
    return [
        _case(
            "train-wm resumed on other data",
            lambda d, i: _resume_wm(d, i, data=i.other_data),
            lambda d, i: ["data.sha256", "resume=false"],
            _copy_wm_run,
        ),
        _case(
            "train-wm resumed with a 500x learning rate",
            lambda d, i: _resume_wm(d, i, "lr=0.5"),
            lambda d, i: ["training.lr"],
            _copy_wm_run,
        ),
        _case(
            "train-wm resumed with another architecture",
            lambda d, i: _resume_wm(d, i, "worldmodel.depth=2"),
            lambda d, i: ["model.depth"],
            _copy_wm_run,
        ),
        _case(
            "train-policy resumed with other settings",
            lambda d, i: ["train-policy", *i.policy_args, "ppo.learning_rate=0.1", f"out={d / 'run'}"],
            lambda d, i: ["ppo.learning_rate", "restart=true"],
            _copy_policy_run,
        ),
        _case(
            "train-policy init=<a ppo policy> with algo=sac",
            lambda d, i: ["train-policy", *i.policy_args, "algo=sac", f"init={i.policy_run}", f"out={d / 'run'}"],
            lambda d, i: ["algo=sac"],
        ),
        _case(
            "collect continued with another seed",
            lambda d, i: ["collect", f"out={d / 'data'}", *i.collect_args, "seed=8"],
            lambda d, i: ["seed"],
            _dataset_with(lambda root: None),
        ),
        _case(
            "diamond continued with another budget",
            lambda d, i: ["diamond", f"out={d / 'run'}", "budget=41"],
            lambda d, i: ["budget: run 40, now 41"],
            _diamond_folder,
        ),
    ]


def _datasets() -> list[Case]:
    """Datasets that are damaged, reach outside their folder or lack what the model needs."""
    shard = lambda d, i: [_first_shard(d / "data")]  # noqa: E731
    return [
        _case("train-wm on a damaged shard", lambda d, i: _wm(d, i, "steps=1", data=d / "data"), shard, _dataset_with(_flip_bytes)),
        _case(
            "dataset verify on a damaged shard",
            lambda d, i: ["dataset", "verify", str(d / "data")],
            lambda d, i: [f"BAD {_first_shard(d / 'data')}: sha256"],
            _dataset_with(_flip_bytes),
            expect="report",
        ),
        _case(
            "train-wm on a missing shard",
            lambda d, i: _wm(d, i, "steps=1", data=d / "data"),
            shard,
            _dataset_with(lambda root: (root / _first_shard(root)).unlink()),
        ),
        _case(
            "dataset verify on a manifest that reaches outside",
            lambda d, i: ["dataset", "verify", str(d / "data")],
            lambda d, i: ["../other/"],
            _dataset_with(_outside_shard),
        ),
        _case(
            "train-wm on a manifest that reaches outside",
            lambda d, i: _wm(d, i, "steps=1", data=d / "data"),
            lambda d, i: ["../other/"],
            _dataset_with(_outside_shard),
        ),
        _case(
            "dataset verify on a manifest []",
            lambda d, i: ["dataset", "verify", str(d / "data")],
            lambda d, i: ["JSON list"],
            _dataset_with(lambda root: (root / "manifest.json").write_text("[]")),
        ),
        _case(
            "dataset verify on a manifest that is not JSON",
            lambda d, i: ["dataset", "verify", str(d / "data")],
            lambda d, i: ["manifest.json"],
            _dataset_with(lambda root: (root / "manifest.json").write_text("{not json")),
        ),
        _case(
            "train-wm, a frames model, on data without frames",
            lambda d, i: _wm(d, i, "steps=1"),
            lambda d, i: ["ego_rgb", "worldmodel.modalities="],
        ),
    ]


def all_cases() -> list[Case]:
    """Every case, by kind: values, paths, checkpoints, resumes, datasets."""
    cases = _values() + _paths() + _checkpoints() + _resumes() + _datasets()
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "case names are unique"
    return cases
