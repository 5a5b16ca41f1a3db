"""The crash-safe, resumable collection loop that ``collect`` (the room) and ``gym_collect``
(Gymnasium envs) share.

A collection runs in rounds of ``round_steps`` steps over B worlds, each a pure function of the
collection's settings and its index. The manifest records every round started and completed;
a re-run replays the first unfinished round without writing the episodes the manifest already
lists, and carries on. Episodes reach disk through ``writer.ShardWriter`` (atomic shards, listed
only once complete); only one process may write a dataset at a time (a lock file).
"""

from __future__ import annotations

import fcntl
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dataset import SHARD_PATTERN, Manifest, is_temp_file
from .writer import ShardWriter

__all__ = ["CollectResult", "run_collection"]


@dataclass
class CollectResult:
    """What a ``collect`` call did and what the dataset now holds."""

    out: Path
    episodes: int  # in the dataset
    steps: int  # in the dataset
    new_episodes: int
    new_steps: int
    simulated_steps: int  # world-steps stepped by this call, replays included
    seconds: float  # stepping and writing, without building the env
    complete: bool  # the dataset holds every step asked for
    writer_busy_seconds: float  # time the writer thread spent packing and writing shards
    stopped: str | None = None  # "budget" (stop_after_steps) or "interrupted" (Ctrl-C, SIGTERM)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["out"] = str(self.out)
        return d


class _Stop(Exception):
    pass


