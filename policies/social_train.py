"""Training and scoring the social avatar; ``dreamgym avatar-demo``.

1. ``collect_scenes``: ``SocialSceneTask`` scenes in ``EgoRoomVecEnv`` (state only, no rendering),
   the responder expert acting (plus a little noise so the inverse controller sees off-reference
   transitions). Per step: both bodies' features, relative pose, utterance, action.
2. ``train``: the VQ-VAE on windows of both bodies; the inverse controller on (f_t, f_t+1) -> a_t;
   the response transformer on token sequences (teacher forcing); the motion feature extractor
   for FID/diversity (a window classifier of the partner behaviour being responded to, trained on
   reference windows; its 32-d penultimate layer is the feature space).
3. ``evaluate``: held-out scenes (rooms from ``eval_seed_base``) run twice in the simulator, once
   with the responder (reference) and once with the avatar, same rooms and scripts; MPJPE and
   PA-MPJPE of root-relative joints per step, FID and diversity of response windows, response
   correctness from simulator state, latency of one ``act`` step at B=1.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dreamgym.envs import partner as P
from dreamgym.envs.motion import JOINT_POS, ROOT_QUAT, yaw_of_quat

from .social import REL_DIM, WINDOW, SocialAvatarPolicy, SocialConfig, object_features, relative_pose, step_features
from .social_scenes import SocialSceneTask, response_checks, segment_correct
from .text_encoder import shared_encoder

KEYS = ("motion", "partner_motion")


def run_scenes(task, seeds, policy=None, noise=0.0, gen=None, render=False, resolution=64):
    """Run one scene per seed to ``task.max_steps``; returns per-step arrays (T, B, ...) and frames."""
    from dreamgym.envs import EgoRoomVecEnv

    B = len(seeds)
    keys = KEYS + (("ego_rgb",) if render else ())
    env = EgoRoomVecEnv(
        num_envs=B,
        task=task,
        obs_keys=keys,
        return_tensors=True,
        resolution=resolution,
        render_mode="rgb_array" if render else None,
        render_resolution=128,
    )
    obs, info = env.reset_tensors(room_seeds=list(seeds))
    point_at = env.core.params.goal.clone()
    if policy is not None:
        policy.reset()
    rec = {k: [] for k in ("motion", "partner_motion", "objects", "action", "behaviour", "utt")}
    checks = {k: [] for k in ("wave", "approach", "point", "turn_away")}
    frames, latency = [], []
    for _ in range(task.max_steps - 1):  # stop before truncation resets the worlds
        if policy is None:
            a = env.expert_actions()
            if noise:
                a = (a + noise * torch.randn(B, 6, generator=gen)).clamp(-1, 1)
        else:
            t = time.perf_counter()
            a = policy.act(obs, utterances=list(info["utterance"]), objects=env.core.state.prop_pos[..., :2])
            latency.append((time.perf_counter() - t) * 1000)
        rec["motion"].append(obs["motion"].clone())
        rec["partner_motion"].append(obs["partner_motion"].clone())
        rec["objects"].append(env.core.state.prop_pos[..., :2].cpu().clone())
        rec["action"].append(a.clone())
        rec["behaviour"].append(env.core.state.partner_behaviour.clone())
        rec["utt"].append(list(info["utterance"]))
        if render:
            frames.append((obs["ego_rgb"][0].permute(1, 2, 0).numpy(), env.render()[0]))
        obs, _, term, trunc, info = env.step_tensors(a)
        for k, v in response_checks(env.core.state, obs["motion"], point_at).items():
            checks[k].append(v.clone())
    env.close()
    out = {k: torch.stack(v) for k, v in rec.items() if k != "utt"}
    out["utt"] = rec["utt"]
    out["checks"] = {k: torch.stack(v).numpy() for k, v in checks.items()}
    out["latency_ms"] = latency
    out["frames"] = frames
    out["point_at"] = point_at
    return out


def features(rec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Own and partner step features (T, B, 77) and relative poses (T, B, 4) of a recording."""
    m, pm = rec["motion"], rec["partner_motion"]
    T = m.shape[0]
    fo, fp, rel = [], [], []
    for t in range(T):
        fo.append(step_features(m[t], m[t - 1] if t else None))
        fp.append(step_features(pm[t], pm[t - 1] if t else None))
        rel.append(relative_pose(m[t], pm[t]))
    return torch.stack(fo), torch.stack(fp), torch.stack(rel)


