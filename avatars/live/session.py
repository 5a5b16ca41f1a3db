"""One live session: a person (retargeted onto the partner) and the social avatar, stepped together.

``LiveSession.frame(msg)`` takes one page message and returns the reply: it retargets the
headset onto the partner (``retarget``), and when the page's clock has moved on by a control step
(``scene.CONTROL_DT``; at most ``MAX_CATCH_UP`` steps per message) it steps the world: the
partner's pose goes in kinematically, the shipped ``SocialAvatarPolicy`` acts on ``motion``,
``partner_motion``, the person's words and the scene's objects, and its action steps

- ``backend="sim"``: ``EgoRoomVecEnv`` (one world, state only, no rendering; the partner's body
  is set each step and held by its servos through the step, so its collider meets props and
  the avatar), or
- ``backend="dream"``: ``DreamVecEnv`` (state modalities only): the world model dreams the
  avatar's body and the props, and the partner's dreamed motion is replaced each step by the
  person's.

Words. The avatar hears what the person said or typed (held for one 8-step window, the avatar's
reading rate). The shipped avatar learned from scenes in which the partner speaks while it
gestures (``envs.partner.UTTERANCES``: "Hi there!" with a wave), and answers a silent gesture far
less often (``bench live``'s ``wave_back``: a recorded scripted wave, in silence, replayed through
this session in 16 rooms, with and without the words). So while the person is silent, a
gesture the session recognises (``words.recognise``) reaches the avatar as the words that go with
it in those scenes (``gesture_words=True``, the default); the log says what the avatar heard.

Every step is recorded (``Recording``) so that the session can be saved as a dataset episode, and
logged (``LiveSession.log``: one ``LogEntry`` per control step -- the distance between the two,
how far the avatar faces away from the person, whether its right hand is above its head, what it
heard and said -- written as JSON lines to ``log_path`` when one is given).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import torch

from dreamgym.envs import partner as P
from dreamgym.envs import scene, skeleton
from dreamgym.envs.motion import ROOT_POS, compute_motion
from dreamgym.envs.tasks import SocialTask
from dreamgym.policies.social import SocialAvatarPolicy

from . import words
from .protocol import Frame, parse_frame
from .retarget import LEFT_WRIST, RIGHT_WRIST, Retargeter, SessionFrame

SHIPPED_AVATAR = Path(__file__).resolve().parents[2] / "policies" / "checkpoints" / "social"
BACKENDS = ("sim", "dream")
PHYSICS = ("mujoco", "warp")
MAX_CATCH_UP = 2  # control steps one message may advance (a late page does not make the world jump)
OBS_KEYS = ("motion", "partner_motion")


class LiveTask(SocialTask):
    """The social task's room and instruction with a partner that only stands (a person drives it
    instead) and no time limit: a live session ends when the page says so."""

    name = "live"
    max_steps = 10**9

    def setup(self, spec, rng):
        spec, target, instr, goal, _ = super().setup(spec, rng)
        return spec, target, instr, goal, [P.script_entry(P.IDLE, 1)]


class SimBackend:
    """The simulator with one world, the partner driven by the person: ``physics="warp"`` steps
    ``EgoRoomVecEnv`` (MuJoCo Warp, num_envs=1), ``physics="mujoco"`` the single-world C MuJoCo
    ``EgoRoomEnv``; both run the same ``EgoRoomCore`` (and agree to 1 mm), the second with far less
    launch overhead for one world on a CPU."""

    def __init__(self, room_seed: int, physics: str = "mujoco"):
        if physics not in PHYSICS:
            raise ValueError(f"physics must be one of {list(PHYSICS)}, got {physics!r}")
        self.physics = physics
        if physics == "warp":
            from dreamgym.envs.vec_env import EgoRoomVecEnv

            self.env = EgoRoomVecEnv(num_envs=1, task=LiveTask(), obs_keys=OBS_KEYS, seed=room_seed, return_tensors=True)
            self.obs, self.infos = self.env.reset_tensors(room_seeds=[room_seed])
        else:
            from dreamgym.envs.ego_room_env import EgoRoomEnv

            self.env = EgoRoomEnv(task=LiveTask(), obs_keys=OBS_KEYS)
            obs, info = self.env.reset(seed=room_seed, options={"room_seed": room_seed})
            self.obs, self.infos = self._batch(obs), {"objects": info["objects"][None]}
            J = mujoco.mjtObj.mjOBJ_JOINT
            ids = [mujoco.mj_name2id(self.env.model, J, f"p_{n}") for n in (*scene.ROOT_JOINTS, *scene.LIMB_JOINT_NAMES)]
            self._qadr = np.array([self.env.model.jnt_qposadr[i] for i in ids])
            self._dadr = np.array([self.env.model.jnt_dofadr[i] for i in ids])
        self.mjm = self.env.core.mjm

    @staticmethod
    def _batch(obs: dict) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v)[None] for k, v in obs.items()}

    def start_pose(self) -> tuple[np.ndarray, float]:
        st = self.env.core.state
        return st.partner_pos[0, :2].numpy().astype(float), float(st.partner_yaw[0])

    def step(self, action: torch.Tensor, pose) -> dict[str, torch.Tensor]:
        if self.physics == "warp":
            self.env.set_partner_pose(torch.as_tensor(pose.qpos[None]), torch.as_tensor(pose.qvel[None]))
            self.obs, _, _, _, self.infos = self.env.step_tensors(action)
            return self.obs
        d = self.env.data
        d.qpos[self._qadr], d.qvel[self._dadr] = pose.qpos, pose.qvel
        q, v = pose.qpos, pose.qvel
        self.env.core.partner_ctrl = torch.as_tensor(np.concatenate((v[:2], q[2:3], v[3:4], q[4:])), dtype=torch.float32)[None]
        obs, _, _, _, info = self.env.step(action[0].numpy())
        self.obs, self.infos = self._batch(obs), {"objects": info["objects"][None]}
        return self.obs

    def objects(self) -> np.ndarray:
        return np.asarray(self.infos["objects"], np.float32)  # (1, N_PROPS, 2)

    def qpos(self) -> np.ndarray:
        return np.asarray(self.env.sim_state()["qpos"]).reshape(-1)

    def qvel(self) -> np.ndarray:
        return np.asarray(self.env.sim_state()["qvel"]).reshape(-1)


class DreamBackend:
    """``DreamVecEnv`` with one world (state modalities), the partner's motion given by the person."""

    def __init__(self, room_seed: int, world_model: str | None = None):
        from dreamgym.envs.layout import SceneIndex, initial_qpos
        from dreamgym.rollouts.episodes import prop_qpos_addresses
        from dreamgym.worldmodel.dream_env import DreamVecEnv, load_world_model

        self.env = DreamVecEnv(
            load_world_model(world_model),
            num_envs=1,
            task=LiveTask(),
            modalities=OBS_KEYS,
            obs_keys=OBS_KEYS,
            seed=room_seed,
            return_tensors=True,
        )
        self.obs, self.infos = self.env.reset_tensors(seed=room_seed)  # the dream draws its start room from the seed
        self.room_seed = int(self.infos["room_seed"][0])
        self._prev_joints: torch.Tensor | None = None
        self.mjm = mujoco.MjModel.from_xml_string(scene.build_mjcf())
        self._qpos0 = initial_qpos(self.mjm, SceneIndex.from_model(self.mjm), scene.generate_room(self.room_seed)).astype(np.float32)
        self._prop_adr = list(prop_qpos_addresses())

    def start_pose(self) -> tuple[np.ndarray, float]:
        st = self.env._state  # the dreamed start (the last context step)
        return st.partner_pos[0, :2].numpy().astype(float), float(st.partner_yaw[0])

    def step(self, action: torch.Tensor, pose) -> dict[str, torch.Tensor]:
        self.obs, _, _, _, self.infos = self.env.step_tensors(action)
        joints = torch.as_tensor(pose.joints, dtype=torch.float32)[None]
        prev = joints if self._prev_joints is None else self._prev_joints
        pm = compute_motion(joints, torch.as_tensor(pose.quats, dtype=torch.float32)[None], prev, scene.CONTROL_DT)
        self._prev_joints = joints
        # the person's body replaces the dreamed partner, in the model's context and in the task state
        env = self.env
        env._ctx["partner_motion"][:, -1] = pm.to(env._ctx["partner_motion"])
        lat = env._latest()
        env._state = env._world_state(lat["motion"], lat["partner_motion"], lat["props"])
        self.obs = dict(self.obs, partner_motion=pm)
        return self.obs

    def objects(self) -> np.ndarray:
        return np.asarray(self.infos["objects"], np.float32)

    def qpos(self) -> np.ndarray:
        """The start room's physics state with the dreamed props (the bodies are in the motions)."""
        q = self._qpos0.copy()
        props = self.env._latest()["props"][0].numpy()  # (N_PROPS, 3)
        for k, a in enumerate(self._prop_adr):
            q[a : a + 3] = props[k]
        return q

    def qvel(self) -> np.ndarray:
        return np.zeros(self.mjm.nv, np.float32)


