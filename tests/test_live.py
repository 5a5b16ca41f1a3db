"""``dreamgym live``: the session protocol over loopback, the token on a secure server, saved sessions."""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("websockets")

from dreamgym.avatars.live.record import save_session  # noqa: E402
from dreamgym.avatars.live.replay import play, recorded_partner  # noqa: E402
from dreamgym.avatars.live.server import LiveServer  # noqa: E402
from dreamgym.avatars.live.session import LiveSession  # noqa: E402
from dreamgym.envs import partner as P  # noqa: E402

torch.set_num_threads(1)


class Running:
    """A ``LiveServer`` on a free loopback port, on its own thread and event loop."""

    def __init__(self, server: LiveServer):
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.stop = self.loop.create_future()
        ready = threading.Event()

        async def serve():
            ev = asyncio.Event()
            task = asyncio.ensure_future(server.run(ev, self.stop))
            await ev.wait()
            ready.set()
            await task

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(serve(),), daemon=True)
        self.thread.start()
        assert ready.wait(60)

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set_result, None)
        self.thread.join(10)


def _facing_error(reply: dict) -> float:
    """Angle (rad) between the avatar's heading and the direction to the person, in the XR frame."""
    a, p = np.array(reply["agent"]), np.array(reply["partner"])
    hips = a[1] - a[2]  # left hip - right hip: the body's left
    fwd = np.array([-hips[2], hips[0]])  # (x, z) forward, left rotated a quarter turn (y up)
    to_p = p[0, [0, 2]] - a[0, [0, 2]]
    ang = math.atan2(fwd[0] * to_p[1] - fwd[1] * to_p[0], fwd @ to_p)
    return abs(ang)


def test_session_over_loopback_turns_to_the_person_and_survives_bad_messages():
    sessions = []
    running = Running(LiveServer(lambda: sessions.append(LiveSession("sim", room_seed=5)) or sessions[-1], port=0))
    try:
        frames = recorded_partner(5, [P.APPROACH, P.WAVE], 160, LiveSession("sim", room_seed=5).frame_of_room)
        frames[20] = "not json"
        frames[40] = {"type": "frame", "head": {"position": [0, 1, "x"], "orientation": [0, 0, 0, 1]}}
        frames[41] = {"type": "dance"}

        async def run():
            from websockets.asyncio.client import connect

            url = f"ws://127.0.0.1:{running.server.port}/live"
            out = await play(url, [f if isinstance(f, dict) else {"raw": f} for f in frames], rate_hz=40.0)
            async with connect(url) as ws:  # the server is still up for the next session
                assert json.loads(await ws.recv())["type"] == "hello"
            return out

        out = asyncio.run(run())
    finally:
        running.close()
    errors = [e["error"] for e in out["errors"]]
    assert len(errors) == 3, errors
    assert all("\n" not in e and e for e in errors)
    assert any("head.position" in e for e in errors) and any("'dance'" in e for e in errors)
    replies = out["replies"]
    assert len(replies[-1]["agent"]) == 22 and len(replies[-1]["partner"]) == 22
    early = np.mean([_facing_error(r) for r in replies[:5]])
    late = np.mean([_facing_error(r) for r in replies[-10:]])
    assert late < 0.6 and late < early - 0.3, (early, late)
    assert any("Hi! Nice to see you." in (r.get("say") or "") for r in replies)  # it answered the wave
    assert sessions[0].steps > 60


