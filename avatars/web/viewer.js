// dreamgym viewer: real and dreamed episodes of a viewer bundle (avatars/viewer/bundle.py), in 3D.
//
// The bundle's index is bundle/viewer.json; every array is a raw little-endian file it lists with
// dtype and shape. Coordinates are the bundle's viewer frame, which is three.js's: x left, y up,
// z forward, metres. One camera looks at two scenes: the real one (left) and the dream (right),
// or, in overlay mode and in VR, the real scene with the dream's bodies as ghosts.
//
// For tests and scripts the page exposes window.__dreamgym (setFrame, renderedFrame,
// screenPoints, ...) and sets window.__dreamgymReady once the first frame is drawn; an error
// is shown on the page and left in window.__dreamgymError.

import * as THREE from 'three';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';
import { VRButton } from 'three/addons/webxr/VRButton.js';

const BUNDLE = 'bundle/';
const JOINT_RADIUS = 0.045;
const HEAD_RADIUS = 0.1;
const HEAD_OFFSET = 0.09; // the head sphere sits this far past the head joint, along neck -> head
const TRUNK_BONE_RADIUS = 0.06;
const LIMB_BONE_RADIUS = 0.038;
const GHOST_OPACITY = 0.45;
const VOXEL_FILL = 0.9; // a voxel cube's edge as a share of the voxel, so neighbours stay apart
const VOXEL_OPACITY = 0.42;
const WALL_OPACITY = 0.22;
// Shown by default: what moves. Walls and furniture are drawn as the room; the agent's own voxels
// sit on its skeleton. Tick them under "layers" to compare those too.
const DEFAULT_HIDDEN_CLASSES = new Set(['free', 'static', 'agent']);
const CAMERA_MIN_DISTANCE = 3.6; // metres from the midpoint of the two bodies at the start
const CAMERA_UP = 2.4;
const VR_AGENT_AHEAD = 1.5; // in VR the agent starts this far in front of the viewer

const $ = (id) => document.getElementById(id);
const api = { ready: false, frame: 0, renderedFrame: -1, frameCount: 0, episode: null, layout: 'split' };
window.__dreamgym = api;
window.__dreamgymReady = false;

function srgb(rgb) {
  return new THREE.Color().setRGB(rgb[0], rgb[1], rgb[2], THREE.SRGBColorSpace);
}

function cssColour(rgb) {
  return `rgb(${rgb.map((c) => Math.round(c * 255)).join(', ')})`;
}

function showMessage(text, loading = false) {
  const box = $('message');
  box.textContent = text;
  box.hidden = !text;
  box.classList.toggle('loading', loading);
}

async function fetchJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

const TYPED = { float32: Float32Array, uint8: Uint8Array, int32: Int32Array, int64: BigInt64Array };

async function fetchArray(desc) {
  const r = await fetch(BUNDLE + desc.file);
  if (!r.ok) throw new Error(`${desc.file}: HTTP ${r.status}`);
  const Type = TYPED[desc.dtype];
  if (!Type) throw new Error(`${desc.file}: unsupported dtype ${desc.dtype}`);
  const data = new Type(await r.arrayBuffer());
  const size = desc.shape.reduce((a, b) => a * b, 1);
  if (data.length !== size) throw new Error(`${desc.file}: ${data.length} values, expected ${desc.shape.join('x')}`);
  return { data, shape: desc.shape };
}

async function loadStream(stream) {
  const out = { frames: stream.frames, dreamStart: stream.dream_start };
  const keys = Object.keys(stream.arrays).filter((k) => !k.endsWith('_motion')); // motion vectors are for exports
  const arrays = await Promise.all(keys.map((k) => fetchArray(stream.arrays[k])));
  keys.forEach((k, i) => { out[k] = arrays[i]; });
  return out;
}

