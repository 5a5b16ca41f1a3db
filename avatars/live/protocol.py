"""The live session's messages: JSON over a WebSocket, one message per frame each way.

Page -> server (``frame``)::

    {"type": "frame", "t": 12.345,                       # seconds, the page's clock (optional)
     "head": {"position": [x, y, z], "orientation": [x, y, z, w]},
     "left": {"position": [...], "orientation": [...]},  # left wrist / controller (optional)
     "right": {...},                                     # right wrist / controller (optional)
     "utterance": "hello there"}                         # what the person said or typed (optional)

Poses are in the page's WebXR ``local-floor`` space (x right, y up, -z forward, metres,
quaternions x y z w), whose origin is the partner's start place in the room (see
``retarget.SessionFrame``). ``{"type": "bye"}`` ends the session (the server saves it when asked to).

Server -> page: first ``hello`` (the room, the start poses, the bones to draw), then one
``state`` per frame::

    {"type": "state", "step": 41, "t": 12.345,
     "agent": [[x, y, z] * 22],      # the avatar's SMPL-X skeleton joints (envs.skeleton order), WebXR frame
     "partner": [[x, y, z] * 22],    # the person's body as the simulator holds it, same frame
     "props": [[x, y, z] * 4],       # the props' centres, same frame
     "behaviour": "wave",            # the person's behaviour as recognised (avatars.live.words)
     "say": "Hi! Nice to see you.",  # the avatar's words, only when it speaks (all of this frame's)
     "work_ms": 3.2}                 # the server's work for this frame

A message that cannot be read gets ``{"type": "error", "error": "<one line>"}`` and the session
goes on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

MAX_MESSAGE = 64 * 1024  # bytes; a frame is a few hundred
MAX_UTTERANCE = 500  # characters
MAX_COORD = 100.0  # metres from the origin


@dataclass
class Pose:
    position: np.ndarray  # (3,)
    orientation: np.ndarray  # (4,) x y z w, unit


@dataclass
class Frame:
    head: Pose
    left: Pose | None
    right: Pose | None
    utterance: str
    t: float | None


def _vector(v, n: int, what: str) -> np.ndarray:
    if not isinstance(v, list) or len(v) != n or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise ValueError(f"{what} must be a list of {n} numbers, got {json.dumps(v)[:60]}")
    a = np.asarray(v, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains a non-finite number")
    return a


def _pose(obj, what: str) -> Pose:
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be an object with position and orientation, got {type(obj).__name__}")
    for key in ("position", "orientation"):
        if key not in obj:
            raise ValueError(f"{what} has no {key!r}")
    p = _vector(obj["position"], 3, f"{what}.position")
    if np.abs(p).max() > MAX_COORD:
        raise ValueError(f"{what}.position {p.round(2).tolist()} is more than {MAX_COORD:g} m from the origin")
    q = _vector(obj["orientation"], 4, f"{what}.orientation")
    norm = float(np.linalg.norm(q))
    if not 0.5 < norm < 1.5:
        raise ValueError(f"{what}.orientation must be a unit quaternion (x, y, z, w), its norm is {norm:.3g}")
    return Pose(p, q / norm)


def parse_message(raw: str | bytes) -> dict:
    """The JSON object of a message; ``ValueError`` in one line when it is not one."""
    if isinstance(raw, bytes):
        raise ValueError("binary messages are not part of the protocol; send JSON text")
    if len(raw) > MAX_MESSAGE:
        raise ValueError(f"message of {len(raw)} bytes is over the {MAX_MESSAGE}-byte limit")
    try:
        msg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"message is not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(msg, dict) or msg.get("type") not in ("frame", "bye"):
        got = msg.get("type") if isinstance(msg, dict) else type(msg).__name__
        raise ValueError(f"message type must be 'frame' or 'bye', got {got!r}")
    return msg


def parse_frame(msg: dict) -> Frame:
    """A ``frame`` message as a ``Frame``; ``ValueError`` naming the first thing wrong."""
    unknown = sorted(set(msg) - {"type", "t", "head", "left", "right", "utterance"})
    if unknown:
        raise ValueError(f"frame has unknown keys {unknown}; valid: t, head, left, right, utterance")
    if "head" not in msg:
        raise ValueError("frame has no 'head' pose")
    t = msg.get("t")
    if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t)):
        raise ValueError(f"frame.t must be a number of seconds, got {json.dumps(t)[:40]}")
    utt = msg.get("utterance") or ""
    if not isinstance(utt, str):
        raise ValueError(f"frame.utterance must be a string, got {type(utt).__name__}")
    if len(utt) > MAX_UTTERANCE:
        raise ValueError(f"frame.utterance has {len(utt)} characters, at most {MAX_UTTERANCE}")
    hands = {k: _pose(msg[k], k) if msg.get(k) is not None else None for k in ("left", "right")}
    return Frame(_pose(msg["head"], "head"), hands["left"], hands["right"], utt.strip(), None if t is None else float(t))


def error_message(e: BaseException) -> str:
    """The one-line error reply."""
    line = " ".join(str(e).split()) or type(e).__name__
    return json.dumps({"type": "error", "error": line})