def test_secure_server_refuses_without_token_and_serves_with_it(tmp_path):
    import urllib.error
    import urllib.request

    running = Running(LiveServer(lambda: LiveSession("sim", room_seed=1), port=0, secure=True, cert_dir=tmp_path))
    try:
        srv = running.server
        assert srv.fingerprint and len(srv.fingerprint.split(":")) == 32
        ctx = ssl.create_default_context(cafile=str(next(tmp_path.glob("*.crt"))))
        ctx.check_hostname = False
        base = f"https://127.0.0.1:{srv.port}"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/live.html", context=ctx, timeout=20)
        assert e.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/live.html?token=wrong", context=ctx, timeout=20)
        assert e.value.code == 403

        async def ws_without_token():
            from websockets.asyncio.client import connect
            from websockets.exceptions import InvalidStatus

            with pytest.raises(InvalidStatus) as err:
                async with connect(f"wss://127.0.0.1:{srv.port}/live", ssl=ctx):
                    pass
            assert err.value.response.status_code == 403
            async with connect(f"wss://127.0.0.1:{srv.port}/live?token={srv.token}", ssl=ctx) as ws:
                return json.loads(await ws.recv())["type"]

        assert asyncio.run(ws_without_token()) == "hello"
        with pytest.raises(urllib.error.HTTPError) as e:  # with the token: past the 403 (the page may be absent)
            urllib.request.urlopen(f"{base}/nothing-here?token={srv.token}", context=ctx, timeout=20)
        assert e.value.code == 404
    finally:
        running.close()


def test_saved_session_loads_exports_and_builds_a_viewer_bundle(tmp_path):
    from dreamgym.app.cli import main
    from dreamgym.avatars.episodes import iter_dataset_episodes
    from dreamgym.avatars.viewer.bundle import BundleSettings, build_bundle

    s = LiveSession("sim", room_seed=2)
    for i in range(24):
        s.frame(
            {
                "type": "frame",
                "t": i * 0.05,
                "head": {"position": [0, 1.6, -0.03 * i], "orientation": [0, 0, 0, 1]},
                **({"utterance": "hello"} if i == 2 else {}),
            }
        )
    data = save_session(s, tmp_path / "live")
    save_session(s, data)  # a second session appends an episode
    eps = list(iter_dataset_episodes(data, ["motion", "partner_motion"]))
    assert len(eps) == 2 and eps[0].steps == s.steps == 24
    np.testing.assert_allclose(eps[0].obs["partner_motion"], np.stack(s.recording.partner_motion))
    said = json.loads(eps[0].attrs["utterances"])
    assert {"who": "person", "text": "hello"}.items() <= said[0].items() and said[1]["who"] == "avatar"
    assert main(["export", f"data={data}", f"out={tmp_path / 'exp'}", "progress=false"]) == 0
    for kind in ("*.bvh", "*.glb", "agent.npz", "partner.npz"):  # BVH, glTF and AMASS-style SMPL-X
        assert any((tmp_path / "exp").rglob(kind)), kind
    bundle = build_bundle(tmp_path / "bundle", BundleSettings(data=str(data)), model=None, progress=False, log=lambda m: None)
    assert json.loads((bundle / "viewer.json").read_text())["episodes"][0]["streams"]["real"]["frames"] == 25


def test_dream_backend_runs_the_same_session(tmp_path):
    s = LiveSession("dream", room_seed=3)
    for i in range(12):
        r = s.frame({"type": "frame", "head": {"position": [0, 1.6, -0.03 * i], "orientation": [0, 0, 0, 1]}})
    assert r["step"] == 12 and np.isfinite(np.array(r["agent"])).all()
    # the person's body, not the dreamed partner, is what the avatar sees
    np.testing.assert_allclose(s.recording.partner_motion[-1][:2], s.retargeter.prev[:2], atol=1e-4)
    eps = __import__("dreamgym.avatars.episodes", fromlist=["x"]).iter_dataset_episodes(save_session(s, tmp_path / "d"), ["motion"])
    assert next(eps).steps == 12


