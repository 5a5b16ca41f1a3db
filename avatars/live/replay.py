"""A recorded partner played to a live server as if it wore a headset (for ``bench live`` and tests).

``recorded_partner`` runs a ``SocialSceneTask`` scene in C MuJoCo (scripted partner, responder
agent) and turns the partner's body into the page's messages: the eyes (head joint plus the ego
camera offset) and the head's heading as the headset pose, the wrist joints as the controllers,
all in the session's WebXR frame (``retarget.SessionFrame`` of the same room). ``play`` sends them
over a WebSocket at a fixed rate and times each round trip.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence

import numpy as np

from dreamgym.envs import scene

from .retarget import SessionFrame


def recorded_partner(room_seed: int, behaviours: Sequence[int], steps: int, frame: SessionFrame) -> list[dict]:
    """``frame`` messages (without ``t``), one per control step, of the scene's partner."""
    from dreamgym.envs.ego_room_env import EgoRoomEnv
    from dreamgym.policies.social_scenes import SocialSceneTask

    env = EgoRoomEnv(task=SocialSceneTask(list(behaviours), segment=60), obs_keys=("motion", "partner_motion"))
    env.reset(options={"room_seed": int(room_seed)})
    out = []
    for _ in range(int(steps)):
        st = env.core.state
        joints, yaw = st.partner_joints[0].numpy().astype(float), float(st.partner_yaw[0])
        eye = joints[15] + np.array([math.cos(yaw), math.sin(yaw), 0.0]) * scene.EGO_CAM_POS[0] + np.array([0, 0, scene.EGO_CAM_POS[2]])
        xr = frame.points_from_world(np.stack([eye, joints[20], joints[21]]))
        r = yaw - frame.yaw
        quat = [0.0, math.sin(r / 2), 0.0, math.cos(r / 2)]
        pose = lambda p: {"position": [round(float(v), 4) for v in p], "orientation": quat}  # noqa: E731
        out.append({"type": "frame", "head": pose(xr[0]), "left": pose(xr[1]), "right": pose(xr[2])})
        env.step(env.expert_action())
    return out


async def play(url: str, frames: list[dict], rate_hz: float = 30.0, ssl=None) -> dict:
    """Send ``frames`` at ``rate_hz`` (frame i at t = i / rate, the page's clock), one reply each.

    Returns the hello, the replies and the round trips (ms), and the error replies seen."""
    from websockets.asyncio.client import connect

    replies, rtt, errors = [], [], []
    async with connect(url, ssl=ssl, max_size=2**22) as ws:
        hello = json.loads(await ws.recv())
        t0 = time.perf_counter()
        for i, f in enumerate(frames):
            due = t0 + i / rate_hz
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            sent = time.perf_counter()
            await ws.send(json.dumps(dict(f, t=i / rate_hz)))
            reply = json.loads(await ws.recv())
            rtt.append((time.perf_counter() - sent) * 1e3)
            (errors if reply.get("type") == "error" else replies).append(reply)
        await ws.send(json.dumps({"type": "bye"}))
    return {"hello": hello, "replies": replies, "rtt_ms": rtt, "errors": errors}
