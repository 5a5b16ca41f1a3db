"""The GPU check: every CUDA path of the project, timed and checked, into one JSON.

    python -m dreamgym.benchmarks.gpu_check --device cuda   # on a GPU machine (benchmarks/gpu_check.sh)
    python -m dreamgym.benchmarks.gpu_check --device cpu    # dry run: the same stages at tiny sizes

Each stage runs in its own process under its own time limit and writes its figures as it goes,
so a stage that hangs or fails leaves every other stage's figures, and its own up to where it
stopped. The stages, in order:

- ``info``: the GPU, driver, CUDA, torch, warp, mujoco and mujoco-warp versions;
- ``env``: ``EgoRoomVecEnv`` steps/s with 64x64 ego RGB + depth at B = 1, 256, 1024, 4096, with
  the kernels launched one by one and replayed from CUDA graphs (``cuda_graph``);
- ``tests``: ``pytest -m cuda``: the backends against C MuJoCo, cuda against cpu for the env, the
  dream env and a training step, and CUDA's count of synchronising calls per env step;
- ``data``: a small dataset (``dreamgym collect``) for the next two;
- ``train``: ``train-wm`` samples/s for a few hundred steps, plain and under ``accelerate launch``,
  and on 2 CPU threads for reference;
- ``eval``: ``eval-wm`` on the device and on the CPU, on the same starts, with the sampler's
  initial noise at 0 and TF32 off; every metric must agree within ``EVAL_RTOL`` / ``EVAL_ATOL``;
- ``dream``: ``DreamVecEnv`` transitions/s at the same B, state-only and with frames, beside
  ``EgoRoomVecEnv`` with the same observations.

On CUDA a background process compiles the CPU kernels meanwhile (``warmup_cpu``: the dream env's
starts, the dataset and the CPU references run MuJoCo Warp on the CPU), so that the stages after
``env`` find them in Warp's kernel cache. The targets checked are in ``benchmarks/GPU.md``.

A step of B worlds counts as B steps. Rates are B x calls / seconds over a window after warm-up
steps (the first call also compiles kernels: ``first_step_s``); ``median`` rates use the median
call, which a rare episode start inside the window does not move.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EVAL_RTOL, EVAL_ATOL = 0.02, 1e-3
SIZES: dict[str, dict[str, Any]] = {
    "cuda": {
        "limit_scale": 1.0,
        "batches": [1, 256, 1024, 4096],
        "env_resolution": 64,
        "measure_s": 2.5,
        "train_steps": 300,
        "train_cpu_steps": 8,
        "train_batch": 16,
        "train_overrides": ["stats_windows=256"],
        "collect_steps": 1600,
        "eval_starts": 16,
        "eval_horizons": [1, 4, 16],
    },
    "cpu": {
        "limit_scale": 2.5,  # a 2-core CPU starts each process and trains far slower
        "batches": [2],
        "env_resolution": 16,
        "measure_s": 0.2,
        "train_steps": 3,
        "train_cpu_steps": 2,
        "train_batch": 4,
        "train_overrides": ["stats_windows=16", "prior_batch=16", "prior_rollout=1"],
        "collect_steps": 96,
        "eval_starts": 4,
        "eval_horizons": [1, 4],
    },
}
# stage -> (most seconds it may take, seconds kept free for it while earlier stages run)
STAGES: dict[str, tuple[int, int]] = {
    "info": (45, 10),
    "env": (240, 60),  # the first CUDA step compiles every kernel
    "tests": (180, 60),
    "data": (90, 20),
    "train": (160, 60),
    "eval": (120, 30),
    "dream": (200, 45),
}


# ------------------------------------------------------------------------------ helpers
class Figures:
    """A stage's figures, rewritten to its JSON file after every change."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def set(self, keys: list[str], value: Any) -> None:
        d = self.data
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rate(step, B: int, device: str, seconds: float, warmup: int = 2, min_calls: int = 3) -> dict[str, float]:
    """Steps/s of ``step()`` (B steps per call) after ``warmup`` calls; the first call's time too."""
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    _sync(device)
    times, start = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return {
        "steps_per_s": B * len(times) / sum(times),
        "median_steps_per_s": B / times[len(times) // 2],
        "calls": len(times),
        "first_step_s": first,
    }


def _actions(B: int, device: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return lambda: (torch.rand(B, 6, generator=g) * 2 - 1).to(device)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _cli(args: list[str], log: Path, timeout: float, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*(launcher or [sys.executable, "-m"]), "dreamgym.app.cli", *args]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {proc.returncode}:\n{_tail(log.read_text())}")
    return proc


# ------------------------------------------------------------------------------ stages
def stage_info(fig: Figures, device: str, sizes: dict, work: Path) -> None:
    import mujoco
    import mujoco_warp
    import torch
    import warp as wp

    wp.config.log_level = wp.LOG_WARNING
    wp.init()
    fig.set(["python"], platform.python_version())
    fig.set(["platform"], platform.platform())
    fig.set(["cpus"], os.cpu_count())
    fig.set(["versions"], {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "warp": wp.config.version})
    fig.set(["versions", "mujoco"], mujoco.__version__)
    fig.set(["versions", "mujoco_warp"], getattr(mujoco_warp, "__version__", None) or _dist_version("mujoco-warp"))
    fig.set(["cuda", "torch_sees_cuda"], torch.cuda.is_available())
    fig.set(["cuda", "warp_sees_cuda"], wp.is_cuda_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        fig.set(["gpu"], {"name": p.name, "memory_gib": p.total_memory / 2**30, "multiprocessors": p.multi_processor_count})
        fig.set(["gpu", "compute_capability"], f"{p.major}.{p.minor}")
    fig.set(["cuda", "warp_driver_version"], wp.get_cuda_driver_version())
    fig.set(["cuda", "warp_toolkit_version"], wp.get_cuda_toolkit_version())
    if shutil.which("nvidia-smi"):
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        fig.set(["nvidia_smi"], q.stdout.strip() or q.stderr.strip())


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def stage_env(fig: Figures, device: str, sizes: dict, work: Path) -> None:
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    res = sizes["env_resolution"]
    fig.set(["resolution"], res)
    fig.set(["observations"], "all keys: ego_rgb + ego_depth rendered for every world every step")
    for B in sizes["batches"]:
        t0 = time.perf_counter()
        env = EgoRoomVecEnv(num_envs=B, task="reach", resolution=res, device=device, seed=0, return_tensors=True, cuda_graph=False)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        env.reset_tensors(seed=0)
        _sync(device)
        reset = time.perf_counter() - t0
        fig.set([str(B), "setup"], {"construct_s": built, "reset_s": reset, "reset_ms_per_world": 1e3 * reset / B})
        act = _actions(B, device)
        modes = ["kernels", "cuda_graph"] if device.startswith("cuda") else ["kernels"]
        for mode in modes:
            env.cuda_graph = mode == "cuda_graph"
            r = rate(lambda: env.step_tensors(act()), B, device, sizes["measure_s"])  # noqa: B023
            if mode == "cuda_graph" and not env.cuda_graph:
                r["note"] = "graph capture failed; kernels launched directly"
            fig.set([str(B), mode], r)
        env.close()


def stage_tests(fig: Figures, device: str, sizes: dict, work: Path) -> None:
    import xml.etree.ElementTree as ET

    xml = work / "cuda_tests.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        "-p",
        "no:cacheprovider",
        "-q",
        f"--junitxml={xml}",
        "tests/test_cuda.py",
        "tests/test_envs.py",
    ]
    fig.set(["command"], " ".join(cmd[2:]))
    log = work / "cuda_tests.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    fig.set(["pytest_exit"], proc.returncode)
    fig.set(["summary"], _tail(log.read_text(), 3))
    if not xml.exists():
        raise RuntimeError(f"pytest wrote no report:\n{_tail(log.read_text())}")
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, detail = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome, detail = (
                    ("skipped" if tag == "skipped" else "failed"),
                    _tail((el.get("message") or "") + "\n" + (el.text or ""), 12),
                )
        fig.set(
            ["cases", f"{case.get('classname')}::{case.get('name')}"],
            {"outcome": outcome, "seconds": float(case.get("time", 0)), "detail": detail},
        )
    if proc.returncode not in (0, 5):  # 5: every test deselected or skipped (a CPU dry run)
        raise RuntimeError(f"pytest -m cuda exited {proc.returncode}:\n{_tail(log.read_text(), 15)}")


def stage_dream(fig: Figures, device: str, sizes: dict, work: Path) -> None:
    from dreamgym.envs.vec_env import EgoRoomVecEnv
    from dreamgym.worldmodel.dream_env import DreamVecEnv, load_world_model

    model = load_world_model(None, device)
    res = int(model.config.data_resolution)
    state = ["task_obs", "motion", "partner_motion", "instruction"]
    sets = {
        "state_only": (state, ["motion", "partner_motion"]),
        "frames": (state + ["ego_rgb", "ego_depth"], ["motion", "partner_motion", "ego_rgb", "ego_depth"]),
    }
    fig.set(["resolution"], res)
    from dreamgym.worldmodel.sampling import network_dtype

    # the dream env samples as the model's own sampler says ("auto" precision resolved on this GPU)
    fig.set(["sampler"], model.sampler.to_dict() | {"network_precision": network_dtype(model.sampler, device)})
    for B in sizes["batches"]:
        for name, (keys, mods) in sets.items():
            t0 = time.perf_counter()
            dream = DreamVecEnv(model, num_envs=B, task="reach", modalities=mods, obs_keys=keys, device=device, seed=0, return_tensors=True)
            dream.reset_tensors(seed=0)
            fig.set([str(B), name, "dream_setup_s"], time.perf_counter() - t0)
            act = _actions(B, device)
            fig.set([str(B), name, "dream"], rate(lambda: dream.step_tensors(act()), B, device, sizes["measure_s"]))  # noqa: B023
            dream.close()
            sim = EgoRoomVecEnv(num_envs=B, task="reach", resolution=res, obs_keys=keys, device=device, seed=0, return_tensors=True)
            sim.reset_tensors(seed=0)
            fig.set([str(B), name, "sim"], rate(lambda: sim.step_tensors(act()), B, device, sizes["measure_s"]))  # noqa: B023
            sim.close()
            d, s = fig.data[str(B)][name]["dream"], fig.data[str(B)][name]["sim"]
            fig.set([str(B), name, "dream_over_sim"], d["median_steps_per_s"] / s["median_steps_per_s"])


def stage_data(fig: Figures, device: str, sizes: dict, work: Path) -> None:
    from dreamgym.worldmodel.dream_env import DEFAULT_CHECKPOINT

    res = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())["data_resolution"]
    out = work / "data"
    args = ["collect", f"out={out}", "task=reach", f"steps={sizes['collect_steps']}", "num_envs=16", f"resolution={res}"]
    args += ["round_steps=100", "heldout_fraction=0.5", "seed=123", "progress=false"]
    t0 = time.perf_counter()
    _cli(args, work / "collect.log", timeout=STAGES["data"][0] * sizes["limit_scale"])
    fig.set(["collect_s"], time.perf_counter() - t0)
    fig.set(["dir"], str(out))
    fig.set(["args"], args[1:])


def _samples_per_s(run: Path) -> float | None:
    """The last ``train/samples_per_s`` train-wm logged to tensorboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    vals = acc.Scalars("train/samples_per_s") if "train/samples_per_s" in acc.Tags().get("scalars", []) else []
    return vals[-1].value if vals else None


def stage_train(fig: Figures, device: str, sizes: dict, work: Path) -> None:
    data = work / "data"
    if not (data / "manifest.json").exists():
        raise RuntimeError("no dataset: the data stage did not finish")
    batch = sizes["train_batch"]
    common = [f"data={data}", f"batch_size={batch}", "progress=false", "eval_every=0", "ckpt_every=1000000", "resume=false"]
    common += sizes["train_overrides"]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
    accelerate += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
    # name -> (device, steps, torch threads, launcher)
    runs = {
        "plain": (device, sizes["train_steps"], 4, None),
        "accelerate": (device, sizes["train_steps"], 4, accelerate),
        "cpu_2_threads": ("cpu", sizes["train_cpu_steps"], 2, None),
    }
    fig.set(["batch_size"], batch)
    fig.set(
        ["config"],
        "configs/train_wm.yaml (the default world model; its state prior also trains on its own batches) with " + " ".join(common[1:]),
    )
    for name, (dev, steps, threads, launcher) in runs.items():
        run = work / f"train_{name}"
        shutil.rmtree(run, ignore_errors=True)
        args = [
            "train-wm",
            f"out={run}",
            *common,
            f"device={dev}",
            f"steps={steps}",
            f"log_every={max(1, steps // 3)}",
            f"num_threads={threads}",
        ]
        os.environ["OMP_NUM_THREADS"] = str(threads)
        t0 = time.perf_counter()
        try:
            _cli(args, work / f"train_{name}.log", timeout=STAGES["train"][0] * sizes["limit_scale"], launcher=launcher)
        finally:
            os.environ.pop("OMP_NUM_THREADS", None)
        fig.set(
            [name],
            {"device": dev, "steps": steps, "threads": threads, "wall_s": time.perf_counter() - t0, "samples_per_s": _samples_per_s(run)},
        )
    ref = fig.data["cpu_2_threads"]["samples_per_s"]
    for name in ("plain", "accelerate"):
        if ref and fig.data[name]["samples_per_s"]:
            fig.set([f"{name}_over_cpu_2_threads"], fig.data[name]["samples_per_s"] / ref)


def _eval_args(ckpt: Path, data: Path, out: Path, device: str, sizes: dict) -> list[str]:
    hz = ",".join(str(h) for h in sizes["eval_horizons"])
    return [
        "eval-wm",
        f"checkpoint={ckpt}",
        f"data={data}",
        f"out={out}",
        f"device={device}",
        f"horizons=[{hz}]",
        f"starts_per_task={sizes['eval_starts']}",
        "counterfactual.enabled=false",
        "num_videos=0",
        "threads=8",
    ]


def stage_eval(fig: Figures, device: str, sizes: dict, work: Path) -> None:
    import torch

    from dreamgym.worldmodel.dream_env import load_world_model

    data = work / "data"
    if not (data / "manifest.json").exists():
        raise RuntimeError("no dataset: the data stage did not finish")
    # the shipped weights with the sampler's initial noise at 0: the prediction is then a function
    # of the inputs alone, so the two devices must agree up to floating point
    model = load_world_model(None, "cpu")
    model.sampler = dataclasses.replace(model.sampler, init_noise=0.0)  # saved as its sampler.json
    ckpt = work / "wm_init_noise_0"
    model.save_pretrained(ckpt)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    fig.set(["tolerance"], {"rtol": EVAL_RTOL, "atol": EVAL_ATOL, "init_noise": 0.0, "tf32": False})
    from dreamgym.configs import compose
    from dreamgym.worldmodel.evaluate import run

    metrics = {}
    for dev in dict.fromkeys([device, "cpu"]):
        out = work / f"eval_{dev}"
        t0 = time.perf_counter()
        run(compose("eval_wm", _eval_args(ckpt, data, out, dev, sizes)[1:]))  # what `dreamgym eval-wm ...` runs, in this process (TF32 off)
        fig.set([dev, "wall_s"], time.perf_counter() - t0)
        # the conditional-mean arm of every task: a function of the inputs alone
        tasks = json.loads((out / "metrics.json").read_text())
        metrics[dev] = {f"{t}/{k}": v["value"] for t, s in tasks["tasks"].items() for k, v in s["model"]["mean"].items()}
        fig.set([dev, "model"], metrics[dev])
    fig.set(["horizons"], tasks["horizons"])
    worst, bad = 0.0, []
    for name, vals in metrics["cpu"].items():
        for h, a, b in zip(tasks["horizons"], vals, metrics[device][name]):
            if a is None or b is None:
                continue
            worst = max(worst, abs(a - b) / max(abs(a), 1e-12))
            if abs(a - b) > EVAL_ATOL + EVAL_RTOL * abs(a):
                bad.append(f"{name}@{h}: cpu {a:.6g} vs {device} {b:.6g}")
    fig.set(["worst_relative_difference"], worst)
    fig.set(["disagreements"], bad)
    if bad:
        raise RuntimeError(f"eval-wm on {device} and cpu disagree beyond rtol {EVAL_RTOL}: " + "; ".join(bad[:8]))


def stage_warmup_cpu(fig: Figures, device: str, sizes: dict, work: Path) -> None:
    """Compile MuJoCo Warp's CPU kernels (physics and ego render) into Warp's kernel cache."""
    import torch

    from dreamgym.envs.vec_env import EgoRoomVecEnv

    t0 = time.perf_counter()
    env = EgoRoomVecEnv(num_envs=2, task="reach", resolution=32, device="cpu", seed=0, return_tensors=True)
    env.reset_tensors(seed=0)
    env.step_tensors(torch.zeros(2, 6))
    fig.set(["compile_s"], time.perf_counter() - t0)


RUNNERS = {
    "warmup_cpu": stage_warmup_cpu,
    "info": stage_info,
    "env": stage_env,
    "tests": stage_tests,
    "dream": stage_dream,
    "data": stage_data,
    "train": stage_train,
    "eval": stage_eval,
}


# ------------------------------------------------------------------------------ the run
def run_stage_in_process(name: str, device: str, work: Path, figures: Path) -> int:
    """Entry point of one stage's process: run it, figures to ``figures``; exit 0 on success."""
    sizes = SIZES["cuda" if device.startswith("cuda") else "cpu"]
    RUNNERS[name](Figures(figures), device, sizes, work)
    return 0


def _run_stage(name: str, device: str, work: Path, limit: float) -> dict[str, Any]:
    figures, log = work / f"{name}.figures.json", work / f"{name}.log"
    cmd = [sys.executable, "-m", "dreamgym.benchmarks.gpu_check", "--stage", name, "--device", device, "--work", str(work)]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            rc, status = proc.wait(timeout=limit), None
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the stage and every process it started
            proc.wait()
            rc, status = None, "timed_out"
    out: dict[str, Any] = {"status": status or ("ok" if rc == 0 else "failed"), "wall_s": time.perf_counter() - t0, "limit_s": limit}
    if out["status"] != "ok":
        out["last_lines"] = _tail(log.read_text(errors="replace"), 30)
    out["figures"] = json.loads(figures.read_text()) if figures.exists() else {}
    return out


def _start_background(name: str, device: str, work: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dreamgym.benchmarks.gpu_check", "--stage", name, "--device", device, "--work", str(work)]
    with open(work / f"{name}.log", "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def _finish_background(proc: subprocess.Popen, work: Path) -> dict[str, Any]:
    rc = proc.poll()
    if rc is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    name = proc.args[4]
    out: dict[str, Any] = {"status": "ok" if rc == 0 else ("still_running" if rc is None else "failed")}
    if rc not in (0, None):
        out["last_lines"] = _tail((work / f"{name}.log").read_text(errors="replace"), 20)
    fig = work / f"{name}.figures.json"
    out["figures"] = json.loads(fig.read_text()) if fig.exists() else {}
    return out


def _ratios(result: dict[str, Any]) -> dict[str, Any]:
    """The targets of benchmarks/GPU.md, where the figures exist."""
    st = result["stages"]
    out: dict[str, Any] = {}
    env = st.get("env", {}).get("figures", {})
    if "4096" in env:
        best = max(v.get("steps_per_s", 0) for k, v in env["4096"].items() if k != "setup")
        out["env_steps_per_s_at_4096"] = {"value": best, "target": 20000, "met": best >= 20000}
    ref = REPO / "benchmarks" / "results" / "bench_env.json"
    if ref.exists() and env:
        cpu = json.loads(ref.read_text())["batched_steps_per_s"]
        top = max(cpu, key=int)
        out["env_cpu_reference"] = {"source": str(ref.relative_to(REPO)), "batch": int(top), "steps_per_s": cpu[top]}
    dream = st.get("dream", {}).get("figures", {})
    for B, sets in dream.items():
        if B.isdigit():
            for name, v in sets.items():
                if "dream_over_sim" in v:
                    out.setdefault("dream_over_sim", {}).setdefault(name, {})[B] = v["dream_over_sim"]
    train = st.get("train", {}).get("figures", {})
    if "plain_over_cpu_2_threads" in train:
        out["train_over_cpu_2_threads"] = {
            "value": train["plain_over_cpu_2_threads"],
            "target": 50,
            "met": train["plain_over_cpu_2_threads"] >= 50,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run at tiny sizes)")
    p.add_argument(
        "--out", default=None, help="the JSON (default: benchmarks/results/gpu_check.json; a dry run: <work>/gpu_check_dry_run.json)"
    )
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--budget-s", type=float, default=540.0, help="seconds for all stages together")
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="dreamgym_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    if a.stage:
        return run_stage_in_process(a.stage, a.device, work, work / f"{a.stage}.figures.json")
    names = [s for s in a.stages.split(",") if s]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise SystemExit(f"gpu_check: unknown stages {unknown}; valid: {list(STAGES)}")
    default_out = REPO / "benchmarks" / "results" / "gpu_check.json" if a.device.startswith("cuda") else work / "gpu_check_dry_run.json"
    out = Path(a.out) if a.out else default_out
    deadline = time.perf_counter() + a.budget_s
    result: dict[str, Any] = {"device": a.device, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": a.budget_s, "stages": {}}
    if (work / "setup.json").exists():  # written by gpu_check.sh: how Python was set up
        result["setup"] = json.loads((work / "setup.json").read_text())
    warmup = _start_background("warmup_cpu", a.device, work) if a.device.startswith("cuda") else None
    for i, name in enumerate(names):
        scale = SIZES["cuda" if a.device.startswith("cuda") else "cpu"]["limit_scale"]
        reserve = scale * sum(STAGES[n][1] for n in names[i + 1 :])
        limit = min(scale * STAGES[name][0], deadline - time.perf_counter() - reserve)
        if limit < 5:
            result["stages"][name] = {"status": "not_run", "reason": "no time left in the budget"}
            continue
        print(f"gpu_check: {name} (limit {limit:.0f} s) ...", flush=True)
        result["stages"][name] = r = _run_stage(name, a.device, work, limit)
        print(f"gpu_check: {name} {r['status']} in {r['wall_s']:.0f} s", flush=True)
        if r["status"] != "ok":
            print(r.get("last_lines", ""), flush=True)
        result["targets"] = _ratios(result)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if warmup is not None:
        result["background"] = {"warmup_cpu": _finish_background(warmup, work)}
    result["wall_s"] = a.budget_s - (deadline - time.perf_counter())
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"gpu_check: wrote {out}", flush=True)
    return 0 if all(r.get("status") == "ok" for r in result["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