# ------------------------------------------------------------------------ a real browser, emulated XR
# The test's person, in the page: the IWER headset walks toward the avatar (facing it) until 1.4 m
# away, then waves its right controller above its head (for 100 control steps, 5 s of the world,
# about as long as a wave of the scenes the avatar learned from); the left hangs at its side. 20 Hz.
# Then, as a person whose greeting went unanswered would, it lowers the hand for 40 steps and waves
# once more for 100: the avatar answers a wave in a share of it that varies with where its 8-step
# windows cut the wave (``bench live``'s ``wave_back``: 0.54-1.00 per room with the gesture's words,
# and once in a few browser runs next to none), so the test judges the better of the two waves.
PERSON_JS = """(() => {
  const L = window.__live, dev = L.device, st = (L.drive = {phase: 'walk', waveStep: null});
  const put = (c, p) => c.position.set(p[0], p[1], p[2]);
  setInterval(() => {
    if (!L.last) return;
    const a = L.last.agent[0], p = [dev.position.x, dev.position.y, dev.position.z];
    const dx = a[0] - p[0], dz = a[2] - p[2], d = Math.hypot(dx, dz), yaw = Math.atan2(-dx, -dz);
    dev.quaternion.set(0, Math.sin(yaw / 2), 0, Math.cos(yaw / 2));
    const f = [-Math.sin(yaw), 0, -Math.cos(yaw)], r = [Math.cos(yaw), 0, -Math.sin(yaw)];
    if (st.phase === 'walk' && d > 1.4) { dev.position.x += dx / d * 0.04; dev.position.z += dz / d * 0.04; }
    else if (st.phase === 'walk') { st.phase = 'wave'; st.waveStep = L.last.step; }
    const since = st.waveStep === null ? 0 : L.last.step - st.waveStep;
    if (st.phase === 'wave' && since >= 100) st.phase = 'rest';
    if (st.phase === 'rest' && since >= 140) { st.phase = 'again'; st.againStep = L.last.step; }
    const side = (s, dy, out) => [p[0] + r[0] * s * out + f[0] * 0.12, p[1] + dy, p[2] + r[2] * s * out + f[2] * 0.12];
    const c = dev.controllers;
    put(c.left, side(-1, -0.7, 0.25));
    const w = 0.12 * Math.sin(performance.now() / 1000 * 2 * Math.PI * 2);
    const up = st.phase === 'wave' || st.phase === 'again';
    put(c.right, up ? side(1, 0.3, 0.3 + w) : side(1, -0.7, 0.25));
    c.left.quaternion.copy(dev.quaternion); c.right.quaternion.copy(dev.quaternion);
  }, 50);
  return true;
})()"""
AGENT_BLUE = (0x3D, 0x7B, 0xF2)


def _not_blank(png: bytes) -> tuple[np.ndarray, float]:
    import io

    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return img, float(img.std())


def _runs(entries: list[dict], behaviour: str, gap: int = 10) -> list[list[dict]]:
    """The log's stretches of control steps in which the person did ``behaviour``; a stretch
    carries on across a break of fewer than ``gap`` steps (a flicker of the recognised behaviour)."""
    runs: list[list[dict]] = []
    for e in entries:
        if e["behaviour"] != behaviour:
            continue
        if runs and e["step"] - runs[-1][-1]["step"] < gap:
            runs[-1].append(e)
        else:
            runs.append([e])
    return runs


def _judge_wave(answer: list[dict]) -> tuple[float, float, float, int]:
    """Shares of ``answer``'s steps facing the person, at conversational distance and with the
    avatar's hand raised, and the count of steps that meet all three (``SocialSceneTask.success``)."""
    faced = [e["facing_error"] < 0.5 for e in answer]
    near = [0.8 <= e["distance"] <= 2.0 for e in answer]
    raised = [e["hand_above_head"] > 0.0 for e in answer]
    judged = sum(a and b and c for a, b, c in zip(faced, near, raised, strict=True))
    return float(np.mean(faced)), float(np.mean(near)), float(np.mean(raised)), judged


