"""The command line refuses bad input before any work: exit status 2, one line on stderr that
names what was wrong and says what to do, nothing written. Bugs keep their traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamgym.app.cli import BENCHES, COMMANDS, Refused, main
from dreamgym.app.schemas import SCHEMAS, schema_of
from dreamgym.configs import UserError, compose


def _refused(capsys, argv: list[str]) -> str:
    """Run ``dreamgym argv``; assert it was refused with status 2 and one line; return that line."""
    capsys.readouterr()
    with pytest.raises(Refused) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("dreamgym")]
    assert lines == [str(e.value)], err
    line = lines[0]
    cmd = argv[0] if argv[0] not in ("bench", "dataset") else " ".join(argv[:2])
    assert line.startswith((f"dreamgym {cmd}: ", f"dreamgym {argv[0]}: ", "dreamgym: ")), line
    assert "; " in line, f"no 'what to do' part: {line}"
    return line


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Two short state-only episodes, one per shard."""
    out = tmp_path_factory.mktemp("cli") / "tiny"
    argv = ["collect", f"out={out}", "steps=8", "num_envs=2", "round_steps=4", "obs_keys=[motion,task_obs]", "resolution=8"]
    assert main([*argv, "progress=false", "shard_episodes=1"]) == 0
    return out


@pytest.fixture
def fake_dataset(tmp_path):
    """A folder that passes the CLI's 'is a dataset' check (a manifest.json), for refusals that come first."""
    d = tmp_path / "fake_data"
    d.mkdir()
    (d / "manifest.json").write_text("{}")
    return d


# ------------------------------------------------------------------- wrong types and unknown keys
@pytest.mark.parametrize(
    "argv, named",
    [
        (["collect", "steps=2.5"], "steps"),
        (["collect", "num_envs=many"], "num_envs"),
        (["collect", "progress=maybe"], "progress"),
        (["train-wm", "lr=fast"], "lr"),
        (["train-wm", "worldmodel.dim=abc"], "worldmodel.dim"),
        (["eval-wm", "horizons=[1,two]"], "horizons[1]"),
        (["train-policy", "ppo.n_epochs=1.5"], "ppo.n_epochs"),
        (["view", "port=http"], "port"),
    ],
)
def test_wrong_type_is_refused_by_name(capsys, tmp_path, argv, named):
    line = _refused(capsys, [*argv, f"out={tmp_path / 'out'}"])
    assert f"{named}" in line and f"; give {named.split('[')[0]} " in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, named",
    [
        (["collect", "+bogus_key=1"], "bogus_key"),
        (["collect", "bogus_key=1"], "bogus_key"),
        (["train-wm", "+noise.p_bogus=0.5"], "noise.p_bogus"),
        (["train-wm", "worldmodel.bogus=1"], "worldmodel.bogus"),
        (["train-policy", "horizons=[1]"], "horizons"),
        (["bench", "env", "+iterations=3"], "iterations"),
        (["demo", "+stages=2"], "stages"),
    ],
)
def test_unknown_key_is_refused_by_name(capsys, tmp_path, argv, named):
    line = _refused(capsys, [*argv, f"out={tmp_path / 'out'}"])
    assert f"unknown key {named!r}" in line and "valid keys:" in line
    assert not (tmp_path / "out").exists()


def test_plus_on_an_existing_key_and_unparsable_override(capsys, tmp_path):
    line = _refused(capsys, ["collect", "+steps=5", f"out={tmp_path / 'out'}"])
    assert "'steps' is already a key" in line and "steps=VALUE" in line
    line = _refused(capsys, ["collect", "steps=[1,", f"out={tmp_path / 'out'}"])
    assert "cannot parse 'steps=[1,'" in line
    assert not (tmp_path / "out").exists()


def test_unknown_group_option_lists_the_choices(capsys, tmp_path):
    line = _refused(capsys, ["train-wm", "worldmodel=huge", f"out={tmp_path / 'out'}"])
    assert "no worldmodel config 'huge'" in line and "default, deterministic" in line


