"""bitsandbytes NF4 export: a family of its own (vLLM loads it as one method for the whole
model plus a skip list), written through transformers' quantizer."""

from __future__ import annotations

from pathlib import Path

import torch

from samp_core.formats import ExportFormat, Format
from samp_core.results import ConfigGroupSummary, ExportResult, PlanResult
from samp_jobs.export_files import export_result, exported_files, save_checkpoint
from samp_jobs.export_schemes import ExportError
from samp_jobs.export_timing import PhaseClock, QuietGC

__all__ = ["bnb_skip_modules", "export_bitsandbytes_nf4"]


def bnb_skip_modules(plan: PlanResult) -> list[str]:
    """16-bit Linears for llm_int8_skip_modules: leaf names where every layer agrees.

    bitsandbytes matches names by suffix, so a leaf name (``q_proj``) skips that
    projection in every layer; where layers disagree the full module name is used.
    """
    leaf_formats: dict[str, set[Format]] = {}
    for a in plan.assignments:
        for m in a.modules:
            leaf_formats.setdefault(m.rsplit(".", 1)[-1], set()).add(a.format)
    skip: list[str] = []
    for a in plan.assignments:
        if not a.format.is_unquantized:
            continue
        for m in a.modules:
            leaf = m.rsplit(".", 1)[-1]
            if all(f.is_unquantized for f in leaf_formats[leaf]):
                if leaf not in skip:
                    skip.append(leaf)
            else:
                skip.append(m)
    return skip


def export_bitsandbytes_nf4(
    model_dir: Path, plan: PlanResult, out: Path, *, trust_remote_code: bool = False
) -> ExportResult:
    """NF4 for the planned groups through transformers' bitsandbytes quantizer.

    Quantization happens inside ``from_pretrained``, so it is timed as ``load``.
    """
    others = {a.format for a in plan.assignments} - {Format.NF4, Format.BF16, Format.FP16}
    if others:
        raise ExportError(f"bitsandbytes export carries only NF4 and 16-bit, plan has {others}")
    skip = bnb_skip_modules(plan)
    clock = PhaseClock()
    quiet = QuietGC()
    with quiet.held(), clock.phase("import"):
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    with quiet.held(), clock.phase("load"):
        qc = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=skip,
        )
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            quantization_config=qc,
            dtype=torch.bfloat16,
            trust_remote_code=trust_remote_code,
        )
    with clock.phase("save"):
        save_checkpoint(model, model_dir, plan, out, trust_remote_code)
    with clock.phase("hash"):
        files = exported_files(out)
    return export_result(
        clock,
        artifact_uri=str(out),
        export_format=ExportFormat.BITSANDBYTES_NF4,
        config_groups=[
            ConfigGroupSummary(
                name="nf4",
                format=Format.NF4,
                scheme="bnb-nf4",
                num_targets=len(plan.modules_by_format().get(Format.NF4, [])),
            )
        ],
        ignore=skip,
        files=files,
    )