// ------------------------------------------------------------------------------------ bodies
class Body {
  // A skeleton drawn as spheres at the joints and cylinders along the bones.
  constructor(parents, names, rgb) {
    this.parents = parents;
    this.group = new THREE.Group();
    this.material = new THREE.MeshLambertMaterial({ color: srgb(rgb) });
    const sphere = new THREE.SphereGeometry(1, 16, 12);
    const cylinder = new THREE.CylinderGeometry(1, 1, 1, 12, 1);
    this.joints = parents.map(() => {
      const m = new THREE.Mesh(sphere, this.material);
      m.scale.setScalar(JOINT_RADIUS);
      this.group.add(m);
      return m;
    });
    this.bones = [];
    const trunk = new Set(['pelvis', 'spine1', 'spine2', 'spine3', 'neck', 'left_hip', 'right_hip']);
    parents.forEach((p, j) => {
      if (p < 0) return;
      const m = new THREE.Mesh(cylinder, this.material);
      const r = trunk.has(names[p]) && trunk.has(names[j]) ? TRUNK_BONE_RADIUS : LIMB_BONE_RADIUS;
      this.bones.push({ mesh: m, parent: p, child: j, radius: r });
      this.group.add(m);
    });
    this.headIndex = names.indexOf('head');
    this.neckIndex = names.indexOf('neck');
    this.head = new THREE.Mesh(sphere, this.material);
    this.head.scale.setScalar(HEAD_RADIUS);
    this.group.add(this.head);
    this.positions = parents.map(() => new THREE.Vector3());
  }

  setGhost(ghost) {
    this.material.transparent = ghost;
    this.material.opacity = ghost ? GHOST_OPACITY : 1;
    this.material.depthWrite = !ghost;
    this.material.needsUpdate = true;
  }

  update(joints, t) {
    const n = this.parents.length;
    const base = t * n * 3;
    for (let j = 0; j < n; j++) {
      this.positions[j].set(joints[base + 3 * j], joints[base + 3 * j + 1], joints[base + 3 * j + 2]);
      this.joints[j].position.copy(this.positions[j]);
    }
    const up = new THREE.Vector3(0, 1, 0);
    const dir = new THREE.Vector3();
    for (const b of this.bones) {
      const a = this.positions[b.parent];
      const c = this.positions[b.child];
      dir.subVectors(c, a);
      const length = dir.length();
      b.mesh.position.addVectors(a, c).multiplyScalar(0.5);
      if (length > 1e-6) b.mesh.quaternion.setFromUnitVectors(up, dir.divideScalar(length));
      b.mesh.scale.set(b.radius, Math.max(length, 1e-6), b.radius);
    }
    if (this.headIndex >= 0 && this.neckIndex >= 0) {
      dir.subVectors(this.positions[this.headIndex], this.positions[this.neckIndex]).normalize();
      this.head.position.copy(this.positions[this.headIndex]).addScaledVector(dir, HEAD_OFFSET);
    }
  }
}

// ------------------------------------------------------------------------------------ a world
class World {
  // Everything one stream draws: room, props, the two bodies and the occupancy voxels.
  constructor(index) {
    this.index = index;
    this.group = new THREE.Group();
    this.roomGroup = new THREE.Group();
    this.wallGroup = new THREE.Group();
    this.propGroup = new THREE.Group();
    this.bodyGroup = new THREE.Group(); // re-parented into the real scene in overlay mode
    this.group.add(this.roomGroup, this.wallGroup, this.propGroup, this.bodyGroup);
    const sk = index.skeleton;
    this.agent = new Body(sk.parents, sk.names, index.colours.agent);
    this.partner = new Body(sk.parents, sk.names, index.colours.partner);
    this.bodyGroup.add(this.agent.group, this.partner.group);
    this.props = [];
    this.stream = null;
    // Occupancy: one instanced cube per voxel, placed in the agent's heading frame.
    const occ = index.occupancy;
    [this.Z, this.X, this.Y] = occ.shape;
    this.voxel = occ.voxel;
    this.classColours = index.colours.occupancy.map(srgb);
    this.visibleClasses = new Set(occ.classes.map((c, i) => i).filter((i) => !DEFAULT_HIDDEN_CLASSES.has(occ.classes[i])));
    this.grid = new THREE.Group();
    const cube = new THREE.BoxGeometry(this.voxel * VOXEL_FILL, this.voxel * VOXEL_FILL, this.voxel * VOXEL_FILL);
    const material = new THREE.MeshLambertMaterial({ transparent: true, opacity: VOXEL_OPACITY, depthWrite: false });
    this.voxels = new THREE.InstancedMesh(cube, material, this.Z * this.X * this.Y);
    this.voxels.count = 0;
    this.voxels.frustumCulled = false;
    this.grid.add(this.voxels);
    this.group.add(this.grid);
  }

