"""The benchmark runner (timing with repeats, the shared JSON layout, the code version, the cache
rule) and every benchmark end to end with a tiny config."""

from __future__ import annotations

import json
import types

import pytest
import torch

from dreamgym.benchmarks import runner
from dreamgym.benchmarks.runner import BenchRun, Timing, cache_key, code_version, source_hash, summarise, timed
from dreamgym.worldmodel.baselines import HoldLastBaseline
from dreamgym.worldmodel.model import WorldModel

LAYOUT = {"benchmark", "created", "code", "machine", "config", "arms", "summary", "keys", "reused", "wall_s"}


# ------------------------------------------------------------------------------------ timing
def test_timed_warms_up_then_reports_the_median_and_spread_of_three_repeats():
    calls = []
    r = timed(lambda: calls.append(1), Timing(repeats=3, warmup=2, min_seconds=0.0, min_calls=4), per_call=5, unit="steps_per_s")
    assert len(calls) == 2 + 3 * 4, "warm-up calls, then min_calls per repeat"
    assert r["calls"] == [4, 4, 4] and r["warmup_calls"] == 2 and r["unit"] == "steps_per_s"
    assert len(r["repeats"]) == 3 and r["min"] <= r["median"] <= r["max"]
    assert r["median"] == pytest.approx(sorted(r["repeats"])[1])
    assert r["repeats"][0] == pytest.approx(4 * 5 / r["seconds"][0])
    assert r["spread"] == pytest.approx((r["max"] - r["min"]) / r["median"])


def test_timed_counts_the_units_a_call_returns():
    sizes = iter([3, 1] * 20)
    r = timed(lambda: next(sizes), Timing(repeats=3, warmup=0, min_seconds=0.0, min_calls=2), per_call=None)
    assert r["repeats"] == pytest.approx([4 / s for s in r["seconds"]])


