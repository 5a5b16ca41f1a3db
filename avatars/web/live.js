// dreamgym live: the page of a live session (avatars/live). A person in a WebXR headset is the
// partner; the server retargets their head and controllers onto the partner's body, steps the
// world with the social avatar acting, and streams both bodies back, drawn here as skeletons.
//
// Protocol: avatars/live/protocol.py (JSON over the WebSocket /live, one message each way per
// frame). Poses are sent in WebXR 'local-floor' space; the server's bodies come back in it too.
// Without a headset the keyboard moves a desktop "head" (see #help). ?emulate=quest3 loads the
// vendored IWER runtime first, which emulates a headset and controllers (the browser test).

import * as THREE from 'three';
import { VRButton } from 'three/addons/webxr/VRButton.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const SEND_HZ = 30;
const AGENT_RGB = 0x3d7bf2;
const PERSON_RGB = 0xf2a23d;

const live = (window.__live = {
  ready: false, connected: false, hello: null, last: null, presenting: false,
  sent: 0, received: 0, errors: [], rtt: [], said: [], device: null, error: null,
});

// ------------------------------------------------------------------------------------ scene
function box(desc, material) {
  const [hx, hy, hz] = desc.half;
  const mesh = new THREE.Mesh(new THREE.BoxGeometry(2 * hx, 2 * hy, 2 * hz), material);
  mesh.position.set(...desc.centre);
  return mesh;
}

function lambert(rgb) {
  return new THREE.MeshLambertMaterial({ color: new THREE.Color(rgb[0], rgb[1], rgb[2]) });
}

// The room comes in the viewer frame (x left, y up, z forward: MuJoCo (x, y, z) -> (y, z, x));
// the bodies in WebXR local-floor, whose origin is the partner's start (origin, yaw) with -z
// ahead. From the first to the second: subtract the origin, turn by (pi - yaw) about y.
function buildRoom(hello) {
  const outer = new THREE.Group();
  const inner = new THREE.Group();
  const [ox, oy] = hello.origin;
  inner.position.set(-oy, 0, -ox);
  outer.rotation.y = Math.PI - hello.yaw;
  outer.add(inner);
  const r = hello.room;
  inner.add(box(r.floor, lambert(r.floor.rgb)));
  for (const w of r.walls) inner.add(box(w, lambert(w.rgb)));
  for (const f of r.furniture) inner.add(box(f, lambert(f.rgb)));
  inner.add(box(r.mat, lambert(r.mat.rgb)));
  return outer;
}

function buildProps(hello) {
  return hello.room.props.map((p) => {
    const geom = p.shape === 'box'
      ? new THREE.BoxGeometry(2 * p.size, 2 * p.size, 2 * p.size)
      : new THREE.SphereGeometry(p.size, 20, 14);
    return new THREE.Mesh(geom, lambert(p.rgb));
  });
}

class Skeleton {
  constructor(bones, colour, opacity = 1) {
    const mat = new THREE.MeshLambertMaterial({ color: colour, transparent: opacity < 1, opacity });
    this.group = new THREE.Group();
    this.bones = bones;
    this.joints = [];
    for (let i = 0; i < 22; i++) {
      const s = new THREE.Mesh(new THREE.SphereGeometry(i === 15 ? 0.09 : 0.035, 12, 8), mat);
      this.joints.push(s);
      this.group.add(s);
    }
    this.links = bones.map(() => {
      const c = new THREE.Mesh(new THREE.CylinderGeometry(0.025, 0.025, 1, 8), mat);
      this.group.add(c);
      return c;
    });
  }

  set(points) {
    const up = new THREE.Vector3(0, 1, 0);
    const a = new THREE.Vector3();
    const b = new THREE.Vector3();
    points.forEach((p, i) => this.joints[i].position.set(p[0], p[1], p[2]));
    this.bones.forEach(([i, j], k) => {
      a.set(...points[i]);
      b.set(...points[j]);
      const link = this.links[k];
      const d = b.clone().sub(a);
      const len = d.length();
      link.position.copy(a).add(b).multiplyScalar(0.5);
      link.scale.set(1, Math.max(len, 1e-4), 1);
      if (len > 1e-6) link.quaternion.setFromUnitVectors(up, d.divideScalar(len));
    });
  }
}

// A speech bubble over the avatar's head, readable in the headset too.
class Bubble {
  constructor() {
    this.canvas = document.createElement('canvas');
    this.canvas.width = 512;
    this.canvas.height = 128;
    this.texture = new THREE.CanvasTexture(this.canvas);
    this.sprite = new THREE.Sprite(new THREE.SpriteMaterial({ map: this.texture, depthTest: false }));
    this.sprite.scale.set(1.2, 0.3, 1);
    this.sprite.visible = false;
    this.until = 0;
  }