  setRoom(room) {
    for (const g of [this.roomGroup, this.wallGroup, this.propGroup]) g.clear();
    this.props = [];
    if (!room) return;
    const box = (b, opacity = 1) => {
      const geometry = new THREE.BoxGeometry(2 * b.half[0], 2 * b.half[1], 2 * b.half[2]);
      const material = new THREE.MeshLambertMaterial({ color: srgb(b.rgb), transparent: opacity < 1, opacity, depthWrite: opacity >= 1 });
      const m = new THREE.Mesh(geometry, material);
      m.position.set(b.centre[0], b.centre[1], b.centre[2]);
      return m;
    };
    this.roomGroup.add(box(room.floor), box(room.mat));
    room.furniture.forEach((f) => this.roomGroup.add(box(f)));
    room.walls.forEach((w) => this.wallGroup.add(box(w, WALL_OPACITY)));
    const grid = new THREE.GridHelper(2 * Math.max(room.floor.half[0], room.floor.half[2]), 16, 0x000000, 0x000000);
    grid.material.transparent = true;
    grid.material.opacity = 0.18;
    grid.position.y = 0.002;
    this.roomGroup.add(grid);
    for (const p of room.props) {
      const geometry = p.shape === 'box' ? new THREE.BoxGeometry(2 * p.size, 2 * p.size, 2 * p.size) : new THREE.SphereGeometry(p.size, 20, 14);
      const m = new THREE.Mesh(geometry, new THREE.MeshLambertMaterial({ color: srgb(p.rgb) }));
      this.propGroup.add(m);
      this.props.push(m);
    }
  }

  setStream(stream) {
    this.stream = stream;
    this.group.visible = !!stream;
  }

  // The stream's row shown at time step t (a dream shorter than the episode holds its last row).
  row(t) {
    return Math.min(t, this.stream.frames - 1);
  }

  update(t) {
    const s = this.stream;
    if (!s) return;
    const r = this.row(t);
    this.agent.update(s.agent_joints.data, r);
    this.partner.update(s.partner_joints.data, r);
    if (s.props) {
      const n = s.props.shape[1];
      this.props.forEach((m, i) => {
        if (i >= n) return;
        const k = (r * n + i) * 3;
        m.position.set(s.props.data[k], s.props.data[k + 1], s.props.data[k + 2]);
      });
    }
    this.updateVoxels(r);
  }

  updateVoxels(r) {
    const s = this.stream;
    if (!s.occupancy) { this.voxels.count = 0; return; }
    const root = s.agent_root.data;
    this.grid.position.set(root[4 * r], 0, root[4 * r + 2]);
    this.grid.rotation.set(0, root[4 * r + 3], 0);
    const { Z, X, Y, voxel } = this;
    const occ = s.occupancy.data;
    const m = new THREE.Matrix4();
    let n = 0;
    const base = r * Z * X * Y;
    for (let iz = 0; iz < Z; iz++) {
      for (let ix = 0; ix < X; ix++) {
        for (let iy = 0; iy < Y; iy++) {
          const c = occ[base + (iz * X + ix) * Y + iy];
          if (c === 0 || !this.visibleClasses.has(c)) continue;
          // heading frame (x forward, y left, z up) -> viewer frame (y, z, x)
          const ax = (ix + 0.5) * voxel - (X * voxel) / 2;
          const ay = (iy + 0.5) * voxel - (Y * voxel) / 2;
          const az = (iz + 0.5) * voxel;
          m.makeTranslation(ay, az, ax);
          this.voxels.setMatrixAt(n, m);
          this.voxels.setColorAt(n, this.classColours[c] || this.classColours[1]);
          n++;
        }
      }
    }
    this.voxels.count = n;
    this.voxels.instanceMatrix.needsUpdate = true;
    if (this.voxels.instanceColor) this.voxels.instanceColor.needsUpdate = true;
  }
}

