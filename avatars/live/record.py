"""A live session saved as a one-episode dataset (``rollouts.dataset``), which ``dreamgym export``
and ``dreamgym view`` read like any other.

The episode holds ``motion`` (the avatar) and ``partner_motion`` (the person), the avatar's
actions, the physics states (the dream backend: the start room with the dreamed props), and in its
attributes the words of both (``utterances``: a JSON list of ``{"step", "who", "text"}``), the
person's behaviour per step as recognised (``behaviours``: JSON list of names) and the backend.
Its task is ``live``: the person has no script, so a world model conditioned on scripted partner
commands cannot re-dream it (view it with ``checkpoint=none``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dreamgym.envs import partner as P
from dreamgym.envs import scene
from dreamgym.envs.tasks import INSTRUCTIONS, SOCIAL_INSTRUCTION
from dreamgym.rollouts.dataset import Episode, Manifest, room_split, write_shard

HELDOUT_FRACTION = 0.1


def env_record(session, nq: int, nv: int) -> dict:
    """The manifest's ``env`` entry of a live session (the fields ``collect`` writes that apply)."""
    from dreamgym.rollouts.dataset import FORMAT_VERSION

    obs = {k: {"shape": [227], "dtype": "float32"} for k in ("motion", "partner_motion")}
    return {
        "env_id": "dreamgym/EgoRoomVec-v0" if session.backend_name == "sim" else "dreamgym/Dream-v0",
        "env_version": 0,
        "obs_layout_version": FORMAT_VERSION,
        "task": "live",
        "max_episode_steps": len(session.recording.actions),
        "resolution": [32, 32],
        "obs_keys": ["motion", "partner_motion"],
        "observation_space": obs,
        "action_space": {"shape": [6], "dtype": "float32", "low": -1.0, "high": 1.0},
        "control_dt": float(scene.CONTROL_DT),
        "frame_skip": int(scene.FRAME_SKIP),
        "nq": int(nq),
        "nv": int(nv),
        "instructions": list(INSTRUCTIONS),
        "env_kwargs": {"task": "live", "obs_keys": ["motion", "partner_motion"]},
    }


def save_session(session, out: str | Path) -> Path:
    """Write ``session`` (a ``LiveSession`` with at least one step) as the next episode of the dataset
    ``out`` (made if absent); returns ``out``."""
    rec = session.recording
    if not rec.actions:
        raise ValueError("the live session has no steps to save (no frame reached the server)")
    out = Path(out)
    T = len(rec.actions)
    qpos, qvel = np.stack(rec.qpos), np.stack(rec.qvel)
    if (out / "manifest.json").exists():
        manifest = Manifest.load(out)
        if manifest.data["env"].get("task") != "live":
            raise ValueError(f"{out} is a dataset of task {manifest.data['env'].get('task')!r}, not of live sessions; choose another save=")
    else:
        out.mkdir(parents=True, exist_ok=True)
        collection = {"command": "dreamgym live", "backend": session.backend_name, "room_seed": session.room_seed}
        manifest = Manifest.new(out, env_record(session, qpos.shape[1], qvel.shape[1]), collection, HELDOUT_FRACTION)
    said = [u["text"] for u in rec.utterances if u["who"] == "person"]
    ep = Episode(
        observations={"motion": np.stack(rec.motion), "partner_motion": np.stack(rec.partner_motion)},
        actions=np.stack(rec.actions),
        rewards=np.zeros(T, np.float32),
        terminations=np.zeros(T, bool),
        truncations=np.eye(1, T, T - 1, dtype=bool)[0],
        qpos=qpos,
        qvel=qvel,
        attrs={
            "task": "live",
            "instruction": INSTRUCTIONS.index(SOCIAL_INSTRUCTION),
            "instruction_text": SOCIAL_INSTRUCTION,
            "room_seed": session.room_seed,
            "behaviour": "live",
            "partner_behaviour": P.BEHAVIOURS[rec.behaviour[-1]],
            "utterance": said[0] if said else "",
            "utterances": json.dumps(rec.utterances),
            "behaviours": json.dumps([P.BEHAVIOURS[b] for b in rec.behaviour]),
            "backend": session.backend_name,
            "success": False,
            "terminated": False,
            "truncated": True,
            "cut": False,
            "split": room_split(session.room_seed, manifest.heldout_fraction),
            "key": f"live-{manifest.num_episodes}",
        },
    )
    entry = write_shard(out, manifest.next_shard_name(), [(manifest.num_episodes, ep)], manifest.data["env"])
    manifest.shards.append(entry)
    manifest.save()
    return out