  show(text, now) {
    const g = this.canvas.getContext('2d');
    g.clearRect(0, 0, 512, 128);
    g.fillStyle = 'rgba(255,255,255,0.92)';
    g.beginPath();
    g.roundRect(4, 4, 504, 120, 24);
    g.fill();
    g.fillStyle = '#111';
    g.font = '34px system-ui, sans-serif';
    g.textAlign = 'center';
    g.textBaseline = 'middle';
    g.fillText(text.length > 34 ? text.slice(0, 33) + '\u2026' : text, 256, 64);
    this.texture.needsUpdate = true;
    this.sprite.visible = true;
    this.until = now + 4000;
  }

  tick(now, head) {
    if (this.sprite.visible && now > this.until) this.sprite.visible = false;
    if (head) this.sprite.position.set(head[0], head[1] + 0.45, head[2]);
  }
}

// ------------------------------------------------------------------------------------ input
// The desktop head (no headset): keyboard walking and turning, R raises the right hand and waves.
class DesktopHead {
  constructor() {
    this.pos = new THREE.Vector3(0, 1.6, 0);
    this.yaw = 0;
    this.keys = new Set();
    this.waving = false;
    addEventListener('keydown', (e) => {
      if (e.target instanceof HTMLInputElement) return;
      if (e.key === 'r' || e.key === 'R') this.waving = !this.waving;
      this.keys.add(e.key.toLowerCase());
    });
    addEventListener('keyup', (e) => this.keys.delete(e.key.toLowerCase()));
  }

  update(dt) {
    const k = this.keys;
    const turn = (k.has('q') || k.has('arrowleft') ? 1 : 0) - (k.has('e') || k.has('arrowright') ? 1 : 0);
    this.yaw += 1.5 * turn * dt;
    const fwd = (k.has('w') || k.has('arrowup') ? 1 : 0) - (k.has('s') || k.has('arrowdown') ? 1 : 0);
    const side = (k.has('d') ? 1 : 0) - (k.has('a') ? 1 : 0);
    const f = new THREE.Vector3(-Math.sin(this.yaw), 0, -Math.cos(this.yaw));
    const r = new THREE.Vector3(Math.cos(this.yaw), 0, -Math.sin(this.yaw));
    this.pos.addScaledVector(f, 1.0 * fwd * dt).addScaledVector(r, 0.7 * side * dt);
  }

  pose(now) {
    const q = new THREE.Quaternion().setFromAxisAngle(new THREE.Vector3(0, 1, 0), this.yaw);
    const f = new THREE.Vector3(-Math.sin(this.yaw), 0, -Math.cos(this.yaw));
    const r = new THREE.Vector3(Math.cos(this.yaw), 0, -Math.sin(this.yaw));
    const hand = (side, raised) => {
      const p = this.pos.clone().addScaledVector(f, 0.15).addScaledVector(r, side * 0.25);
      if (raised) p.addScaledVector(r, 0.12 * Math.sin(now / 1000 * 2 * Math.PI * 2)).add(new THREE.Vector3(0, 0.3, 0));
      else p.add(new THREE.Vector3(0, -0.7, 0));
      return { position: p.toArray(), orientation: [0, 0, 0, 1] };
    };
    return {
      head: { position: this.pos.toArray(), orientation: q.toArray() },
      left: hand(-1, false),
      right: hand(1, this.waving),
    };
  }
}

function xrPose(p) {
  const t = p.transform;
  return {
    position: [t.position.x, t.position.y, t.position.z],
    orientation: [t.orientation.x, t.orientation.y, t.orientation.z, t.orientation.w],
  };
}

// Head and wrists from the XR frame: controllers' grips, or hand tracking's wrists.
function headsetPose(frame, ref) {
  const viewer = frame.getViewerPose(ref);
  if (!viewer) return null;
  const out = { head: xrPose(viewer) };
  for (const src of frame.session.inputSources) {
    if (src.handedness !== 'left' && src.handedness !== 'right') continue;
    let pose = null;
    if (src.hand && frame.getJointPose) {
      const wrist = src.hand.get('wrist');
      pose = wrist ? frame.getJointPose(wrist, ref) : null;
    }
    if (!pose) pose = frame.getPose(src.gripSpace || src.targetRaySpace, ref);
    if (pose) out[src.handedness] = xrPose(pose);
  }
  return out;
}

// ------------------------------------------------------------------------------------ words
let pendingWords = '';

function setupWords() {
  const input = $('words');
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && input.value.trim()) {
      pendingWords = input.value.trim();
      input.value = '';
    }
  });
  const Recognition = window.SpeechRecognition || window.webkitSpeechRecognition;
  if (!Recognition) return;
  const mic = $('mic');
  mic.hidden = false;
  mic.addEventListener('click', () => {
    const rec = new Recognition();
    rec.lang = 'en-US';
    rec.interimResults = false;
    rec.onresult = (e) => { pendingWords = e.results[0][0].transcript.trim(); };
    rec.onerror = (e) => { $('status').textContent = `speech: ${e.error}`; };
    rec.start();
  });
}

function speak(text) {
  if (!('speechSynthesis' in window)) return;
  try {
    speechSynthesis.speak(new SpeechSynthesisUtterance(text));
  } catch (e) { /* no voice on this machine: the words stay on screen */ }
}