function makeScene(background) {
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(background);
  scene.add(new THREE.HemisphereLight(0xffffff, 0x4a4a4a, 2.2));
  const sun = new THREE.DirectionalLight(0xffffff, 1.6);
  sun.position.set(2, 6, 3);
  scene.add(sun);
  return scene;
}

// ------------------------------------------------------------------------------------ 2D panels
function drawEgo(canvas, stream, t) {
  const ctx = canvas.getContext('2d');
  if (!stream || !stream.ego_rgb) { ctx.clearRect(0, 0, canvas.width, canvas.height); return; }
  const [, H, W] = stream.ego_rgb.shape;
  if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
  const r = Math.min(t, stream.frames - 1);
  const src = stream.ego_rgb.data.subarray(r * H * W * 3, (r + 1) * H * W * 3);
  const image = ctx.createImageData(W, H);
  for (let i = 0, j = 0; i < src.length; i += 3, j += 4) {
    image.data[j] = src[i]; image.data[j + 1] = src[i + 1]; image.data[j + 2] = src[i + 2]; image.data[j + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

function drawOccupancyTop(canvas, stream, t, colours) {
  const ctx = canvas.getContext('2d');
  if (!stream || !stream.occupancy) { ctx.clearRect(0, 0, canvas.width, canvas.height); return; }
  const [, Z, X, Y] = stream.occupancy.shape;
  if (canvas.width !== Y || canvas.height !== X) { canvas.width = Y; canvas.height = X; }
  const r = Math.min(t, stream.frames - 1);
  const occ = stream.occupancy.data;
  const base = r * Z * X * Y;
  const image = ctx.createImageData(Y, X);
  for (let row = 0; row < X; row++) {
    const ix = X - 1 - row; // forward (+x) at the top
    for (let col = 0; col < Y; col++) {
      const iy = Y - 1 - col; // the agent's left (+y) on the left
      let top = 0;
      for (let iz = 0; iz < Z; iz++) top = Math.max(top, occ[base + (iz * X + ix) * Y + iy]);
      const c = top === 0 ? [0.09, 0.1, 0.12] : colours[top] || colours[1];
      const k = 4 * (row * Y + col);
      image.data[k] = c[0] * 255; image.data[k + 1] = c[1] * 255; image.data[k + 2] = c[2] * 255; image.data[k + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}

// ------------------------------------------------------------------------------------ the app
class Viewer {
  constructor(index) {
    this.index = index;
    this.fps = index.fps;
    this.frame = 0;
    this.playing = false;
    this.playClock = 0;
    this.dirty = true;
    this.layout = 'split';
    this.hasDream = false;
    this.view = $('view');

    this.renderer = new THREE.WebGLRenderer({ antialias: true });
    this.renderer.setPixelRatio(window.devicePixelRatio || 1);
    this.renderer.xr.enabled = true;
    this.view.prepend(this.renderer.domElement);

    this.real = new World(index);
    this.dream = new World(index);
    this.sceneReal = makeScene(0x20232a);
    this.sceneDream = makeScene(0x231f2e); // a violet tint: this is the dream
    this.sceneReal.add(this.real.group);
    this.sceneDream.add(this.dream.group);

    this.camera = new THREE.PerspectiveCamera(50, 1, 0.05, 100);
    this.controls = new OrbitControls(this.camera, this.renderer.domElement);
    this.controls.addEventListener('change', () => { this.dirty = true; });
    this.followTarget = new THREE.Vector3();

    // VR: ego panels in front of the viewer, the world moved so the agent stands ahead
    this.vrPanels = new THREE.Group();
    this.vrPanels.visible = false;
    this.sceneReal.add(this.vrPanels);
    this.vrTextures = {};
    for (const [name, x] of [['real', -0.55], ['dream', 0.55]]) {
      const texture = new THREE.CanvasTexture($(`ego-${name}`));
      texture.magFilter = THREE.NearestFilter;
      texture.colorSpace = THREE.SRGBColorSpace;
      const plane = new THREE.Mesh(new THREE.PlaneGeometry(0.9, 0.9), new THREE.MeshBasicMaterial({ map: texture }));
      plane.position.set(x, 2.1, -2.4);
      this.vrPanels.add(plane);
      this.vrTextures[name] = texture;
    }
    this.renderer.xr.addEventListener('sessionstart', () => this.enterVR());
    this.renderer.xr.addEventListener('sessionend', () => this.exitVR());
    $('vr-slot').appendChild(VRButton.createButton(this.renderer, { optionalFeatures: ['local-floor'] }));

    this.buildControls();
    new ResizeObserver(() => { this.dirty = true; }).observe(this.view);
    this.renderer.setAnimationLoop((time) => this.tick(time));
  }

  buildControls() {
    const select = $('episode');
    this.index.episodes.forEach((e, i) => {
      const o = document.createElement('option');
      o.value = String(i);
      o.textContent = `${e.name}${e.task ? ` · ${e.task}` : ''}${e.streams.dream ? '' : ' (real only)'}`;
      select.appendChild(o);
    });
    select.addEventListener('change', () => this.loadEpisode(Number(select.value)));
    const scrub = $('scrub');
    scrub.addEventListener('input', () => this.setFrame(Number(scrub.value)));
    $('play').addEventListener('click', () => this.setPlaying(!this.playing));
    document.querySelectorAll('input[name=layout]').forEach((r) => r.addEventListener('change', () => this.setLayout(r.value)));
    $('follow').addEventListener('change', () => { this.dirty = true; });
    window.addEventListener('keydown', (ev) => {
      if (ev.target.tagName === 'SELECT') return;
      if (ev.code === 'Space') { ev.preventDefault(); this.setPlaying(!this.playing); }
      if (ev.code === 'ArrowRight') this.setFrame(this.frame + 1);
      if (ev.code === 'ArrowLeft') this.setFrame(this.frame - 1);
    });
    // layers
    document.querySelectorAll('#layer-list input[data-layer]').forEach((box) => box.addEventListener('change', () => {
      for (const w of [this.real, this.dream]) {
        const g = { room: w.roomGroup, walls: w.wallGroup, props: w.propGroup }[box.dataset.layer];
        g.visible = box.checked;
      }
      this.dirty = true;
    }));
    const classes = this.index.occupancy.classes;
    const colours = this.index.colours.occupancy;
    const list = $('occupancy-classes');
    classes.forEach((name, c) => {
      if (c === 0) return;
      const label = document.createElement('label');
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.checked = !DEFAULT_HIDDEN_CLASSES.has(name);
      box.addEventListener('change', () => this.setOccupancyClass(c, box.checked));
      label.append(box, ` `);
      const sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = cssColour(colours[c]);
      label.append(sw, name);
      list.appendChild(label);
    });
    // legend
    const legend = $('legend');
    const item = (rgb, text) => {
      const li = document.createElement('li');
      const sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = cssColour(rgb);
      li.append(sw, text);
      legend.appendChild(li);
    };
    item(this.index.colours.agent, 'agent');
    item(this.index.colours.partner, 'partner');
    classes.forEach((name, c) => { if (c > 0) item(colours[c], `${name} voxel`); });
  }

  setOccupancyClass(c, on) {
    for (const w of [this.real, this.dream]) {
      if (on) w.visibleClasses.add(c); else w.visibleClasses.delete(c);
    }
    this.applyFrame();
  }

  async loadEpisode(i) {
    const entry = this.index.episodes[i];
    showMessage(`loading ${entry.name} ...`, true);
    const [real, dream] = await Promise.all([
      loadStream(entry.streams.real),
      entry.streams.dream ? loadStream(entry.streams.dream) : Promise.resolve(null),
    ]);
    this.entry = entry;
    this.streams = { real, dream };
    this.hasDream = !!dream;
    document.body.classList.toggle('no-dream', !this.hasDream);
    this.real.setRoom(entry.room);
    this.dream.setRoom(entry.room);
    this.real.setStream(real);
    this.dream.setStream(dream);
    $('episode').value = String(i);
    const bits = [entry.instruction && `“${entry.instruction}”`, entry.behaviour && `${entry.behaviour} policy`,
      entry.partner_behaviour && `partner: ${entry.partner_behaviour}`, entry.success ? 'success' : null, `room ${entry.room_seed}`];
    $('info').textContent = bits.filter(Boolean).join(' · ');
    const scrub = $('scrub');
    scrub.max = String(real.frames - 1);
    this.frameCount = real.frames;
    if (dream) {
      const a = (100 * dream.dreamStart) / Math.max(1, real.frames - 1);
      const b = (100 * (dream.frames - 1)) / Math.max(1, real.frames - 1);
      scrub.style.background = `linear-gradient(90deg, var(--context) 0 ${a}%, var(--dream) ${a}% ${b}%, #3f3f46 ${b}% 100%)`;
      $('label-dream').innerHTML = `dream &mdash; world model <small>(context ${dream.dreamStart} real steps)</small>`;
    } else {
      scrub.style.background = 'var(--context)';
    }
    this.setLayout(this.hasDream ? this.layout : 'single');
    this.resetCamera();
    api.episode = entry.name;
    api.frameCount = real.frames;
    showMessage('');
    this.setFrame(Math.min(this.frame, real.frames - 1));
  }

  pelvis(t) {
    const s = this.streams.real;
    const r = Math.min(t, s.frames - 1);
    const j = s.agent_joints.data;
    const n = this.index.skeleton.parents.length;
    return new THREE.Vector3(j[r * n * 3], j[r * n * 3 + 1], j[r * n * 3 + 2]);
  }

  heading(t) {
    const s = this.streams.real;
    return s.agent_root.data[4 * Math.min(t, s.frames - 1) + 3];
  }

  partnerPelvis(t) {
    const s = this.streams.real;
    const r = Math.min(t, s.frames - 1);
    const j = s.partner_joints.data;
    const n = this.index.skeleton.parents.length;
    return new THREE.Vector3(j[r * n * 3], j[r * n * 3 + 1], j[r * n * 3 + 2]);
  }

  resetCamera() {
    // Look at the middle of the two bodies from the side of the line between them that faces the
    // room's centre, far enough to have both in view.
    const a = this.pelvis(this.frame);
    const b = this.partnerPelvis(this.frame);
    const mid = a.clone().add(b).multiplyScalar(0.5);
    const along = b.clone().sub(a).setY(0);
    const gap = along.length();
    if (gap < 1e-3) along.set(1, 0, 0); else along.divideScalar(gap);
    let side = new THREE.Vector3(-along.z, 0, along.x);
    const toCentre = mid.clone().setY(0).negate();
    if (side.dot(toCentre) < 0) side.negate();
    const distance = Math.max(CAMERA_MIN_DISTANCE, 1.1 * gap + 1.5);
    this.controls.target.copy(mid);
    this.camera.position.copy(mid).addScaledVector(side, distance).addScaledVector(along, -0.25 * distance);
    this.camera.position.y = mid.y + CAMERA_UP;
    this.followTarget.copy(a);
    this.controls.update();
    this.dirty = true;
  }

  setLayout(layout) {
    if (layout !== 'single') {
      this.layout = layout;
      document.querySelectorAll('input[name=layout]').forEach((r) => { r.checked = r.value === layout; });
    }
    const overlay = layout === 'overlay' || this.renderer.xr.isPresenting;
    const ghostParent = overlay ? this.sceneReal : this.dream.group;
    ghostParent.add(this.dream.bodyGroup);
    this.dream.agent.setGhost(overlay);
    this.dream.partner.setGhost(overlay);
    this.currentLayout = this.hasDream ? (overlay ? 'overlay' : 'split') : 'single';
    api.layout = this.currentLayout;
    $('label-dream').style.display = this.currentLayout === 'split' ? '' : 'none';
    $('label-real').innerHTML = this.currentLayout === 'overlay' ? 'real &mdash; simulator <small>(dream: ghosts)</small>' : 'real &mdash; simulator';
    this.dirty = true;
  }

  setPlaying(on) {
    this.playing = on;
    this.playClock = 0;
    $('play').innerHTML = on ? '&#10073;&#10073;' : '&#9654;';
    if (on && this.frame >= this.frameCount - 1) this.setFrame(0);
  }

  setFrame(t) {
    if (!this.streams) return;
    this.frame = Math.max(0, Math.min(Math.round(t), this.frameCount - 1));
    api.frame = this.frame;
    $('scrub').value = String(this.frame);
    this.applyFrame();
  }

  applyFrame() {
    const t = this.frame;
    this.real.update(t);
    this.dream.update(t);
    const { real, dream } = this.streams;
    drawEgo($('ego-real'), real, t);
    drawEgo($('ego-dream'), dream, t);
    const colours = this.index.colours.occupancy;
    drawOccupancyTop($('occ-real'), real, t, colours);
    drawOccupancyTop($('occ-dream'), dream, t, colours);
    for (const k in this.vrTextures) this.vrTextures[k].needsUpdate = true;
    let phase = '';
    if (dream) {
      if (t < dream.dreamStart) phase = '<span class="phase-context">context: real</span>';
      else if (t < dream.frames) phase = `<span class="phase-dream">dream step ${t - dream.dreamStart + 1}</span>`;
      else phase = `<span class="phase-context">dream ended at t=${dream.frames - 1}</span>`;
      $('ego-dream-caption').textContent = t < dream.dreamStart ? 'dream (context)' : 'dream';
    }
    $('time').innerHTML = `t = ${t} / ${this.frameCount - 1} &middot; ${(t / this.fps).toFixed(2)} s ${phase ? '&middot; ' + phase : ''}`;
    if ($('follow').checked && !this.renderer.xr.isPresenting) {
      const p = this.pelvis(t);
      const delta = p.clone().sub(this.followTarget);
      this.camera.position.add(delta);
      this.controls.target.add(delta);
      this.followTarget.copy(p);
      this.controls.update();
    }
    this.dirty = true;
  }

  enterVR() {
    this.setLayout(this.layout);
    // Stand the viewer a little behind the agent, facing where it faces at this step.
    const p = this.pelvis(this.frame);
    const yaw = this.heading(this.frame);
    for (const g of [this.real.group, this.dream.bodyGroup]) {
      g.position.set(0, 0, 0);
      g.rotation.set(0, 0, 0);
    }
    const holder = this.vrHolder || (this.vrHolder = new THREE.Group());
    this.sceneReal.add(holder);
    holder.add(this.real.group, this.dream.bodyGroup);
    // local-floor: the viewer at the origin looking down -z; put the agent VR_AGENT_AHEAD in front
    holder.rotation.set(0, Math.PI - yaw, 0);
    const rotated = p.clone().applyAxisAngle(new THREE.Vector3(0, 1, 0), Math.PI - yaw);
    holder.position.set(-rotated.x, 0, -rotated.z - VR_AGENT_AHEAD);
    this.vrPanels.visible = true;
    this.setPlaying(true);
  }

  exitVR() {
    this.sceneReal.add(this.real.group);
    this.setLayout(this.layout);
    this.vrPanels.visible = false;
    this.dirty = true;
  }

  panes() {
    // [{scene, x, y, w, h}] in CSS pixels of the canvas
    const w = this.view.clientWidth;
    const h = this.view.clientHeight;
    if (this.currentLayout === 'split') {
      const half = Math.floor(w / 2);
      return [{ name: 'real', scene: this.sceneReal, world: this.real, x: 0, y: 0, w: half, h },
        { name: 'dream', scene: this.sceneDream, world: this.dream, x: half, y: 0, w: w - half, h }];
    }
    return [{ name: 'real', scene: this.sceneReal, world: this.real, x: 0, y: 0, w, h }];
  }

  tick(time) {
    if (!this.streams) return;
    if (this.playing && !this.renderer.xr.isPresenting && document.hidden) this.setPlaying(false);
    if (this.playing) {
      const now = time / 1000;
      if (!this.playClock) this.playClock = now;
      const steps = Math.floor((now - this.playClock) * this.fps);
      if (steps > 0) {
        this.playClock += steps / this.fps;
        if (this.frame + steps >= this.frameCount) {
          if (this.renderer.xr.isPresenting) this.setFrame(0); else { this.setFrame(this.frameCount - 1); this.setPlaying(false); }
        } else this.setFrame(this.frame + steps);
      }
    }
    if (this.renderer.xr.isPresenting) {
      this.renderer.render(this.sceneReal, this.camera);
      this.markRendered();
      return;
    }
    if (!this.dirty) return;
    this.dirty = false;
    const w = this.view.clientWidth;
    const h = this.view.clientHeight;
    const size = this.renderer.getSize(new THREE.Vector2());
    if (size.x !== w || size.y !== h) this.renderer.setSize(w, h, true);
    this.renderer.setScissorTest(true);
    for (const p of this.panes()) {
      const y = h - p.y - p.h; // WebGL's viewport starts at the bottom
      this.renderer.setViewport(p.x, y, p.w, p.h);
      this.renderer.setScissor(p.x, y, p.w, p.h);
      this.camera.aspect = p.w / Math.max(1, p.h);
      this.camera.updateProjectionMatrix();
      this.renderer.render(p.scene, this.camera);
    }
    this.renderer.setScissorTest(false);
    this.markRendered();
  }

  markRendered() {
    api.renderedFrame = this.frame;
    if (!window.__dreamgymReady) {
      window.__dreamgymReady = true;
      api.ready = true;
    }
  }

  // Page coordinates (CSS pixels) of every joint of both bodies in each pane, for tests:
  // {real: {agent: [[x, y, visible], ...], partner: [...]}, dream: {...}}
  screenPoints() {
    const rect = this.renderer.domElement.getBoundingClientRect();
    const out = {};
    for (const p of this.panes()) {
      this.camera.aspect = p.w / Math.max(1, p.h);
      this.camera.updateProjectionMatrix();
      const project = (body) => body.positions.map((v) => {
        const world = v.clone();
        body.group.parent.localToWorld(world);
        const ndc = world.project(this.camera);
        const visible = ndc.z > -1 && ndc.z < 1 && Math.abs(ndc.x) <= 1 && Math.abs(ndc.y) <= 1;
        return [rect.left + p.x + ((ndc.x + 1) / 2) * p.w, rect.top + p.y + ((1 - ndc.y) / 2) * p.h, visible];
      });
      out[p.name] = { agent: project(p.world.agent), partner: project(p.world.partner) };
      if (this.currentLayout === 'overlay') out.dream = { agent: project(this.dream.agent), partner: project(this.dream.partner) };
    }
    return out;
  }
}

async function main() {
  showMessage('loading the bundle ...', true);
  const index = await fetchJSON(BUNDLE + 'viewer.json');
  if (!index.episodes || !index.episodes.length) throw new Error('the bundle holds no episodes');
  const viewer = new Viewer(index);
  const notes = index.notes || [];
  if (notes.length) {
    $('notes-section').hidden = false;
    for (const n of notes) {
      const li = document.createElement('li');
      li.textContent = n;
      $('notes').appendChild(li);
    }
  }
  const params = new URLSearchParams(window.location.search);
  let first = 0;
  if (params.has('episode')) {
    const want = params.get('episode');
    const i = index.episodes.findIndex((e, k) => e.name === want || String(e.id) === want || String(k) === want);
    if (i < 0) throw new Error(`no episode ${want} in this bundle`);
    first = i;
  }
  if (params.get('layout') === 'overlay') viewer.layout = 'overlay';
  if (params.has('frame')) viewer.frame = Number(params.get('frame')) || 0;
  Object.assign(api, {
    viewer,
    setFrame: (t) => viewer.setFrame(t),
    setLayout: (l) => viewer.setLayout(l),
    setOccupancyClass: (c, on) => viewer.setOccupancyClass(c, on),
    loadEpisode: (i) => viewer.loadEpisode(i),
    screenPoints: () => viewer.screenPoints(),
  });
  await viewer.loadEpisode(first);
}

main().catch((err) => {
  console.error(err);
  window.__dreamgymError = String(err && err.message ? err.message : err);
  showMessage(`The viewer could not start: ${window.__dreamgymError}`);
});
