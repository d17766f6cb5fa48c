"""The setup the GPTQ/Hessian benchmarks share (bench_export_hessians, bench_free_head,
bench_score_rounding): the common command-line arguments, the model loaded in float32
with its decoder parts, groups, calibration ids, held-out rows and their 16-bit
log-probs, scoring with Hessian collection, and planning SAMP at a byte fraction.

Importing it puts ``operator`` and ``jobs`` on ``sys.path`` (benchmarks run as scripts,
not installed), so a benchmark imports it before ``samp_core`` and ``samp_jobs``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for _sub in ("operator", "jobs"):
    sys.path.insert(0, str(ROOT / _sub))

import torch  # noqa: E402
from rounding_eval import base_logprobs  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from samp_core.formats import Format, SensitivityMethod  # noqa: E402
from samp_core.groups import LayerGroup  # noqa: E402
from samp_core.hardware import get_profile  # noqa: E402
from samp_core.planner import Budget, PlanRequest, plan  # noqa: E402
from samp_core.results import PlanResult, Rounding  # noqa: E402
from samp_jobs.calibration import CalibrationOptions, build_calibration, encode  # noqa: E402
from samp_jobs.evaluate import read_eval_set  # noqa: E402
from samp_jobs.hessians import HessianCollector  # noqa: E402
from samp_jobs.modeling import DecoderParts, decoder_parts, discover_groups, load_model  # noqa: E402
from samp_jobs.sensitivity import ScoringOptions, candidate_formats, score  # noqa: E402

FORMATS = [Format.INT4_W4A16, Format.FP8_W8A8, Format.INT8_W8A8, Format.BF16]
# The fixed recipe: 4-bit MLP, FP8 attention (lm_head 16-bit); SAMP is compared at its bytes.
RECIPE_PINS = [(r"\.mlp\.", Format.INT4_W4A16), (r"\.self_attn\.", Format.FP8_W8A8)]
Scores = dict[str, dict[Format, float]]


def add_setup_arguments(ap: argparse.ArgumentParser) -> None:
    """The model, data and quantization arguments every one of these benchmarks takes."""
    ap.add_argument("--model", type=Path, default=ROOT / "examples/tiny/model")
    ap.add_argument("--prompts", type=Path, default=ROOT / "examples/tiny/prompts.jsonl")
    ap.add_argument("--eval-set", type=Path, default=ROOT / "examples/tiny/eval.jsonl")
    ap.add_argument("--calib-seqs", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")


@dataclass
class TinySetup:
    """A float32 model on ``device`` with what scoring, planning and comparing need."""

    model: Any
    quant_dtype: torch.dtype  # the checkpoint's dtype, which scoring quantizes into
    parts: DecoderParts
    groups: list[LayerGroup]
    ids: torch.Tensor  # calibration token rows
    held: list[torch.Tensor]  # held-out token rows (more than one token each)
    base: list[torch.Tensor]  # the 16-bit model's log-probs on ``held``
    group_size: int
    device: torch.device

    @classmethod
    def load(
        cls, args: argparse.Namespace, device: str | None = None, max_texts: int = 120
    ) -> TinySetup:
        dev = torch.device(device or getattr(args, "device", "cpu"))
        model, _ = load_model(args.model)
        quant_dtype = next(model.parameters()).dtype
        model.float()
        parts = decoder_parts(model)
        groups = discover_groups(parts, dev)  # leaves the model on the CPU
        model.to(dev)
        tok = AutoTokenizer.from_pretrained(args.model)
        cal = CalibrationOptions(
            source=str(args.prompts), samples=100_000, max_sequence_length=args.seq_len, seed=0
        )
        ids = build_calibration(cal, tok).input_ids[: args.calib_seqs]
        _tasks, texts = read_eval_set(args.eval_set, tok)
        held = [torch.tensor(encode(tok, t)[: args.seq_len]) for t in texts[:max_texts]]
        held = [r.to(dev) for r in held if r.numel() > 1]
        return cls(
            model=model,
            quant_dtype=quant_dtype,
            parts=parts,
            groups=groups,
            ids=ids,
            held=held,
            base=base_logprobs(model, held),
            group_size=args.group_size,
            device=dev,
        )

    def scoring_options(self) -> ScoringOptions:
        return ScoringOptions(
            formats=FORMATS,
            group_size=self.group_size,
            quant_dtype=self.quant_dtype,
            progress=False,
            device=self.device,
        )

    def scores_with_hessians(
        self,
        opts: ScoringOptions,
        methods: list[SensitivityMethod],
        gptq_formats: list[Format] | None = None,
    ) -> tuple[dict[SensitivityMethod, Scores], HessianCollector, float]:
        """One scoring pass that also collects the Hessians of the groups that can take a
        format in ``gptq_formats`` (default: the default Rounding's GPTQ formats).
        Returns the scores per method, the collector and the pass's seconds; leaves
        ``opts.hessians`` set to the collector."""
        cands = {g.name: candidate_formats(g, FORMATS, self.group_size) for g in self.groups}
        fmts = Rounding().formats if gptq_formats is None else gptq_formats
        modules = dict(self.model.named_modules())
        col = HessianCollector(self.groups, cands, fmts, modules, self.device)
        opts.hessians = col
        t = time.perf_counter()
        scores = score(self.parts, self.groups, self.ids, opts, methods).scores
        return scores, col, time.perf_counter() - t

    def plan_at(
        self,
        scores: Scores,
        fraction: float,
        pins: list[tuple[str, Format]] | None = None,
        keep_lm_head_16bit: bool = True,
        *,
        profile: str = "sm90",
        formats: list[Format] | None = None,
        allow_non_native: bool = True,
    ) -> PlanResult:
        """SAMP on ``profile`` over ``formats`` (default FORMATS) at ``fraction`` of the
        16-bit bytes, GPTQ rounding."""
        return plan(
            PlanRequest(
                groups=self.groups,
                scores=scores,
                profile=get_profile(profile),
                budget=Budget(fraction_of_16bit=fraction),
                allowed_formats=FORMATS if formats is None else formats,
                overrides=pins or [],
                allow_non_native=allow_non_native,
                group_size=self.group_size,
                curve_points=0,
                keep_lm_head_16bit=keep_lm_head_16bit,
                rounding=Rounding(),
            )
        )

    def recipe_fraction(self, scores: Scores) -> float:
        """The fixed recipe's bytes as a fraction of the 16-bit model's."""
        return self.plan_at(scores, 1.0, RECIPE_PINS).fraction_of_16bit