// ------------------------------------------------------------------------------------ main
async function main() {
  if (params.get('emulate')) {
    // IWER: an emulated headset (and controllers), installed before anything asks for WebXR
    const { XRDevice, metaQuest3 } = await import('./vendor/iwer/iwer.module.min.js');
    const device = new XRDevice(metaQuest3);
    device.installRuntime({ forceInstall: true }); // headless Chromium has a navigator.xr of its own, with no device
    device.position.set(0, 1.6, 0);
    live.device = device;
  }
  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(Math.min(devicePixelRatio, 2));
  renderer.setSize(innerWidth, innerHeight);
  renderer.xr.enabled = true;
  renderer.xr.setReferenceSpaceType('local-floor');
  document.body.appendChild(renderer.domElement);
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0xbfd3e6);
  scene.add(new THREE.HemisphereLight(0xffffff, 0x445566, 2.2));
  const sun = new THREE.DirectionalLight(0xffffff, 1.2);
  sun.position.set(2, 5, 3);
  scene.add(sun);
  const camera = new THREE.PerspectiveCamera(70, innerWidth / innerHeight, 0.05, 60);
  addEventListener('resize', () => {
    camera.aspect = innerWidth / innerHeight;
    camera.updateProjectionMatrix();
    renderer.setSize(innerWidth, innerHeight);
  });
  $('vr-slot').appendChild(VRButton.createButton(renderer, { optionalFeatures: ['local-floor', 'hand-tracking'] }));
  renderer.xr.addEventListener('sessionstart', () => { live.presenting = true; });
  renderer.xr.addEventListener('sessionend', () => { live.presenting = false; });
  setupWords();

  const desktop = new DesktopHead();
  const bubble = new Bubble();
  scene.add(bubble.sprite);
  let agent = null, person = null, props = [];
  let inflight = null, lastSent = 0, lastTick = performance.now();
  const t0 = performance.now();

  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${proto}//${location.host}/live${location.search}`);
  ws.onopen = () => { live.connected = true; };
  ws.onclose = () => { live.connected = false; $('status').textContent = 'session closed'; };
  ws.onerror = () => { live.error = 'the WebSocket failed (is dreamgym live running?)'; };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === 'hello') {
      live.hello = msg;
      scene.add(buildRoom(msg));
      props = buildProps(msg);
      props.forEach((m, i) => { m.position.set(...msg.props[i]); scene.add(m); });
      agent = new Skeleton(msg.bones, AGENT_RGB);
      agent.set(msg.agent);
      person = new Skeleton(msg.bones, PERSON_RGB, 0.55);
      scene.add(agent.group, person.group);
      $('status').textContent = `connected (${msg.backend}), room ${msg.room_seed}`;
      live.ready = true;
      return;
    }
    if (inflight !== null) live.rtt.push(performance.now() - inflight);
    inflight = null;
    if (msg.type === 'error') { live.errors.push(msg.error); return; }
    if (msg.type === 'saved') { $('status').textContent = `session saved to ${msg.path}`; return; }
    live.received += 1;
    live.last = msg;
    agent.set(msg.agent);
    person.set(msg.partner);
    msg.props.forEach((p, i) => props[i].position.set(...p));
    if (msg.say) {
      live.said.push(msg.say);
      bubble.show(msg.say, performance.now());
      $('bubble').textContent = msg.say;
      $('bubble').hidden = false;
      speak(msg.say);
    }
    $('status').textContent = `step ${msg.step} · you: ${msg.behaviour} · server ${msg.work_ms.toFixed(1)} ms`;
  };

  renderer.setAnimationLoop((time, frame) => {
    const now = performance.now();
    const dt = Math.min(0.1, (now - lastTick) / 1000);
    lastTick = now;
    let pose;
    if (frame && renderer.xr.isPresenting) {
      pose = headsetPose(frame, renderer.xr.getReferenceSpace());
    } else {
      desktop.update(dt);
      pose = desktop.pose(now);
      camera.position.fromArray(pose.head.position);
      camera.quaternion.fromArray(pose.head.orientation);
    }
    if (pose && live.ready && ws.readyState === WebSocket.OPEN && inflight === null && now - lastSent >= 1000 / SEND_HZ) {
      const msg = { type: 'frame', t: (now - t0) / 1000, ...pose };
      if (pendingWords) { msg.utterance = pendingWords; pendingWords = ''; }
      ws.send(JSON.stringify(msg));
      inflight = lastSent = now;
      live.sent += 1;
    }
    if (now - inflight > 5000 && inflight !== null) inflight = null; // a lost reply does not stall the page
    if ($('bubble').hidden === false && now > bubble.until) $('bubble').hidden = true;
    bubble.tick(now, live.last ? live.last.agent[15] : null);
    renderer.render(scene, camera);
  });
  addEventListener('beforeunload', () => { if (ws.readyState === WebSocket.OPEN) ws.send('{"type": "bye"}'); });
}

main().catch((e) => {
  live.error = String(e && e.stack || e);
  $('status').textContent = `error: ${e}`;
});
