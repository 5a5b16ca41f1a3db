"""The sampler's fast path: a state-only step of the one-step mean sampler runs no denoiser, and
dreams the state recorded for the shipped weights (``mean.*`` of tests/data/wm_default_reference)."""

from __future__ import annotations

from pathlib import Path

import torch

torch.set_num_threads(1)


def test_a_state_step_of_the_shipped_sampler_runs_no_denoiser():
    """The one-step mean sampler's bodies are the state prior's and a props network model's props
    its own: a state-only step need not run the denoiser, and does not."""
    from safetensors.torch import load_file

    from dreamgym.worldmodel.model import load_default

    ref = load_file(str(Path(__file__).parent / "data" / "wm_default_reference.safetensors"))
    inp = {k.split(".", 1)[1]: v for k, v in ref.items() if k.startswith("input.")}
    m = load_default()
    calls = []
    hook = m.transformer.register_forward_hook(lambda *args: calls.append(1))
    try:
        state = {k: inp[k] for k in ("motion", "partner_motion", "props", "instruction")}
        out = m.imagine(
            state,
            inp["actions"][:, :2],
            num_steps=1,
            init_noise=0.0,
            partner_actions=inp["partner_actions"][:, :2],
            modalities=["motion", "partner_motion", "props"],
        )
        assert not calls
        for k in ("motion", "partner_motion", "props"):
            assert torch.allclose(out[k], ref[f"mean.{k}"], rtol=0, atol=1e-5), k
        m.imagine(state, inp["actions"][:, :2], num_steps=3, init_noise=1.0, modalities=["motion"])
        assert calls  # a sampled step still denoises
    finally:
        hook.remove()


def test_a_noiseless_step_draws_nothing_from_the_generator():
    """``init_noise=0`` (the shipped frame pass's start) starts from zeros without drawing: the
    generator's state is the same after the step, and the step is the same with or without it."""
    from safetensors.torch import load_file

    from dreamgym.worldmodel.model import load_default

    ref = load_file(str(Path(__file__).parent / "data" / "wm_default_reference.safetensors"))
    inp = {k.split(".", 1)[1]: v for k, v in ref.items() if k.startswith("input.")}
    m = load_default()
    state = {k: inp[k] for k in ("motion", "partner_motion", "props", "instruction")}
    gen = torch.Generator().manual_seed(3)
    before = gen.get_state()
    kw = dict(num_steps=2, init_noise=0.0, partner_actions=inp["partner_actions"][:, :2], modalities=["motion", "partner_motion", "props"])
    out = m.imagine(state, inp["actions"][:, :2], generator=gen, **kw)
    assert torch.equal(gen.get_state(), before)
    again = m.imagine(state, inp["actions"][:, :2], **kw)
    for k in ("motion", "partner_motion", "props"):
        assert torch.equal(out[k], again[k]), k