def facing_bearings(rec) -> torch.Tensor:
    """(T, B): where the reference response faces at each step, as a bearing from the avatar's
    heading (radians): toward the point the partner points at while they point, no turn while
    they turn away, toward the partner otherwise (the responder's turning targets)."""
    m, pm, beh, pa = rec["motion"], rec["partner_motion"], rec["behaviour"], rec["point_at"]
    yaw = yaw_of_quat(m[..., ROOT_QUAT])
    d_p = pm[..., :2] - m[..., :2]
    d_t = pa[None].to(m) - m[..., :2]
    target = torch.where(beh == P.POINT, torch.atan2(d_t[..., 1], d_t[..., 0]), torch.atan2(d_p[..., 1], d_p[..., 0]))
    target = torch.where(beh == P.TURN_AWAY, yaw, target)
    return torch.remainder(target - yaw + math.pi, 2 * math.pi) - math.pi


def object_sequence(rec) -> tuple[torch.Tensor, torch.Tensor]:
    """Object features (T, B, N, OBJ_DIM) of a recording and the index of the object the partner
    points at in each scene (B,): the prop nearest the scene's pointing target."""
    m, pm, objs = rec["motion"], rec["partner_motion"], rec["objects"]
    feats = torch.stack([object_features(m[t], pm[t], objs[t]) for t in range(m.shape[0])])
    pointed = torch.linalg.norm(objs[0] - rec["point_at"][:, None].to(objs), dim=-1).argmin(-1)
    return feats, pointed


def rotate_objects(objf: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Object features (B, K, N, OBJ_DIM) as seen by an avatar turned by ``delta`` (B,) more
    (only the avatar-frame position changes; the partner-relative parts do not)."""
    c, s = torch.cos(delta)[:, None, None], torch.sin(delta)[:, None, None]
    out = objf.clone()
    out[..., 0], out[..., 1] = c * objf[..., 0] + s * objf[..., 1], -s * objf[..., 0] + c * objf[..., 1]
    return out


def rotate_relative(rel: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Relative poses (B, K, 8) (two of x, y, cos, sin) as seen by an avatar turned by ``delta`` (B,) more."""
    c, s = torch.cos(delta)[:, None], torch.sin(delta)[:, None]
    out = rel.clone()
    for o in (0, REL_DIM):
        x, y, hc, hs = rel[..., o], rel[..., o + 1], rel[..., o + 2], rel[..., o + 3]
        out[..., o], out[..., o + 1] = c * x + s * y, -s * x + c * y
        out[..., o + 2], out[..., o + 3] = hc * c + hs * s, hs * c - hc * s
    return out


def windows(f: torch.Tensor) -> torch.Tensor:
    """(T, B, D) -> (B, T // WINDOW, WINDOW, D)."""
    T, B, D = f.shape
    n = T // WINDOW
    return f[: n * WINDOW].permute(1, 0, 2).reshape(B, n, WINDOW, D)


class MotionEncoder(nn.Module):
    """Feature extractor for FID/diversity: window (B, 8, 77) -> 32-d, trained as a behaviour classifier."""

    def __init__(self, n_classes: int = len(P.BEHAVIOURS)):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(WINDOW * 77, 128), nn.GELU(), nn.Linear(128, 32))
        self.cls = nn.Linear(32, n_classes)

    def forward(self, w):
        return self.body(w.flatten(1))


