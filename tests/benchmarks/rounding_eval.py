"""Held-out metrics shared by bench_rounding.py and its peer runners (torch only).

The peers run in their own environment (llm-compressor pins another compressed-tensors
than vLLM), so this module imports nothing from the project: every method is scored by
the same teacher-forced code on the same token rows.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def base_logprobs(model: Any, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Next-token log-probabilities of the 16-bit model, one [tokens-1, vocab] per row."""
    with torch.no_grad():
        return [
            torch.log_softmax(model(input_ids=r[None]).logits[0, :-1].float(), -1) for r in rows
        ]


def compare(model: Any, rows: list[torch.Tensor], base: list[torch.Tensor]) -> dict[str, float]:
    """Perplexity, mean KL(base || model) per token and top-1 agreement with the base."""
    nll = kl = agree = n = 0.0
    with torch.no_grad():
        for r, lb in zip(rows, base, strict=True):
            lq = torch.log_softmax(model(input_ids=r[None]).logits[0, :-1].float(), -1)
            tgt = r[1:]
            nll -= float(lq.gather(-1, tgt[:, None]).sum())
            kl += float((lb.exp() * (lb - lq)).sum())
            agree += float((lb.argmax(-1) == lq.argmax(-1)).sum())
            n += tgt.numel()
    return {"perplexity": math.exp(nll / n), "mean_kl": kl / n, "top1_agreement": agree / n}