# ------------------------------------------------------------------------------ wrong values
@pytest.mark.parametrize(
    "argv, expect",
    [
        (["train-policy", "steps=-5"], "steps=-5 is out of range; steps must be > 0 (default: steps=50000)"),
        (["train-wm", "steps=-5"], "steps=-5 is out of range; steps must be > 0"),
        (["train-wm", "batch_size=0"], "batch_size=0 is out of range; batch_size must be > 0"),
        (["eval-wm", "batch_size=0"], "batch_size=0 is out of range"),
        (["collect", "num_envs=0"], "num_envs=0 is out of range; num_envs must be >= 1"),
        (["collect", "heldout_fraction=1.0"], "heldout_fraction=1.0 is out of range; heldout_fraction must be < 1"),
        (["train-wm", "noise.p_clean=1.5"], "noise.p_clean=1.5 is out of range; noise.p_clean must be <= 1"),
        (["train-policy", "ppo.gamma=2"], "ppo.gamma=2.0 is out of range; ppo.gamma must be <= 1"),
        (["diamond", "wm.batch_size=0"], "wm.batch_size=0 is out of range"),
        (["eval-wm", "horizons=[1,0]"], "each element of horizons must be > 0"),
        (["collect", "task=fly"], "task=fly is not one of the choices; choose from avoid, push, reach, social"),
        (["collect", "obs_keys=[motion,smell]"], "obs_keys=[motion,smell] is not one of the choices"),
        (["collect", 'policy="expert:0.5,lazy:0.5"'], "unknown behaviour 'lazy'"),
        (["collect", "policy=expert:0.5,lazy:0.5"], "a comma makes a list or a sweep; quote the value"),
        (["collect", "resolution=4"], "resolution must be between 8 and 1024"),
        (["train-policy", "algo=dqn"], "algo=dqn is not one of the choices; choose from ppo, sac"),
        (["eval-policy", "expert", "env=mars"], "env=mars is not one of the choices; choose from dream, real"),
        (["export", "gender=robot"], "gender=robot is not one of the choices"),
        (["train-wm", "worldmodel.heads=5"], "heads = 5 is invalid (expected a divisor of dim (96))"),
        (["train-wm", "worldmodel.sigma_max=-5"], "sigma_max = -5.0 is invalid (expected a number > 0)"),
        (["train-wm", "worldmodel.context=0"], "context = 0 is invalid (expected an integer >= 1)"),
        (["train-vla", "dream_envs=30", "dream_group=4"], "dream_envs=30 is not a multiple of dream_group=4"),
        (["train-vla", "tasks=[reach]"], "dream_tasks=[reach,push] dreams [push], which tasks=[reach] does not clone"),
        (["train-vla", "dream_tasks=[social]"], "dream_tasks=[social] is not one of the choices; choose from reach, push"),
        (["train-vla", "dream_advantage=gae"], "dream_advantage=gae is not one of the choices"),
        (["train-vla", "dream_horizon.push=0"], "dream_horizon.push=0 is out of range"),
        (["train-social", "scene_objects=true", "heading_head=false"], "scene_objects=true needs heading_head=true"),
        (["bench", "env", "batch_sizes=[0,16]"], "each element of batch_sizes must be >= 1"),
        (["bench", "wm", "measure_seconds=-1"], "measure_seconds=-1.0 is out of range"),
        (
            ["bench", "vla", "episodes_per_condition=4", "reference_episodes=8"],
            "reference_episodes=8 is more than episodes_per_condition=4",
        ),
    ],
)
def test_bad_value_is_refused_before_work(capsys, tmp_path, fake_dataset, argv, expect):
    before = _listing(tmp_path)
    line = _refused(capsys, [*argv, f"out={tmp_path / 'out'}", *_data(argv, fake_dataset)])
    assert expect in line
    assert _listing(tmp_path) == before


def _data(argv: list[str], dataset: Path) -> list[str]:
    return [f"data={dataset}"] if argv[0] in ("train-wm", "eval-wm") else []


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_view_port_out_of_range(capsys, tmp_path, port):
    line = _refused(capsys, ["view", str(tmp_path), f"port={port}"])
    assert f"port={port} is out of range" in line and "(default: port=8765)" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("argv", [["train-wm"], ["train-policy"], ["eval-wm"], ["bench", "wm"], ["diamond"]])
def test_cuda_without_cuda_is_refused(capsys, tmp_path, fake_dataset, argv):
    line = _refused(capsys, [*argv, "device=cuda", f"out={tmp_path / 'out'}", *_data(argv, fake_dataset)])
    assert "device=cuda but this machine has no CUDA device" in line and "use device=cpu" in line
    assert not (tmp_path / "out").exists()