def fid(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


def diversity(a: np.ndarray, pairs: int = 300, seed: int = 0) -> float:
    r = np.random.default_rng(seed)
    i, j = r.integers(len(a), size=pairs), r.integers(len(a), size=pairs)
    return float(np.linalg.norm(a[i] - a[j], axis=-1).mean())


def mpjpe(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """MPJPE and Procrustes-aligned MPJPE (mm) of (N, 22, 3) root-relative joints."""
    err = np.linalg.norm(pred - ref, axis=-1).mean()
    p = pred - pred.mean(1, keepdims=True)
    r = ref - ref.mean(1, keepdims=True)
    h = np.einsum("nji,njk->nik", p, r)
    u, s, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("nij,njk->nik", u, vt)))
    s[:, -1] *= d
    u[:, :, -1] *= d[:, None]
    rot = np.einsum("nij,njk->nik", u, vt)
    scale = s.sum(1) / (p**2).sum((1, 2))
    aligned = scale[:, None, None] * np.einsum("nji,nik->njk", p, rot)
    pa = np.linalg.norm(aligned - r, axis=-1).mean()
    return float(err * 1000), float(pa * 1000)


def train(cfg, log=print) -> tuple[SocialAvatarPolicy, MotionEncoder]:
    """The social avatar's four stages, in order: tokenizer, inverse controller, response transformer, feature extractor."""
    torch.manual_seed(int(cfg.seed))
    gen = torch.Generator().manual_seed(int(cfg.seed))
    pol, f = _collect_features(cfg, gen, log)
    wins = _train_tokenizer(pol, f, cfg, gen, log)
    _train_inverse(pol, f, cfg, gen, log)
    wo, N, n = _train_response(pol, f, cfg, gen, log)
    fe, fe_acc = _train_feature_extractor(f, wo, N, n, cfg, gen, log)
    pol.config.info = {
        "train_scenes": int(N),
        "train_steps": int(N * f["fo"].shape[0]),
        "feature_extractor_accuracy": fe_acc,
        "vq_window_mse_norm": float(F.mse_loss(pol.vq(wins[:4096])[0], wins[:4096]).item()),
    }
    return pol, fe.eval()


def _collect_features(cfg, gen: torch.Generator, log) -> tuple[SocialAvatarPolicy, dict]:
    """Expert scenes -> per-step features of both bodies, utterances, facing and objects; a fresh policy normalised on them."""
    task = SocialSceneTask()
    t0 = time.time()
    recs = [
        run_scenes(
            task,
            range(cfg.train_seed_base + k * cfg.num_envs, cfg.train_seed_base + (k + 1) * cfg.num_envs),
            noise=float(cfg.expert_noise),
            gen=gen,
        )
        for k in range(int(cfg.batches))
    ]
    log(f"collected {len(recs)} x {cfg.num_envs} scenes in {time.time() - t0:.0f}s")
    fo, fp, rel, act, beh, utt, face, objf, pointed = [], [], [], [], [], [], [], [], []
    enc = shared_encoder()
    for r in recs:
        a, b, c = features(r)
        fo.append(a), fp.append(b), rel.append(c), act.append(r["action"]), beh.append(r["behaviour"])
        face.append(facing_bearings(r))
        of, pt = object_sequence(r)
        objf.append(of), pointed.append(pt)
        T, B = r["behaviour"].shape
        utt.append(torch.stack([enc.encode(r["utt"][t]) for t in range(T)]))
    fo, fp, rel, act, beh, utt, face, objf = (torch.cat(x, 1) for x in (fo, fp, rel, act, beh, utt, face, objf))  # (T, N, ...)
    pointed = torch.cat(pointed)
    allf = torch.cat((fo, fp), 1).flatten(0, 1)
    mean, std = allf.mean(0), allf.std(0).clamp(min=1e-3)
    c = SocialConfig(
        codebook=int(cfg.codebook),
        context=int(cfg.context),
        heading_head=bool(cfg.get("heading_head", False)),
        scene_objects=bool(cfg.get("scene_objects", False)),
    )
    if c.scene_objects and not c.heading_head:
        raise ValueError("scene_objects=true needs heading_head=true: the pointer head chooses what the facing direction aims at")
    c.feat_mean, c.feat_std = mean.tolist(), std.tolist()
    pol = SocialAvatarPolicy(c)
    nfo, nfp = pol.norm(fo), pol.norm(fp)
    f = dict(fo=fo, fp=fp, rel=rel, act=act, beh=beh, utt=utt, face=face, objf=objf, pointed=pointed, nfo=nfo, nfp=nfp, c=c)
    return pol, f