def _claim(root: Path):
    """An exclusive lock on ``root`` for this process (released by the OS if it dies)."""
    fh = open(root / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise SystemExit(f"dreamgym collect: another collection is writing to {root}; wait for it or use another out=") from None
    return fh


def _clean_strays(root: Path, manifest: Manifest) -> list[str]:
    """Remove temporary files and shards that a crash left unlisted; returns their names."""
    listed = {s["file"] for s in manifest.shards}
    removed = []
    for p in root.iterdir():
        if is_temp_file(p.name) or (SHARD_PATTERN.match(p.name) and p.name not in listed):
            p.unlink()
            removed.append(p.name)
    return removed


def _check_resume(
    manifest: Manifest, settings: Mapping[str, Any], heldout_fraction: float, root: Path, keys: Sequence[str], kind: str = "room"
) -> None:
    """Refuse to continue a dataset collected with other settings, listing every difference."""
    have_kind = manifest.data["env"].get("kind", "room")
    if have_kind != kind:
        what = {"room": "the room (collected without env=)", "gym": f"the Gymnasium env {manifest.data['env'].get('env_id')}"}
        raise SystemExit(
            f"dreamgym collect: {root} holds episodes of {what.get(have_kind, have_kind)}, this run collects "
            f"{'from env=' + str(settings.get('env_id')) if kind == 'gym' else 'the room'}; choose another out="
        )
    have = manifest.data["collection"]
    diff = {k: (have.get(k), settings[k]) for k in keys if have.get(k) != settings[k]}
    if abs(manifest.heldout_fraction - heldout_fraction) > 1e-12:
        diff["heldout_fraction"] = (manifest.heldout_fraction, heldout_fraction)
    if diff:
        lines = ", ".join(f"{k}: dataset {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise SystemExit(
            f"dreamgym collect: {root} was collected with other settings ({lines}); "
            "re-run with the dataset's settings to continue it, or choose another out="
        )


def run_collection(
    out: str | Path,
    settings: Mapping[str, Any],
    *,
    steps: int,
    heldout_fraction: float,
    open_env: Callable[[], tuple[dict[str, Any], Callable[[ShardWriter, Manifest, int], Any]]],
    desc: str,
    shard_episodes: int,
    queue_episodes: int,
    shard_kwargs: Mapping[str, Any],
    stop_after_steps: int | None,
    progress: bool,
    resume_keys: Sequence[str],
    kind: str = "room",
) -> CollectResult:
    """The crash-safe, resumable collection into ``out`` that the room and Gymnasium envs share.

    ``settings`` (with ``num_envs`` and ``round_steps``) shape the data; ``resume_keys`` of them
    must match the dataset's. ``open_env()`` is called only when there is something to collect:
    it returns the env spec the manifest records and ``make_collector(writer, manifest,
    capacity)``, an object with ``run_round(r, L, on_step)``, ``simulated`` and ``new_steps``
    that replays without writing the episodes the manifest already lists.
    """
    from tqdm import tqdm

    B, round_steps = int(settings["num_envs"]), int(settings["round_steps"])
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    lock = _claim(root)
    try:
        manifest = Manifest.load(root) if (root / "manifest.json").exists() else None
        if manifest is not None:
            _check_resume(manifest, settings, heldout_fraction, root, resume_keys, kind)
        if manifest is not None and _finished(manifest, steps, B, round_steps):
            n, k = manifest.num_episodes, manifest.num_steps
            return CollectResult(root, n, k, 0, 0, 0, 0.0, True, 0.0)
        spec, make_collector = open_env()
        if manifest is None:
            manifest = Manifest.new(root, spec, {**settings, "steps": steps}, heldout_fraction)
            manifest.save()
        removed = _clean_strays(root, manifest)
        if removed:
            print(
                f"removed {len(removed)} file(s) an interrupted run left behind: {', '.join(removed[:4])}{' ...' if len(removed) > 4 else ''}"
            )
        manifest.data["collection"]["steps"] = max(steps, int(manifest.data["collection"].get("steps", 0)))
        return _collect(
            make_collector,
            manifest,
            B,
            round_steps,
            steps,
            stop_after_steps,
            progress,
            tqdm,
            desc,
            shard_episodes=shard_episodes,
            queue_episodes=queue_episodes,
            shard_kwargs=dict(shard_kwargs),
        )
    finally:
        lock.close()


def _plan(manifest: Manifest, per_world: int, round_steps: int) -> list[int]:
    """Steps of every round, recorded rounds first (their length is fixed once started)."""
    plan = [int(r["steps"]) for r in sorted(manifest.data["rounds"], key=lambda r: r["index"])]
    while sum(plan) < per_world:
        plan.append(min(round_steps, per_world - sum(plan)))
    return plan


def _finished(manifest: Manifest, steps: int, num_envs: int, round_steps: int) -> bool:
    """Whether the dataset already holds every round that ``steps`` asks for."""
    plan = _plan(manifest, math.ceil(steps / num_envs), round_steps)
    done = {r["index"] for r in manifest.data["rounds"] if r.get("complete")}
    return all(r in done for r in range(len(plan)))


def _collect(
    make_collector,
    manifest: Manifest,
    B: int,
    round_steps: int,
    steps: int,
    stop_after: int | None,
    progress: bool,
    tqdm,
    desc: str,
    shard_episodes: int,
    queue_episodes: int,
    shard_kwargs: dict,
) -> CollectResult:
    plan = _plan(manifest, math.ceil(steps / B), round_steps)
    complete = {r["index"] for r in manifest.data["rounds"] if r.get("complete")}
    start_eps, start_steps = manifest.num_episodes, manifest.num_steps
    writer = ShardWriter(manifest.root, manifest, shard_episodes, queue_episodes, shard_kwargs)
    collector = make_collector(writer, manifest, max(plan))
    total = sum(plan) * B
    # the bar counts what is stored (in shards listed by the manifest): what a kill would keep
    bar = tqdm(total=total, initial=min(start_steps, total), unit="step", disable=not progress, smoothing=0.1, desc=desc)
    stopped: str | None = None
    t0 = time.perf_counter()

    def show_stored() -> None:
        bar.update(start_steps + writer.written_steps - bar.n)

    def on_step(fresh: int, t: int) -> None:
        show_stored()
        if fresh == 0:
            bar.set_postfix_str(f"replaying round {r} step {t + 1}/{plan[r]}", refresh=False)
        else:
            unstored = collector.new_steps - writer.written_steps
            bar.set_postfix_str(f"{start_eps + writer.written_episodes} episodes stored, {unstored} steps not yet", refresh=False)
        if stop_after is not None and collector.new_steps >= stop_after:
            raise _Stop

    def on_term(signum, frame):  # SIGTERM: stop like Ctrl-C, writing finished episodes first
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    try:
        for r in range(len(plan)):
            if r not in complete:
                collector.run_round(r, plan[r], on_step)
    except _Stop:
        stopped = "budget"
    except KeyboardInterrupt:
        stopped = "interrupted"
        print(f"\ninterrupted: writing finished episodes; re-run the same command to continue {manifest.root}")
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        try:
            writer.close()
            show_stored()
            bar.set_postfix_str(f"{start_eps + writer.written_episodes} episodes stored", refresh=False)
        finally:
            bar.close()
    seconds = time.perf_counter() - t0
    rounds = manifest.data["rounds"]
    done_all = stopped is None and len(rounds) >= len(plan) and all(r.get("complete") for r in rounds)
    return CollectResult(
        out=manifest.root,
        episodes=manifest.num_episodes,
        steps=manifest.num_steps,
        new_episodes=manifest.num_episodes - start_eps,
        new_steps=manifest.num_steps - start_steps,
        simulated_steps=collector.simulated,
        seconds=seconds,
        complete=done_all,
        writer_busy_seconds=writer.busy_seconds,
        stopped=stopped,
    )