class Recording:
    """What a saved session holds, step by step: both motions, the actions, physics states, words."""

    def __init__(self):
        self.motion: list[np.ndarray] = []
        self.partner_motion: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.qpos: list[np.ndarray] = []
        self.qvel: list[np.ndarray] = []
        self.behaviour: list[int] = []
        self.utterances: list[dict[str, Any]] = []  # {"step", "who": "person" | "avatar", "text"}

    def observe(self, obs: dict[str, torch.Tensor], qpos: np.ndarray, qvel: np.ndarray, behaviour: int) -> None:
        self.motion.append(obs["motion"][0].numpy().astype(np.float32))
        self.partner_motion.append(obs["partner_motion"][0].numpy().astype(np.float32))
        self.qpos.append(np.asarray(qpos, np.float32))
        self.qvel.append(np.asarray(qvel, np.float32))
        self.behaviour.append(int(behaviour))


@dataclass
class LogEntry:
    """One control step of a session, measured in the room (MuJoCo world frame)."""

    step: int
    t: float | None
    behaviour: str  # the person's, as recognised
    heard: str  # the words the avatar read this step ("" for none)
    distance: float  # pelvis to pelvis, metres (conversational: 0.8-2.0)
    facing_error: float  # |bearing of the person from the avatar's heading|, radians
    hand_above_head: float  # the avatar's right wrist above its head, metres (> 0: raised, as in a wave)
    say: str | None
    work_ms: float


