"""``dreamgym bench live``: is ``dreamgym live`` real time on this machine?

A scripted client replays a recorded partner (a ``SocialSceneTask`` scene's partner, approach then
wave, turned into headset and controller poses by ``avatars.live.replay``) to a live server on
loopback at ``rate_hz`` (30 by default, the page's clock in each message) and times:

- ``server_work_ms``: the server's work per control step (retarget + simulate + act), measured in
  the session (``LiveSession.step_ms``);
- ``round_trip_ms``: send to reply received, per message, at the client.

Median and 95th percentile of each, per arm: the simulator with C MuJoCo (``mujoco``, what
``dreamgym live`` runs by default) or MuJoCo Warp with one world (``warp``), and the world model
(``dream``, ``backend=dream``: the avatar's body and the props dreamed, the person's body given). Server and client share this process (the server on its own thread and event loop), and
other jobs may share the cores: ``machine.load_average_end`` in the JSON says how busy they were.
Targets (issue 21): work <= 20 ms per step, round trip <= 50 ms at the 95th percentile.

``wave_back`` (no socket): does the avatar wave back to a silent wave? On ``wave_rooms`` rooms
the recorded partner approaches and waves, in silence, through a ``LiveSession`` with and without
``gesture_words`` (the recognised gesture's words reaching the avatar). Per room, the share of
the wave's control steps after its first 20 in which the avatar's right hand is above its head,
and whether that share reaches 0.5 (the scenes' judge of a wave); the mean per setting with a 95 %
bootstrap interval over rooms, and the paired difference.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from dreamgym.benchmarks.runner import start


def _figures(values) -> dict:
    v = np.asarray(values, float)
    return {"median": round(float(np.median(v)), 3), "p95": round(float(np.percentile(v, 95)), 3), "n": int(v.size)}


ARMS = ("mujoco", "warp", "dream")


def _session(arm: str, room_seed: int):
    from dreamgym.avatars.live.session import LiveSession

    if arm not in ARMS:
        raise ValueError(f"bench live: arms must be among {list(ARMS)}, got {arm!r}")
    return LiveSession("dream", room_seed=room_seed) if arm == "dream" else LiveSession("sim", room_seed=room_seed, physics=arm)


def measure(arm: str, cfg) -> dict:
    """One arm (``ARMS``): a server with that backend and the replayed partner."""
    from dreamgym.avatars.live.replay import play, recorded_partner
    from dreamgym.avatars.live.server import LiveServer
    from dreamgym.avatars.live.session import LiveSession
    from dreamgym.envs import partner as P

    sessions = []

    def make():
        sessions.append(_session(arm, int(cfg.room_seed)))
        return sessions[-1]

    probe = LiveSession("sim", room_seed=int(cfg.room_seed), physics="mujoco")
    frames = recorded_partner(int(cfg.room_seed), [P.APPROACH, P.WAVE], int(cfg.steps), probe.frame_of_room)
    server = LiveServer(make, port=0)
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), loop.create_future()

    async def serve():
        ev = asyncio.Event()
        task = asyncio.ensure_future(server.run(ev, stop))
        await ev.wait()
        ready.set()
        await task

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(60)
    rate = float(cfg.rate_hz)
    # the page's frames at rate_hz: the recorded 20 Hz partner resampled (nearest step)
    n = int(len(frames) * rate * 0.05)
    msgs = [frames[min(len(frames) - 1, int(i / rate / 0.05))] for i in range(n)]
    result = asyncio.run(play(f"ws://127.0.0.1:{server.port}/live", msgs, rate))
    loop.call_soon_threadsafe(stop.set_result, None)
    thread.join(10)
    work = sessions[-1].step_ms[int(cfg.warmup_steps) :]
    rtt = result["rtt_ms"][int(cfg.warmup_steps * rate * 0.05) :]
    return {
        "backend": "dream" if arm == "dream" else "sim",
        "physics": None if arm == "dream" else arm,
        "messages": len(msgs),
        "steps": sessions[-1].steps,
        "server_work_ms": _figures(work),
        "round_trip_ms": _figures(rtt),
        "errors": len(result["errors"]),
        "meets_targets": bool(np.median(work) <= 20.0 and np.percentile(work, 95) <= 20.0 and np.percentile(rtt, 95) <= 50.0),
    }


def _wave_share(room_seed: int, steps: int, gesture_words: bool) -> dict:
    from dreamgym.avatars.live.replay import recorded_partner
    from dreamgym.avatars.live.session import LiveSession
    from dreamgym.envs import partner as P

    s = LiveSession("sim", room_seed=room_seed, gesture_words=gesture_words)
    for i, f in enumerate(recorded_partner(room_seed, [P.APPROACH, P.WAVE], steps, s.frame_of_room)):
        s.frame(dict(f, t=i * 0.05))
    answer = [e for e in s.log if e.behaviour == "wave"][20:]
    if not answer:
        raise RuntimeError(f"bench live: the recorded partner of room {room_seed} was not seen waving; raise steps")
    return {
        "hand_above_head": float(np.mean([e.hand_above_head > 0 for e in answer])),
        "facing": float(np.mean([e.facing_error < 0.5 for e in answer])),
        "conversational": float(np.mean([0.8 <= e.distance <= 2.0 for e in answer])),
        "steps": len(answer),
    }


def wave_back(cfg) -> dict:
    """The avatar's answer to a silent wave, with and without ``gesture_words`` (module docstring)."""
    from dreamgym.benchmarks.transfer_stats import paired_bootstrap

    rooms = list(range(int(cfg.room_seed), int(cfg.room_seed) + int(cfg.wave_rooms)))
    arms = {g: [_wave_share(r, int(cfg.steps), g) for r in rooms] for g in (False, True)}
    out: dict = {"rooms": rooms}
    for g, rows in arms.items():
        share = [r["hand_above_head"] for r in rows]
        boot = paired_bootstrap(share, [0.0] * len(share))
        out["gesture_words" if g else "silent"] = {
            "hand_above_head": boot["diff"],
            "hand_above_head_ci95": boot["ci95"],
            "waved_back": float(np.mean([v >= 0.5 for v in share])),
            "facing": float(np.mean([r["facing"] for r in rows])),
            "conversational": float(np.mean([r["conversational"] for r in rows])),
            "per_room": rows,
        }
    on, off = ([r["hand_above_head"] for r in arms[g]] for g in (True, False))
    out["difference"] = paired_bootstrap(on, off)
    return out


def run(cfg) -> int:
    """Entry point of ``dreamgym bench live`` (``configs/bench/live.yaml``)."""
    import torch

    torch.set_num_threads(int(cfg.num_threads))
    bench = start("live", cfg)
    for arm in cfg.arms:
        bench.add(arm, measure(arm, cfg))
    if int(cfg.wave_rooms) > 0:
        bench.add("wave_back", wave_back(cfg))
    bench.summary = {
        "targets": {"server_work_ms": 20.0, "round_trip_p95_ms": 50.0},
        "default_arm": "mujoco",  # what dreamgym live runs unless told otherwise
        "note": "server and client in one process; other jobs may share the 2 CPU cores (see machine.load_average_end)",
        **{f"{k}_work_p95_ms": a["server_work_ms"]["p95"] for k, a in bench.arms.items() if "server_work_ms" in a},
        **{f"{k}_round_trip_p95_ms": a["round_trip_ms"]["p95"] for k, a in bench.arms.items() if "round_trip_ms" in a},
    }
    bench.write(cfg.out)
    return 0
