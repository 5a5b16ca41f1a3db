"""Re-record ``wm_default_reference.safetensors`` after the shipped default world model changes:
the same inputs (two held-out windows), the new model's outputs. Run from the repository root:
``python tests/data/make_wm_default_reference.py``; ``test_the_shipped_model_dreams_its_reference``
then checks that later code dreams them again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dreamgym.worldmodel.model import load_default

PATH = Path(__file__).parent / "wm_default_reference.safetensors"
CONTEXT_KEYS = ("ego_rgb", "ego_depth", "motion", "partner_motion", "props", "occupancy", "instruction")
STATE_KEYS = ("motion", "partner_motion", "props")


def reference_outputs(m, inp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The recorded calls: one step with the shipped sampler, one 3-step full-noise state step, the
    one-step conditional-mean state step and a 3-step state rollout with the shipped sampler (the
    sampled ones each with its own fixed generator)."""
    ctx = {k: inp[k] for k in CONTEXT_KEYS}
    a, pa = inp["actions"], inp["partner_actions"]
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    out = {f"imagine.{k}": v for k, v in m.imagine(ctx, a[:, :2], partner_actions=pa[:, :2], generator=gen(1)).items()}
    r = m.imagine(ctx, a[:, :2], num_steps=3, init_noise=1.0, partner_actions=pa[:, :2], modalities=list(STATE_KEYS), generator=gen(3))
    out |= {f"imagine3.{k}": v for k, v in r.items()}
    state = {k: ctx[k] for k in (*STATE_KEYS, "instruction")}
    r = m.imagine(state, a[:, :2], num_steps=1, init_noise=0.0, partner_actions=pa[:, :2], modalities=list(STATE_KEYS))
    out |= {f"mean.{k}": v for k, v in r.items()}
    r = m.rollout(state, a[:, 1:], past_actions=a[:, :1], partner_actions=pa, modalities=list(STATE_KEYS), generator=gen(2))
    return out | {f"rollout.{k}": v for k, v in r.items()}


def main() -> None:
    torch.set_num_threads(1)
    inp = {k: v for k, v in load_file(str(PATH)).items() if k.startswith("input.")}
    m = load_default()
    m.sampler = dataclasses.replace(m.sampler, precision="float32")  # the reference is float32 (see the test)
    got = reference_outputs(m, {k.split(".", 1)[1]: v for k, v in inp.items()})
    save_file({**inp, **{k: v.contiguous() for k, v in got.items()}}, str(PATH))
    print(f"wrote {PATH} ({len(got)} outputs)")


if __name__ == "__main__":
    main()
