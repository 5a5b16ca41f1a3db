"""``dreamgym bench live``: is ``dreamgym live`` real time on this machine?

A scripted client replays a recorded partner (a ``SocialSceneTask`` scene's partner, approach then
wave, turned into headset and controller poses by ``avatars.live.replay``) to a live server on
loopback at ``rate_hz`` (30 by default, the page's clock in each message) and times:

- ``server_work_ms``: the server's work per control step (retarget + simulate + act), measured in
  the session (``LiveSession.step_ms``);
- ``round_trip_ms``: send to reply received, per message, at the client.

Median and 95th percentile of each, per simulator physics (C MuJoCo and MuJoCo Warp with one
world). Server and client share this process (the server on its own thread and event loop), and
other jobs may share the cores: ``machine.load_average_end`` in the JSON says how busy they were.
Targets (issue 21): work <= 20 ms per step, round trip <= 50 ms at the 95th percentile.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from dreamgym.benchmarks.runner import start


def _figures(values) -> dict:
    v = np.asarray(values, float)
    return {"median": round(float(np.median(v)), 3), "p95": round(float(np.percentile(v, 95)), 3), "n": int(v.size)}


def measure(physics: str, cfg) -> dict:
    """One arm: a server with ``physics`` and the replayed partner."""
    from dreamgym.avatars.live.replay import play, recorded_partner
    from dreamgym.avatars.live.server import LiveServer
    from dreamgym.avatars.live.session import LiveSession
    from dreamgym.envs import partner as P

    sessions = []

    def make():
        sessions.append(LiveSession("sim", room_seed=int(cfg.room_seed), physics=physics))
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
        "physics": physics,
        "messages": len(msgs),
        "steps": sessions[-1].steps,
        "server_work_ms": _figures(work),
        "round_trip_ms": _figures(rtt),
        "errors": len(result["errors"]),
        "meets_targets": bool(np.median(work) <= 20.0 and np.percentile(work, 95) <= 20.0 and np.percentile(rtt, 95) <= 50.0),
    }


def run(cfg) -> int:
    """Entry point of ``dreamgym bench live`` (``configs/bench/live.yaml``)."""
    import torch

    torch.set_num_threads(int(cfg.num_threads))
    bench = start("live", cfg)
    for physics in cfg.physics:
        bench.add(physics, measure(physics, cfg))
    bench.summary = {
        "targets": {"server_work_ms": 20.0, "round_trip_p95_ms": 50.0},
        "note": "server and client in one process; other jobs may share the 2 CPU cores (see machine.load_average_end)",
        **{f"{k}_work_p95_ms": a["server_work_ms"]["p95"] for k, a in bench.arms.items()},
        **{f"{k}_round_trip_p95_ms": a["round_trip_ms"]["p95"] for k, a in bench.arms.items()},
    }
    bench.write(cfg.out)
    return 0