def _log_entry(step, t, behaviour, heard, agent_motion: torch.Tensor, person_joints: np.ndarray, say, work_ms) -> LogEntry:
    from dreamgym.worldmodel.dream_env import body_from_motion

    root, yaw, _, joints = (v[0].numpy() for v in body_from_motion(agent_motion[:1]))
    to = person_joints[0, :2] - root[:2]
    bearing = (math.atan2(to[1], to[0]) - float(yaw) + math.pi) % (2 * math.pi) - math.pi
    return LogEntry(
        step=int(step),
        t=t,
        behaviour=P.BEHAVIOURS[behaviour],
        heard=heard,
        distance=round(float(np.linalg.norm(to)), 4),
        facing_error=round(abs(bearing), 4),
        hand_above_head=round(float(joints[21, 2] - joints[15, 2]), 4),
        say=say,
        work_ms=round(float(work_ms), 3),
    )


class LiveSession:
    """The person, the avatar and the world of one WebSocket session (see the module docstring)."""

    def __init__(
        self,
        backend: str = "sim",
        room_seed: int = 0,
        avatar: str | Path | None = None,
        world_model: str | None = None,
        physics: str = "mujoco",
        gesture_words: bool = True,
        log_path: str | Path | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        self.backend_name = backend
        self.room_seed = int(room_seed)
        self.policy = SocialAvatarPolicy.from_pretrained(avatar or SHIPPED_AVATAR)
        self.policy.reset()
        self.world = SimBackend(self.room_seed, physics) if backend == "sim" else DreamBackend(self.room_seed, world_model)
        self.room_seed = int(getattr(self.world, "room_seed", self.room_seed))  # the dream's start room
        origin, yaw = self.world.start_pose()
        self.frame_of_room = SessionFrame((float(origin[0]), float(origin[1])), yaw)
        self.retargeter = Retargeter(self.frame_of_room, self.world.mjm)
        self.replier = words.Replier()
        self.recording = Recording()
        self.steps = 0
        self.t0: float | None = None
        self.pending_utterance = ""
        self.heard_for = 0
        self.behaviour = P.IDLE
        self.step_ms: list[float] = []  # the work of each control step (retarget + simulate + act)
        # warm up (the words encoder loads on first use): the first frame then costs what the others do
        self.policy.act(self.world.obs, utterances=[P.UTTERANCES[P.WAVE]], objects=torch.as_tensor(self.world.objects()))
        self.policy.reset()
        from dreamgym.envs.layout import SceneIndex

        self._prop_adr = [int(a) for a in SceneIndex.from_model(self.world.mjm).prop_qpos]
        self._props = self._props_of(self.world.qpos())
        self.gesture_words = bool(gesture_words)
        self.log: list[LogEntry] = []
        self.log_path = None if log_path is None else Path(log_path)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("")

    def hello(self) -> dict[str, Any]:
        """The first message: the room, the frame and what to draw."""
        from dreamgym.avatars.viewer.bundle import room_description

        return {
            "type": "hello",
            "backend": self.backend_name,
            "room_seed": self.room_seed,
            "room": room_description(self.room_seed),
            "room_frame": "viewer (x left, y up, z forward); poses and bodies: WebXR local-floor, origin at the partner's start",
            "origin": list(self.frame_of_room.origin),
            "yaw": self.frame_of_room.yaw,
            "joint_names": list(skeleton.JOINT_NAMES),
            "bones": [list(b) for b in skeleton.BONES],
            "control_dt": scene.CONTROL_DT,
            "agent": self._agent_joints().round(4).tolist(),
            "props": self._props.round(4).tolist(),
        }

    def _agent_joints(self) -> np.ndarray:
        from dreamgym.worldmodel.dream_env import body_from_motion

        world = body_from_motion(self.world.obs["motion"][:1])[3][0].numpy()
        return self.frame_of_room.points_from_world(world)

    @torch.inference_mode()
    def frame(self, msg: dict) -> dict[str, Any]:
        """The reply to a ``frame`` message (``protocol``); ``ValueError`` for a bad one."""
        t_start = time.perf_counter()
        f = parse_frame(msg)
        if f.utterance:
            self.pending_utterance, self.heard_for = f.utterance, 0
            self.recording.utterances.append({"step": self.steps, "who": "person", "text": f.utterance})
        n = self._steps_due(f)
        said = [words.reply_to_utterance(f.utterance)] if f.utterance else []
        if said:
            self.recording.utterances.append({"step": self.steps, "who": "avatar", "text": said[0]})
        for _ in range(n):
            said += [s for s in [self._control_step(f, t_start)] if s]
        if n == 0:  # between control steps: the person's body moves, the world waits
            self._retarget(f)
        work = (time.perf_counter() - t_start) * 1e3
        if n:
            self.step_ms.append(work / n)
        out: dict[str, Any] = {
            "type": "state",
            "step": self.steps,
            "t": f.t,
            "stepped": n,
            "agent": self._agent_joints().round(4).tolist(),
            "partner": self.frame_of_room.points_from_world(self._partner_joints).round(4).tolist(),
            "props": self._props.round(4).tolist(),
            "behaviour": P.BEHAVIOURS[self.behaviour],
            "work_ms": round(work, 3),
        }
        if said:
            out["say"] = " ".join(said)  # all of this frame's words: a reply to words and one to a gesture may coincide
        return out

    def _props_of(self, qpos: np.ndarray) -> np.ndarray:
        """The props' positions (N_PROPS, 3) in the WebXR frame."""
        return self.frame_of_room.points_from_world(np.stack([qpos[a : a + 3] for a in self._prop_adr]))

    def _qpos_now(self) -> np.ndarray:
        q = self.world.qpos()
        self._props = self._props_of(q)
        return q

    def _steps_due(self, f: Frame) -> int:
        if f.t is None:
            return 1
        if self.t0 is None:
            self.t0 = f.t - scene.CONTROL_DT  # the first frame is one step
        due = int((f.t - self.t0) / scene.CONTROL_DT + 1e-6) - self.steps
        if due > MAX_CATCH_UP:  # a stall: carry on from now rather than race to catch up
            self.t0 = f.t - (self.steps + MAX_CATCH_UP) * scene.CONTROL_DT
            due = MAX_CATCH_UP
        return max(0, due)

    def _retarget(self, f: Frame):
        wrists = {j: p.position for j, p in ((LEFT_WRIST, f.left), (RIGHT_WRIST, f.right)) if p is not None}
        pose = self.retargeter.retarget(f.head.position, f.head.orientation, wrists)
        self._partner_joints = pose.joints
        return pose

    def _control_step(self, f: Frame, t_start: float) -> str | None:
        pose = self._retarget(f)
        obs = self.world.obs
        heard = self.pending_utterance
        if heard and self.heard_for >= 8:  # the avatar reads words at its 8-step window boundary
            self.pending_utterance = heard = ""
        self.heard_for += 1
        if not heard and self.gesture_words:  # a silent gesture: the words a scene partner says with it
            heard = P.UTTERANCES[self.behaviour]
        if not self.recording.motion:
            self.recording.observe(obs, self._qpos_now(), self.world.qvel(), self.behaviour)
        action = self.policy.act(obs, utterances=[heard], objects=torch.as_tensor(self.world.objects()))
        obs = self.world.step(action, pose)
        self.steps += 1
        agent_pos = obs["motion"][0, ROOT_POS].numpy()
        self.behaviour = words.recognise(pose.joints, float(pose.qpos[3]), pose.qvel[:2], agent_pos)
        self.recording.actions.append(action[0].numpy().astype(np.float32))
        self.recording.observe(obs, self._qpos_now(), self.world.qvel(), self.behaviour)
        say = self.replier.step(self.behaviour)
        if say:
            self.recording.utterances.append({"step": self.steps, "who": "avatar", "text": say})
        work = (time.perf_counter() - t_start) * 1e3
        entry = _log_entry(self.steps, f.t, self.behaviour, heard, obs["motion"], pose.joints, say, work)
        self.log.append(entry)
        if self.log_path is not None:
            with self.log_path.open("a") as fh:
                fh.write(json.dumps(asdict(entry)) + "\n")
        return say