def _blue_share(img: np.ndarray) -> float:
    """Share of the pixels drawn in the avatar's (lit) blue."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return float(((b > 140) & (b - r > 80) & (b - g > 30)).mean())


def test_headset_in_a_browser_the_avatar_faces_comes_close_and_waves_back(tmp_path):
    from dreamgym.avatars.viewer.headless import HeadlessChromium, find_chromium

    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the browser test needs it")
    log = tmp_path / "session.jsonl"
    running = Running(LiveServer(lambda: LiveSession("sim", room_seed=0, log_path=log), port=0))
    shots = {}
    try:
        with HeadlessChromium(width=960, height=540, timeout=120) as b:
            b.open(f"http://127.0.0.1:{running.server.port}/live.html?emulate=quest3")
            b.wait_for("window.__live && (window.__live.ready || !!window.__live.error)", timeout=120)
            assert b.evaluate("window.__live.error") is None, b.console
            assert b.evaluate("document.getElementById('VRButton').textContent") == "ENTER VR"
            b.evaluate("document.getElementById('VRButton').click()", user_gesture=True)  # enter the immersive session
            b.wait_for("window.__live.presenting && window.__live.received > 2", timeout=60)
            shots["start"] = b.screenshot(tmp_path / "start.png")
            # typed words, as a person would type them: they reach the avatar, which answers
            b.evaluate(
                "(() => { const w = document.getElementById('words'); w.value = 'hello there';"
                " w.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'})); })()"
            )
            b.wait_for("window.__live.said.some((s) => s.includes('Hi there! Good to see you.'))", timeout=60)
            b.evaluate(PERSON_JS)
            b.wait_for("window.__live.drive.phase === 'wave'", timeout=180)
            shots["near"] = b.screenshot(tmp_path / "near.png")
            b.wait_for("window.__live.last.step - window.__live.drive.waveStep >= 100", timeout=180)
            shots["wave"] = b.screenshot(tmp_path / "wave.png")
            b.wait_for("window.__live.drive.phase === 'again'", timeout=180)
            b.wait_for("window.__live.last.step - window.__live.drive.againStep >= 100", timeout=180)
            said = b.evaluate("window.__live.said")
            assert b.evaluate("window.__live.presenting") and not b.evaluate("window.__live.errors.length")
            assert not [c for c in b.console if c.startswith("exception")], b.console
    finally:
        running.close()
    for name, png in shots.items():
        img, spread = _not_blank(png)
        assert spread > 15 and len(np.unique(img.reshape(-1, 3) // 16, axis=0)) > 20, f"the {name} screenshot is blank"
    img, _ = _not_blank(shots["wave"])
    assert _blue_share(img) > 0.01, "the avatar is not in view when the person faces it"

    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries[0]["facing_error"] > 1.0  # the avatar starts turned away from the person
    waves = _runs(entries, "wave")
    assert len(waves) >= 2 and all(len(w) >= 90 for w in waves[:2]), (
        f"the two waves reached the server as {[len(w) for w in waves]} control steps"
    )
    verdicts = [_judge_wave(w[20:]) for w in waves[:2]]  # a second to respond, as the scenes' judge allows
    faced, near, _, _ = verdicts[0]
    assert faced >= 0.8, f"the avatar faced the person in {faced:.2f} of the first wave's steps after the first 20"
    assert near >= 0.9, f"the avatar was at conversational distance in {near:.2f} of them"
    # a wave raises the hand and lowers it again: the avatar's hand is up in bursts, whose share of
    # a window depends on where the window cuts them (0.35-1.0 seen); the task's judge
    # (SocialSceneTask.success) wants a step near, facing and with the hand above the head
    raised, judged = max(v[2] for v in verdicts), max(v[3] for v in verdicts)
    assert raised >= 0.25, f"the avatar's right hand was above its head in at most {raised:.2f} of a wave's steps"
    assert judged >= 5, f"only {judged} steps of a wave met SocialSceneTask's success check (near, facing, hand raised)"
    assert any("Hi! Nice to see you." in w for w in said) and any("Hi there! Good to see you." in w for w in said)
    assert any(e["heard"] == "hello there" for e in entries)  # the typed words reached the avatar
