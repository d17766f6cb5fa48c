"""The plan's bytes are the bytes on disk: plan and export the tiny model on the cpu
profile and weigh the exported weight tensors (W4A8 in its int8 containers)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from samp_core.formats import weight_bytes
from samp_core.results import PlanResult, SensitivityResult
from samp_jobs.cli import main


def _tensors(checkpoint: Path) -> dict[str, tuple[str, int]]:
    """name -> (dtype, bytes) of every tensor, from the safetensors headers."""
    out: dict[str, tuple[str, int]] = {}
    for shard in sorted(checkpoint.glob("*.safetensors")):
        with shard.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        out |= {
            name: (meta["dtype"], meta["data_offsets"][1] - meta["data_offsets"][0])
            for name, meta in header.items() if name != "__metadata__"
        }
    return out


def test_cpu_plan_total_bytes_are_the_weight_bytes_on_disk(
    tiny_llama: Path, text_prompts: Path, tmp_path: Path
) -> None:
    work = tmp_path / "w"
    flags = [
        "--workdir", str(work), "--model", str(tiny_llama), "--prompts", str(text_prompts),
        "--max-seq-len", "32", "--samples", "16", "--profile", "cpu", "--method", "activation",
        "--formats", "int4-w4a8,int8-w8a8,bf16", "--group-size", "64", "--rounding", "rtn",
        "--override", r"\.mlp\.=int4-w4a8", "--fraction-of-16bit", "0.7", "--no-progress",
    ]
    for stage in ("calibrate", "sensitivity", "plan", "export"):
        assert main([stage, *flags]) == 0, stage
    plan = PlanResult.model_validate_json((work / "plan.json").read_text())
    assert {a.format.value for a in plan.assignments if ".mlp." in a.group} == {"int4-w4a8"}
    on_disk = _tensors(work / "artifact")
    modules = [m for a in plan.assignments for m in a.modules]
    planned = {
        name: meta for name, meta in on_disk.items()
        if any(name.startswith(m + ".") for m in modules)
    }
    # Every planned module's weight is on disk, the W4A8 MLPs in int8 containers.
    assert all(f"{m}.weight" in planned for m in modules)
    assert {planned[f"{m}.weight"][0] for m in modules if ".mlp." in m} == {"I8"}
    disk = sum(size for _, size in planned.values())
    # Tolerance 0: the byte model is exact integer arithmetic over the tensors
    # compressed-tensors writes (values, bf16 scales, no zero points for the symmetric
    # presets), so any difference means the format catalog no longer matches the exporter.
    assert plan.total_bytes == plan.checkpoint_bytes == disk
    # What the plan would have claimed counting the 4 bits W4A8 computes with.
    sens = SensitivityResult.model_validate_json((work / "sensitivity.json").read_text())
    groups = {g.name: g for g in sens.groups}
    packed = sum(
        weight_bytes(a.format, groups[a.group].in_features, groups[a.group].out_features, 64,
                     num_tensors=groups[a.group].num_modules)
        for a in plan.assignments
    )
    assert packed < 0.8 * disk
    # The activation estimator's scores are not a loss: the documents and the printed plan
    # say what they are measured in.
    assert sens.score_unit.startswith("squared output error per token")
    assert plan.score_unit == sens.score_unit
    table = (work / "artifact" / "samp_plan.md").read_text()
    assert "predicted loss increase" in table and "squared output error per token" in table
    print(f"plan {plan.total_bytes} bytes = {plan.effective_bits:.2f} bits per weight, "
          f"disk {disk} bytes; counting packed 4-bit W4A8 it would say {packed} bytes")