def test_a_device_torch_cannot_parse(capsys, tmp_path):
    line = _refused(capsys, ["train-policy", "device=gpu0", f"out={tmp_path / 'out'}"])
    assert "device='gpu0' is not a device" in line


# ------------------------------------------------------------------------- paths and files
def test_required_and_missing_paths(capsys, tmp_path, fake_dataset):
    assert "data= is required" in _refused(capsys, ["train-wm", f"out={tmp_path / 'out'}"])
    assert "out= is required" in _refused(capsys, ["train-wm", f"data={fake_dataset}"])
    assert "out= or path= is required" in _refused(capsys, ["collect"])
    assert "policy= or path= is required" in _refused(capsys, ["eval-policy"])
    line = _refused(capsys, ["train-wm", f"data={tmp_path / 'nope'}", f"out={tmp_path / 'out'}"])
    assert f"data={tmp_path / 'nope'}: no such file or directory" in line
    line = _refused(capsys, ["eval-wm", f"checkpoint={tmp_path / 'none'}", f"data={fake_dataset}", f"out={tmp_path / 'out'}"])
    assert f"checkpoint={tmp_path / 'none'}: no such file or directory" in line
    line = _refused(capsys, ["train-policy", f"init={tmp_path / 'p.zip'}", f"out={tmp_path / 'out'}"])
    assert "init=" in line and "no such file" in line
    line = _refused(capsys, ["avatar-demo", f"checkpoint={tmp_path / 'social'}", f"out={tmp_path / 'out'}"])
    assert "checkpoint=" in line and "no such file" in line
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_dataset(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for argv in (["dataset", "info", str(tmp_path / "notes.txt")], ["dataset", "verify", str(tmp_path)], ["video", str(tmp_path)]):
        assert "is not a dreamgym dataset (no manifest.json)" in _refused(capsys, argv)
    line = _refused(capsys, ["train-wm", f"data={tmp_path / 'notes.txt'}", f"out={tmp_path / 'out'}"])
    assert "is not a dreamgym dataset" in line
    assert _listing(tmp_path) == ["notes.txt"]


def test_a_checkpoint_that_fails_its_checks(capsys, tmp_path, fake_dataset):
    from dreamgym.worldmodel.model import DEFAULT_CHECKPOINT

    bad_json, truncated = tmp_path / "bad_json", tmp_path / "truncated"
    for d in (bad_json, truncated):
        shutil.copytree(DEFAULT_CHECKPOINT, d, ignore=shutil.ignore_patterns("*.md", "model.safetensors"))
    (bad_json / "config.json").write_text("{not json")
    (bad_json / "model.safetensors").write_bytes(b"")
    (truncated / "model.safetensors").write_bytes((Path(DEFAULT_CHECKPOINT) / "model.safetensors").read_bytes()[:1000])
    for ckpt, named in ((bad_json, "config.json"), (truncated, "model.safetensors")):
        line = _refused(capsys, ["eval-wm", f"checkpoint={ckpt}", f"data={fake_dataset}", f"out={tmp_path / 'out'}"])
        assert str(ckpt / named) in line
    assert not (tmp_path / "out").exists()


def test_a_damaged_shard_is_named(capsys, tiny_dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dataset, bad)
    shard = bad / "shard-000001.h5"
    os.truncate(shard, shard.stat().st_size // 3)
    line = _refused(capsys, ["video", str(bad), "episode=1", f"out={tmp_path / 'ep.mp4'}"])
    assert f"shard {shard} is corrupt" in line and "dataset verify" in line
    assert not (tmp_path / "ep.mp4").exists()


def test_a_library_refusal_becomes_the_one_line(capsys, tiny_dataset, tmp_path):
    # export checks its own arguments (SystemExit with a message): same exit status, same one line
    line = _refused(capsys, ["export", f"data={tiny_dataset}"])
    assert line.startswith("dreamgym export: a setting is missing or wrong; give data=") and line.count("dreamgym export") == 2


def test_demo_stage_overrides_are_checked_before_the_first_stage(capsys, tmp_path):
    line = _refused(capsys, ["demo", f"out={tmp_path / 'demo'}", "overrides.collect=['bogus=1']"])
    assert "overrides.collect: unknown key 'bogus'" in line
    line = _refused(capsys, ["demo", f"out={tmp_path / 'demo'}", "overrides.train_policy=['steps=-1']"])
    assert "overrides.train_policy: steps=-1 is out of range" in line
    assert not (tmp_path / "demo").exists()


# -------------------------------------------------------------------------- commands, bugs
def test_unknown_command_and_benchmark(capsys):
    line = _refused(capsys, ["trian-wm", "steps=1"])
    assert "unknown command 'trian-wm'" in line and "train-wm" in line
    assert "unknown benchmark 'speed'" in _refused(capsys, ["bench", "speed"])
    assert "unknown command 'dataset check'" in _refused(capsys, ["dataset", "check", "x"])
    assert "at most one positional argument" in _refused(capsys, ["video", "a", "b"])


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    import dreamgym.rollouts.video as video

    def broken(cfg):
        raise TypeError("a bug")

    monkeypatch.setattr(video, "run", broken)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(TypeError, match="a bug"):
        main(["video", str(tmp_path)])


def test_the_traceback_on_request(monkeypatch, tmp_path):
    monkeypatch.setenv("DREAMGYM_TRACEBACK", "1")
    with pytest.raises(ValueError, match="steps=-5 is out of range"):
        main(["train-policy", "steps=-5", f"out={tmp_path / 'out'}"])


def test_the_console_prints_one_line_and_exits_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run(
        [sys.executable, "-m", "dreamgym.app.cli", "collect", "bogus=1", f"out={tmp_path / 'o'}"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith("dreamgym collect: unknown key 'bogus'")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ defaults keep working
@pytest.mark.parametrize("argv", [c.split() for c in COMMANDS] + [["bench", b] for b in BENCHES])
def test_every_command_prints_its_config(capsys, argv):
    assert main([*argv, "--cfg"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() and "???" not in printed


@pytest.mark.parametrize("config_name", sorted({c for c, _, _ in COMMANDS.values()} | {c for c, _, _ in BENCHES.values()}))
def test_every_schema_mirrors_its_yaml(config_name):
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    assert config_name in SCHEMAS, f"configs/{config_name}.yaml has no schema in app/schemas (SCHEMAS)"
    try:
        typed = compose(config_name, [], schema=schema_of(config_name))
    except UserError as e:
        pytest.fail(f"configs/{config_name}.yaml does not fit its schema ({SCHEMAS[config_name]} in app/schemas): {e}")
    try:
        OmegaConf.to_object(typed)
    except MissingMandatoryValue as e:
        pytest.fail(f"app/schemas declares {e.full_key!r} but configs/{config_name}.yaml does not set it")


def test_checked_values_reach_the_command_typed(monkeypatch, tmp_path, tiny_dataset):
    import dreamgym.rollouts.video as video

    seen = {}
    monkeypatch.setattr(video, "run", lambda cfg: seen.update(cfg=cfg) or 0)
    assert main(["video", str(tiny_dataset), "episode=1", "fps=10"]) == 0
    cfg = seen["cfg"]
    assert cfg.episode == 1 and cfg.fps == 10.0 and isinstance(cfg.fps, float) and cfg.path == str(tiny_dataset)
    assert json.loads(json.dumps(dict(cfg)))["size"] == 256


def test_cache_mb_zero_passes_the_schema_and_a_negative_one_does_not(fake_dataset, tmp_path):
    """``cache_mb=0`` (every window read from disk) is a setting the trainer accepts; the schema agrees."""
    from dreamgym.app.schemas import check

    schema = schema_of("train_wm")

    def checked(value: str) -> None:
        check(compose("train_wm", [f"cache_mb={value}", f"data={fake_dataset}", f"out={tmp_path / 'run'}"], schema))

    checked("0")
    checked("null")
    with pytest.raises(UserError, match="cache_mb=-1 is out of range"):
        checked("-1")


def test_avatar_demo_finds_the_shipped_avatar_from_any_directory(tmp_path, monkeypatch):
    """The default ``checkpoint=default`` is the avatar beside the installed package, not a path
    relative to where the command runs."""
    from dreamgym.app.avatar_demo import SHIPPED_SOCIAL
    from dreamgym.app.schemas import check

    monkeypatch.chdir(tmp_path)
    cfg = compose("avatar_demo", [f"out={tmp_path / 'out'}"], schema_of("avatar_demo"))
    check(cfg)
    assert cfg.checkpoint == "default" and (SHIPPED_SOCIAL / "config.json").is_file()