def _train_tokenizer(pol: SocialAvatarPolicy, f: dict, cfg, gen: torch.Generator, log) -> torch.Tensor:
    nfo, nfp = f["nfo"], f["nfp"]
    # 1. tokenizer on windows of both bodies (all 8 phase offsets for more data)
    wins = torch.cat([windows(x[o:]).flatten(0, 1) for x in (nfo, nfp) for o in range(0, WINDOW, 2)])
    opt = torch.optim.AdamW(pol.vq.parameters(), lr=1e-3)
    pol.vq.train()
    for u in range(int(cfg.vq_updates)):
        i = torch.randint(len(wins), (256,), generator=gen)
        rec, tok, commit = pol.vq(wins[i])
        loss = F.mse_loss(rec, wins[i]) + 0.25 * commit
        opt.zero_grad(), loss.backward(), opt.step()
        if (u + 1) % max(1, int(cfg.vq_updates) // 4) == 0:
            log(f"  vq {u + 1}: recon {F.mse_loss(rec, wins[i]).item():.4f} (normalised units)")
    pol.vq.eval()
    return wins


def _train_inverse(pol: SocialAvatarPolicy, f: dict, cfg, gen: torch.Generator, log) -> None:
    nfo, act = f["nfo"], f["act"]
    # 2. inverse controller: (f_t, f_t+1) -> a_t
    cur, nxt, a_t = nfo[:-1].flatten(0, 1), nfo[1:].flatten(0, 1), act[:-1].flatten(0, 1)
    opt = torch.optim.AdamW(pol.inv.parameters(), lr=1e-3)
    for u in range(int(cfg.inv_updates)):
        i = torch.randint(len(cur), (256,), generator=gen)
        loss = F.mse_loss(pol.inv(cur[i], nxt[i]), a_t[i])
        opt.zero_grad(), loss.backward(), opt.step()
    log(f"  inverse controller: action mse {loss.item():.4f}")


def _train_response(pol: SocialAvatarPolicy, f: dict, cfg, gen: torch.Generator, log) -> tuple[torch.Tensor, int, int]:
    fo, rel, act, beh, utt, face, objf, pointed, nfo, nfp, c = (
        f[k] for k in ("fo", "rel", "act", "beh", "utt", "face", "objf", "pointed", "nfo", "nfp", "c")
    )
    # 3. response transformer: window k of the partner (and the pose at its start/end) -> own window k+1
    with torch.no_grad():
        wo, wp = windows(nfo), windows(nfp)  # (N, n, 8, 77)
        N, n = wo.shape[:2]
        to = pol.vq.encode(wo.flatten(0, 1)).view(N, n)
        tp = pol.vq.encode(wp.flatten(0, 1)).view(N, n)
        r = rel[: n * WINDOW].permute(1, 0, 2).reshape(N, n, WINDOW, REL_DIM)
        rr = torch.cat((r[:, :, 0], r[:, :, -1]), -1)
        uu = utt[: n * WINDOW].permute(1, 0, 2).reshape(N, n, WINDOW, -1)[:, :, -1]
        # the facing direction as the last step of window k sees it (cos, sin)
        fb = face[: n * WINDOW].permute(1, 0).reshape(N, n, WINDOW)[:, :, -1]
        beh_end = beh[: n * WINDOW].permute(1, 0).reshape(N, n, WINDOW)[:, :, -1]
        still = beh_end == P.TURN_AWAY
        n_obj = objf.shape[2]
        ow = objf[: n * WINDOW].permute(1, 0, 2, 3).reshape(N, n, WINDOW, n_obj, -1)[:, :, -1]  # at each window's end
        # the pointer's label: the pointed-at object while the partner points, "none" (n_obj) otherwise
        ptr_lab = torch.where(beh_end == P.POINT, pointed[:, None].expand(-1, n), torch.full_like(beh_end, n_obj))
    # inputs at window k: partner k, pose k, utterance k, own k ; target: own k+1 (and where it faces)
    src_p, src_r, src_u, src_o, tgt = tp[:, :-1], rr[:, :-1], uu[:, :-1], to[:, :-1], to[:, 1:]
    face_b, face_still = fb[:, :-1], still[:, :-1]
    src_obj, tgt_ptr = ow[:, :-1], ptr_lab[:, :-1]
    K = int(cfg.context)
    opt = torch.optim.AdamW(pol.gen.parameters(), lr=5e-4, weight_decay=1e-2)
    for u in range(int(cfg.gen_updates)):
        i = torch.randint(N, (64,), generator=gen)
        s = torch.randint(0, max(1, src_p.shape[1] - K + 1), (1,), generator=gen).item()
        sl = slice(s, s + K)
        logits, heading = pol.gen.forward_all(src_p[i, sl], src_r[i, sl], src_u[i, sl], src_o[i, sl])
        ce = F.cross_entropy(logits.flatten(0, 1), tgt[i, sl].flatten())
        loss = ce
        if heading is not None:
            # The responder nearly always already faces its target, so its facing labels are
            # nearly always ~0 and a head fitted on them never learns to turn. Each sequence is
            # therefore also seen as if the avatar had been turned by a random angle: the partner's
            # relative pose turns the other way and the facing label with it (tokens, which live in
            # the body's own frame, are unchanged; no turn stays no turn).
            delta = (torch.rand(len(i), generator=gen) * 2 - 1) * math.pi
            r_aug = rotate_relative(src_r[i, sl], delta)
            want = torch.where(face_still[i, sl], 0.0, face_b[i, sl] - delta[:, None])
            hid = pol.gen.hidden(src_p[i, sl], r_aug, src_u[i, sl], src_o[i, sl])
            heading = pol.gen.heading(hid)
            tgt_face = torch.stack((torch.cos(want), torch.sin(want)), -1)
            face_mse = F.mse_loss(heading, tgt_face)
            loss = loss + float(cfg.get("heading_weight", 1.0)) * face_mse
            if c.scene_objects:
                ptr = pol.gen.point(hid, rotate_objects(src_obj[i, sl], delta))
                loss = loss + float(cfg.get("pointer_weight", 1.0)) * F.cross_entropy(ptr.flatten(0, 1), tgt_ptr[i, sl].flatten())
        opt.zero_grad(), loss.backward(), opt.step()
        if (u + 1) % max(1, int(cfg.gen_updates) // 4) == 0:
            acc = (logits.argmax(-1) == tgt[i, sl]).float().mean().item()
            msg = f"  response transformer {u + 1}: ce {ce.item():.3f} token acc {acc:.2f}"
            if heading is not None:
                err = torch.remainder(torch.atan2(heading[..., 1], heading[..., 0]) - want + math.pi, 2 * math.pi) - math.pi
                msg += f", facing error {err.abs().mean().item():.3f} rad"
            if c.scene_objects:
                is_pt = tgt_ptr[i, sl] < n_obj
                hit = (ptr.argmax(-1) == tgt_ptr[i, sl]).float()
                msg += f", pointer accuracy {hit.mean().item():.2f} (while pointing {hit[is_pt].mean().item():.2f})"
            log(msg)
    pol.eval()
    return wo, N, n


def _train_feature_extractor(f: dict, wo: torch.Tensor, N: int, n: int, cfg, gen: torch.Generator, log) -> tuple[MotionEncoder, float]:
    beh = f["beh"]
    # 4. motion feature extractor (FID / diversity): classify the partner behaviour of own windows
    lab = beh[: n * WINDOW].permute(1, 0).reshape(N, n, WINDOW)[:, :, -1].flatten()
    x = wo.flatten(0, 1)
    fe = MotionEncoder()
    opt = torch.optim.AdamW(fe.parameters(), lr=1e-3)
    for u in range(int(cfg.fe_updates)):
        i = torch.randint(len(x), (256,), generator=gen)
        loss = F.cross_entropy(fe.cls(fe(x[i])), lab[i])
        opt.zero_grad(), loss.backward(), opt.step()
    fe_acc = (fe.cls(fe(x)).argmax(-1) == lab).float().mean().item()
    log(f"  feature extractor: train accuracy {fe_acc:.2f}")
    return fe, fe_acc


def evaluate(pol: SocialAvatarPolicy, fe: MotionEncoder, seeds, task=None, render=False) -> tuple[dict, dict, dict]:
    task = task or SocialSceneTask()
    ref = run_scenes(task, seeds)
    gen_rec = run_scenes(task, seeds, policy=pol, render=render)
    T, B = ref["behaviour"].shape
    jp = lambda r: r["motion"][..., JOINT_POS].reshape(T * B, 22, 3).numpy()  # noqa: E731
    err, pa = mpjpe(jp(gen_rec), jp(ref))
    with torch.no_grad():
        emb = lambda r: fe(pol.norm(windows(features(r)[0])).flatten(0, 1)).numpy()  # noqa: E731
        e_ref, e_gen = emb(ref), emb(gen_rec)
    corr = segment_correct(gen_rec["behaviour"].numpy(), gen_rec["checks"])
    corr_ref = segment_correct(ref["behaviour"].numpy(), ref["checks"])
    flat = [v for vs in corr.values() for v in vs]
    flat_ref = [v for vs in corr_ref.values() for v in vs]
    # latency at B=1, the way an avatar runs in a VR session
    pol.reset()
    lat = []
    for t in range(3 * WINDOW):
        o = {"motion": gen_rec["motion"][t, :1], "partner_motion": gen_rec["partner_motion"][t, :1]}
        s = time.perf_counter()
        pol.act(o, utterances=[gen_rec["utt"][t][0]], objects=gen_rec["objects"][t, :1])
        lat.append((time.perf_counter() - s) * 1000)
    metrics = {
        "response_correctness": float(np.mean(flat)) if flat else float("nan"),
        "response_correctness_by_behaviour": {k: (float(np.mean(v)) if v else None, len(v)) for k, v in corr.items()},
        "reference_correctness": float(np.mean(flat_ref)) if flat_ref else float("nan"),
        "mpjpe_mm": err,
        "pa_mpjpe_mm": pa,
        "fid": fid(e_gen, e_ref),
        "diversity": diversity(e_gen),
        "reference_diversity": diversity(e_ref),
        "latency_ms": float(np.mean(lat)),
        "latency_ms_per_window_step": float(np.max(lat)),
        "scenes": B,
        "steps_per_scene": T,
        "response_segments": len(flat),
    }
    return metrics, ref, gen_rec


def run_train(cfg) -> int:
    """``dreamgym train-social out=DIR``: the simulator stage (or ``init=CKPT``), then the dream stage with ``world_model=WM``."""
    torch.set_num_threads(int(cfg.num_threads))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    init = Path(cfg.init) if cfg.get("init") else None
    if init is not None:  # start from a trained avatar: no simulator training
        pol, fe = SocialAvatarPolicy.from_pretrained(init), load_motion_encoder(init)
    else:
        pol, fe = train(cfg)
    if cfg.get("world_model") is not None:  # the dream stage (``policies.social_dream``)
        from .social_dream import run_dream_stage

        pol = run_dream_stage(pol, cfg, out, init)
    pol.save_pretrained(out)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in fe.state_dict().items()}, str(out / "motion_encoder.safetensors"))
    seeds = list(range(int(cfg.eval_seed_base), int(cfg.eval_seed_base) + int(cfg.eval_scenes)))
    metrics, _, _ = evaluate(pol, fe, seeds)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))
    return 0


def load_motion_encoder(path: Path) -> MotionEncoder:
    from safetensors.torch import load_file

    fe = MotionEncoder()
    fe.load_state_dict(load_file(str(path / "motion_encoder.safetensors")))
    return fe.eval()