def test_fewer_than_three_repeats_are_refused():
    with pytest.raises(ValueError, match="repeats must be at least 3"):
        Timing(repeats=2)
    s = summarise([1.0, 3.0, 2.0])
    assert s["median"] == 2.0 and s["spread"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ layout
def test_a_run_writes_the_shared_layout_with_machine_and_code(tmp_path):
    run = BenchRun("demo_bench", {"batch_sizes": [1, 2], "out": None})
    run.add("fast", {"median": 2.0})
    with pytest.raises(ValueError, match="recorded twice"):
        run.add("fast", {"median": 3.0})
    run.summary = {"fast_over_slow": 2.0}
    path = run.write(tmp_path / "r.json")
    r = json.loads(path.read_text())
    assert set(r) == LAYOUT
    assert r["benchmark"] == "demo_bench" and r["config"] == {"batch_sizes": [1, 2], "out": None}
    assert r["arms"] == {"fast": {"median": 2.0}} and r["summary"] == {"fast_over_slow": 2.0} and r["reused"] == {}
    m = r["machine"]
    assert m["threads"] >= 1 and m["ram_gb"] > 0 and m["cpu"] and m["device"] in ("cpu", "cuda")
    assert m["versions"]["torch"] == torch.__version__.split("+")[0] or m["versions"]["torch"] == torch.__version__
    assert {"mujoco", "mujoco_warp", "warp", "gymnasium"} <= set(m["versions"])
    assert len(r["code"]["source_sha256"]) == 64 and "commit" in r["code"] and "dirty" in r["code"]


def test_the_default_output_is_results_slash_name(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "RESULTS_DIR", tmp_path / "results")
    path = BenchRun("demo_bench").write()
    assert path == tmp_path / "results" / "demo_bench.json" and path.exists()


def test_the_code_version_works_outside_git(tmp_path):
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "a.py").write_text("x = 1\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "c.yaml").write_text("a: 1\n")
    v = code_version(tmp_path)
    assert v["commit"] is None and v["dirty"] is None and len(v["source_sha256"]) == 64
    before = v["source_sha256"]
    (tmp_path / "envs" / "notes.txt").write_text("not source")
    assert source_hash(tmp_path) == before, "only .py and .yaml files are the code"
    (tmp_path / "envs" / "a.py").write_text("x = 2\n")
    assert source_hash(tmp_path) != before


# ------------------------------------------------------------------------------------ cache
def _cached_run(cache, config, inputs, measured, reuse=True):
    run = BenchRun("demo_bench", config, cache_dir=cache, reuse=reuse)

    def measure(folder):
        measured.append(folder)
        (folder / "artefact.txt").write_text("trained")
        return {"score": 0.5, "folder": str(folder)}

    return run, run.cached("train", measure, config=config, inputs=inputs)


def test_an_arm_is_reused_only_under_the_same_key_and_the_json_says_so(tmp_path):
    cache, measured = tmp_path / "cache", []
    data = tmp_path / "data.bin"
    data.write_bytes(b"abc")
    cfg = {"steps": 10}
    run1, r1 = _cached_run(cache, cfg, {"data": data}, measured)
    assert len(measured) == 1 and run1.reused == {} and (measured[0] / "artefact.txt").exists()

    run2, r2 = _cached_run(cache, cfg, {"data": data}, measured)
    assert len(measured) == 1, "same code, config and inputs: reused"
    assert r2 == r1 and run2.keys["train"] == run1.keys["train"]
    reused = run2.result()["reused"]["train"]
    assert reused["key"] == run1.keys["train"] and reused["file"].endswith("arm.json")
    assert json.loads(open(reused["file"]).read())["key"] == reused["key"]

    _cached_run(cache, {"steps": 11}, {"data": data}, measured)
    assert len(measured) == 2, "a changed config is measured again"
    data.write_bytes(b"abd")
    run4, _ = _cached_run(cache, cfg, {"data": data}, measured)
    assert len(measured) == 3 and run4.reused == {}, "a changed input is measured again"
    run5, _ = _cached_run(cache, cfg, {"data": data}, measured, reuse=False)
    assert len(measured) == 4 and run5.reused == {}, "reuse off: always measured"


def test_the_key_changes_with_the_code():
    assert cache_key("code-a", {"x": 1}, {"in": "h"}) == cache_key("code-a", {"x": 1}, {"in": "h"})
    assert cache_key("code-a", {"x": 1}) != cache_key("code-b", {"x": 1})
    assert cache_key("code-a", {"x": 1}) != cache_key("code-a", {"x": 2})
    assert cache_key("code-a", {"x": 1}, {"in": "h"}) != cache_key("code-a", {"x": 1}, {"in": "g"})


def test_a_missing_input_is_named(tmp_path):
    run = BenchRun("demo_bench", {}, cache_dir=tmp_path, reuse=True)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run.cached("train", lambda folder: {}, config={}, inputs={"ckpt": tmp_path / "nowhere"})


# ------------------------------------------------------------------------------------ bench wm (no simulator)
class _CopyLast(HoldLastBaseline):
    """A stand-in world model: the copy-last baseline behind the WorldModel interface."""

    def __init__(self, context: int = 3, resolution: int = 16):
        super().__init__(None)
        self.config = types.SimpleNamespace(context=context, data_resolution=resolution, modalities=None)


def _windows(B: int = 2, T: int = 4, res: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "ego_rgb": torch.randint(0, 255, (B, T, 3, res, res), dtype=torch.uint8, generator=g),
        "ego_depth": torch.rand(B, T, 1, res, res, generator=g),
        "motion": torch.randn(B, T, 227, generator=g),
        "partner_motion": torch.randn(B, T, 227, generator=g),
        "occupancy": torch.randint(0, 5, (B, T, 8, 32, 32), dtype=torch.uint8, generator=g),
        "props": torch.randn(B, T, 4, 3, generator=g),
        "actions": torch.rand(B, T, 6, generator=g) * 2 - 1,
        "instruction": torch.zeros(B, dtype=torch.long),
    }


def test_bench_wm_reports_training_and_sampling_rates_per_configuration():
    from dreamgym.benchmarks.wm import bench, format_summary

    layer = torch.nn.Linear(227, 227)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    calls = []

    def train_step(batch):
        calls.append(batch["motion"].shape)
        opt.zero_grad()
        layer(batch["motion"][:, :3]).pow(2).mean().backward()
        opt.step()

    r = bench(
        _CopyLast(context=3, resolution=16),
        batch_sizes=[1, 4],
        num_steps=[1, 3],
        train_batch_size=8,
        timing=Timing(repeats=3, warmup=1, min_seconds=0.0, min_calls=1),
        sim_baseline=False,
        train_step=train_step,
        windows=_windows(),
        progress=lambda s: None,
    )
    assert set(r) == LAYOUT
    assert calls and calls[0] == (8, 4, 227), "the training batch is the windows tiled to train_batch_size"
    assert r["arms"]["train"]["batch_size"] == 8 and r["arms"]["train"]["median"] > 0 and len(r["arms"]["train"]["repeats"]) == 3
    dream = {k: v for k, v in r["arms"].items() if k.startswith("dream_")}
    rows = {(x["batch_size"], x["num_steps"], x["modalities"]) for x in dream.values()}
    assert rows == {(b, s, m) for b in (1, 4) for s in (1, 3) for m in ("frames", "state_only", "body_only")}
    assert all(x["median"] > 0 for x in dream.values()) and r["summary"]["dream_over_sim"] == {}
    assert "dream/s" in format_summary(r)
    json.dumps(r)


@pytest.mark.slow
def test_bench_wm_measures_the_simulator_at_the_same_batch_sizes():
    from dreamgym.benchmarks.wm import bench

    timing = Timing(repeats=3, warmup=1, min_seconds=0.05, min_calls=1)
    r = bench(_CopyLast(context=3, resolution=16), batch_sizes=[1, 2], num_steps=[1], timing=timing, progress=lambda s: None)
    assert {"sim_frames_B1", "sim_frames_B2", "sim_state_only_B1", "sim_state_only_B2"} <= set(r["arms"])
    for name, row in r["arms"].items():
        if name.startswith("dream_"):
            sim = r["arms"][f"sim_{'frames' if row['modalities'] == 'frames' else 'state_only'}_B{row['batch_size']}"]
            assert r["summary"]["dream_over_sim"][name[len("dream_") :]] == pytest.approx(row["median"] / sim["median"])


# ------------------------------------------------------------------------------------ end to end, tiny configs
@pytest.fixture(scope="module")
def tiny_world_model(tmp_path_factory):
    """A small world model of every modality at 16x16 ego frames, K = 2."""
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    cfg = WorldModelConfig(
        resolution=16,
        data_resolution=16,
        context=2,
        frame_channels=[8, 16],
        occupancy_channels=[8, 16],
        groups=4,
        dim=32,
        depth=1,
        heads=2,
        grid_tokens=2,
        reward_hidden=32,
    )
    directory = tmp_path_factory.mktemp("wm") / "ck"
    WorldModel(cfg).save_pretrained(directory)
    return directory


def _bench(name: str, *overrides: str) -> dict:
    from dreamgym.app.cli import main

    assert main(["bench", name, *overrides]) == 0
    out = next(o.split("=", 1)[1] for o in overrides if o.startswith("out="))
    r = json.loads(open(out).read())
    assert set(r) == LAYOUT and r["benchmark"] == name
    return r


TINY_TIMING = ("repeats=3", "warmup_calls=1", "measure_seconds=0", "min_calls=1")


def test_bench_env_measures_the_single_world_env_and_its_async_vector_env_beside_the_batched_one(tmp_path):
    r = _bench("env", f"out={tmp_path / 'env.json'}", "batch_sizes=[1,2]", "resolution=16", "humanoid=false", *TINY_TIMING)
    assert set(r["arms"]) == {"single", "async", "vec_B1", "vec_B2"}
    assert r["arms"]["async"]["workers"] == 2 and all(len(a["repeats"]) == 3 for a in r["arms"].values())
    s = r["summary"]
    assert s["reference"] == "single"
    assert s["vec_over_single"]["2"] == pytest.approx(r["arms"]["vec_B2"]["median"] / r["arms"]["single"]["median"])
    assert s["vec_over_async"]["1"] == pytest.approx(r["arms"]["vec_B1"]["median"] / r["arms"]["async"]["median"])


def test_bench_collect_alternates_bare_and_collected_rounds(tmp_path):
    r = _bench("collect", f"out={tmp_path / 'c.json'}", "num_envs=2", "resolution=16", "rounds=3", "round_steps=4", f"work_dir={tmp_path}")
    env, col = r["arms"]["env"], r["arms"]["collect"]
    assert len(env["repeats"]) == len(col["repeats"]) == 3 and env["steps"] == col["steps"] == 3 * 4 * 2
    assert col["stored_steps"] > 0 and col["bytes_per_step"] > 0
    assert r["summary"]["collect_over_env"] == pytest.approx(col["total_steps_per_s"] / env["total_steps_per_s"])
    assert len(r["summary"]["rounds"]) == 3


def test_bench_loader_reads_windows_from_disk_and_memory(tmp_path):
    data = tmp_path / "data"
    r = _bench(
        "loader",
        f"out={tmp_path / 'l.json'}",
        f"dataset.out={data}",
        "dataset.num_envs=2",
        "dataset.steps=48",
        "dataset.resolution=16",
        "dataset.round_steps=24",
        "context=2",
        "horizon=2",
        "batch_size=2",
        "num_workers=0",
        "single_process_windows=2",
        *TINY_TIMING,
    )
    assert set(r["arms"]) == {"loader", "single_process", "in_memory_loader", "in_memory_single_process"}
    assert all(a["median"] > 0 and len(a["repeats"]) == 3 for a in r["arms"].values())
    assert r["summary"]["windows"] > 0 and r["summary"]["window_bytes"] > 0


def test_bench_wm_times_a_checkpoint_beside_the_simulator(tmp_path, tiny_world_model):
    r = _bench(
        "wm",
        f"out={tmp_path / 'wm.json'}",
        f"checkpoint={tiny_world_model}",
        "batch_sizes=[2]",
        "num_steps=[1]",
        "train_batch_size=2",
        *TINY_TIMING,
    )
    arms = r["arms"]
    own = WorldModel.from_pretrained(tiny_world_model).sampler
    assert own.num_steps == 2  # not in the sweep: its arm is timed too
    names = {
        "train",
        "sim_frames_B2",
        "sim_state_only_B2",
        "dream_frames_B2_steps1",
        "dream_state_only_B2_steps1",
        "dream_frames_B2_steps2",
    }
    assert names <= set(arms)
    ratio = r["summary"]["dream_over_sim"]["frames_B2_steps1"]
    assert ratio == pytest.approx(arms["dream_frames_B2_steps1"]["median"] / arms["sim_frames_B2"]["median"])
    assert r["summary"]["source"] == str(tiny_world_model)
    assert r["summary"]["sampler"] == own.to_dict()
    assert arms["dream_frames_B2_steps2"]["own_sampler"] and arms["dream_frames_B2_steps2"]["sampler"] == own.to_dict()
    assert not arms["dream_frames_B2_steps1"]["own_sampler"]


def test_bench_dream_times_the_dream_env_beside_the_simulator(tmp_path, tiny_world_model):
    from dreamgym.worldmodel.sampling import network_dtype

    sampler = WorldModel.from_pretrained(tiny_world_model).sampler
    here = network_dtype(sampler, "cpu")  # "auto" resolves by this CPU
    other = "bfloat16" if here == "float32" else "float32"
    over = ("batch_sizes=[1,2]", "precisions=[float32,bfloat16]")
    r = _bench("dream", f"out={tmp_path / 'd.json'}", f"checkpoint={tiny_world_model}", *over, *TINY_TIMING)
    base = {f"{w}_{o}_B{b}" for w in ("sim", "dream") for o in ("state_only", "frames") for b in (1, 2)}
    assert base | {f"dream_{o}_B{b}_{other}" for o in ("state_only", "frames") for b in (1, 2)} == set(r["arms"])
    s = r["summary"]
    assert s["ratio_batch_size"] == 2
    assert s["dream_over_sim"] == pytest.approx(r["arms"]["dream_state_only_B2"]["median"] / r["arms"]["sim_state_only_B2"]["median"])
    assert s["world_model"]["sha256"] == runner.hash_path(tiny_world_model)
    own = sampler.to_dict() | {"network_precision": here}
    assert s["num_denoising_steps"] is None and s["sampler"] == own and r["arms"]["dream_frames_B1"]["sampler"] == own
    # the same sampler with its network in the other number format, timed in the same run
    assert r["arms"][f"dream_frames_B1_{other}"]["sampler"] == own | {"precision": other, "network_precision": other}
    assert s["network_precision"] == here and set(s["dream_over_sim_by_precision"]) == {here, other}
    by = s["dream_over_sim_by_precision"][other]["state_only"]
    assert by == pytest.approx(r["arms"][f"dream_state_only_B2_{other}"]["median"] / r["arms"]["sim_state_only_B2"]["median"])


def test_bench_push_scores_a_world_model_beside_hold_pose(tmp_path, tiny_world_model):
    r = _bench("push", f"out={tmp_path / 'p.json'}", f"checkpoints=[{tiny_world_model}]", "num_envs=2", "steps=12", "horizon=4", "stride=4")
    hold, model = r["arms"]["hold_pose"], r["arms"][str(tiny_world_model)]
    assert hold["props_windows"] == model["props_windows"] > 0
    assert hold["moved_dream_mean_m"] in (0.0, None) and hold["moved_corr"] is None
    assert model["all_err_m"] >= 0 and model["sampler"] == WorldModel.from_pretrained(tiny_world_model).sampler.to_dict()
    assert r["summary"]["models"][str(tiny_world_model)]["sha256"] == runner.hash_path(tiny_world_model)


def test_bench_push_records_the_pushes_of_any_policy(tmp_path, tiny_world_model):
    from dreamgym.app.cli import Refused, main
    from dreamgym.benchmarks.push import record

    rnd, exp = record(2, 6, 9000, "random"), record(2, 6, 9000, "expert")
    assert rnd["actions"].shape == exp["actions"].shape == (2, 6, 6) and not torch.equal(rnd["actions"], exp["actions"])
    r = _bench(
        "push",
        f"out={tmp_path / 'p.json'}",
        f"checkpoints=[{tiny_world_model}]",
        "policy=random",
        "num_envs=2",
        "steps=8",
        "horizon=4",
        "stride=4",
    )
    assert r["config"]["policy"] == "random" and r["arms"]["hold_pose"]["props_windows"] > 0
    with pytest.raises(Refused, match="nowhere"):
        main(["bench", "push", f"out={tmp_path / 'q.json'}", f"policy={tmp_path / 'nowhere'}", "num_envs=1", "steps=4"])
    assert not (tmp_path / "q.json").exists()


def test_unknown_benchmarks_are_named():
    from dreamgym.app.cli import main

    with pytest.raises(SystemExit, match="unknown benchmark 'nope'"):
        main(["bench", "nope"])


VLA = __import__("pathlib").Path(__file__).resolve().parent.parent / "policies" / "checkpoints" / "vla"


@pytest.mark.skipif(not VLA.exists(), reason="no shipped VLA checkpoint")
def test_bench_vla_pairs_final_and_bc_in_every_condition(tmp_path):
    argv = ["tasks=[reach]", "episodes_per_condition=2", "reference_episodes=1", "max_worlds=5", "max_steps.reach=3"]
    r = _bench("vla", f"out={tmp_path / 'v.json'}", f"checkpoint={VLA}", *argv)
    from dreamgym.benchmarks.vla import CONDITIONS

    reach = r["arms"]["reach"]
    assert set(r["arms"]) == {"reach", "parser_accuracy"}
    assert all(reach[arm][c]["episodes"] == 2 for arm in ("final", "bc") for c in CONDITIONS)
    assert reach["random"]["episodes"] == reach["expert"]["episodes"] == 1
    for c in CONDITIONS:
        g = reach["final_vs_bc"][c]
        assert g["final_only"] + g["bc_only"] + g["both"] + g["neither"] == 2
        assert g["gain"] == reach["final"][c]["success"] - reach["bc"][c]["success"]
        assert 0 <= g["sign_test_p"] <= 1
    assert r["summary"]["target_met"] == {"reach": False}  # 3-step episodes: no gain of +0.15 at p < 0.01
    assert r["summary"]["experience"] is None  # the shipped run predates experience.json


def test_bench_vla_paired_statistics_on_hand_made_outcomes():
    from dreamgym.benchmarks.vla import arm_success, paired_gain, target

    # 20 paired episodes: 12 won by the final policy only, 1 by BC only, 3 by both, 4 by neither
    final = [True] * 12 + [False] + [True] * 3 + [False] * 4
    bc = [False] * 12 + [True] + [True] * 3 + [False] * 4
    g = paired_gain(final, bc, resamples=500, seed=0)
    assert (g["final_only"], g["bc_only"], g["both"], g["neither"], g["episodes"]) == (12, 1, 3, 4, 20)
    assert g["gain"] == pytest.approx(11 / 20)
    assert g["sign_test_p"] == pytest.approx(2 * 14 / 2**13)  # two-sided binomial: P(X <= 1 | n=13) twice
    lo, hi = g["gain_ci95"]
    assert 0 < lo < 11 / 20 < hi <= 1
    assert target(g, 0.15, 0.01)["met"] and not target(g, 0.6, 0.01)["met"] and not target(g, 0.15, 0.001)["met"]
    # no discordant pair: nothing tells the two apart
    same = paired_gain([True, False], [True, False], resamples=50)
    assert same["gain"] == 0 and same["sign_test_p"] == 1.0 and same["gain_ci95"] == [0.0, 0.0]
    s = arm_success([True, True, False, False], [10, 20, 30, 40])
    assert s["success"] == 0.5 and s["mean_steps"] == 25 and s["success_ci95"][0] < 0.5 < s["success_ci95"][1]


def test_a_result_with_an_undefined_figure_is_written_as_strict_json(tmp_path):
    # an interval over one seed is (-inf, inf) and a mean over nothing NaN: both are written as null
    path = runner.write_json(tmp_path / "r.json", {"ci95": (float("-inf"), float("inf")), "mean": float("nan"), "n": [1, 2.5]})
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"ci95": [None, None], "mean": None, "n": [1, 2.5]}
