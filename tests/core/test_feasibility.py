"""The smallest feasible plan, checked before any GPU runs: from shapes, profile and pins."""

from __future__ import annotations

from pathlib import Path

import yaml

from samp_core.api import parse
from samp_core.feasibility import budget_problem, linear_shapes

ROOT = Path(__file__).resolve().parents[2]


def _tensors(layers: int = 2, hidden: int = 256, vocab: int = 2048) -> dict[str, list[int]]:
    """Llama-shaped checkpoint tensors (name -> [out, in])."""
    t: dict[str, list[int]] = {"model.embed_tokens.weight": [vocab, hidden]}
    for i in range(layers):
        p = f"model.layers.{i}."
        t |= {
            p + "input_layernorm.weight": [hidden],
            p + "self_attn.q_proj.weight": [hidden, hidden],
            p + "self_attn.k_proj.weight": [hidden // 2, hidden],
            p + "self_attn.v_proj.weight": [hidden // 2, hidden],
            p + "self_attn.o_proj.weight": [hidden, hidden],
            p + "mlp.gate_proj.weight": [2 * hidden, hidden],
            p + "mlp.up_proj.weight": [2 * hidden, hidden],
            p + "mlp.down_proj.weight": [hidden, 2 * hidden],
        }
    t["lm_head.weight"] = [vocab, hidden]
    return t


def _spec(budget: dict[str, float], **quantization: object) -> object:
    doc = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    doc["spec"]["quantization"]["budget"] = budget
    doc["spec"]["quantization"].update(quantization)
    return parse(doc).spec


def test_linear_shapes_skip_embeddings_and_norms() -> None:
    shapes = linear_shapes(_tensors(layers=1))
    assert "model.embed_tokens" not in shapes and "model.layers.0.input_layernorm" not in shapes
    assert shapes["lm_head"] == (256, 2048) and shapes["model.layers.0.mlp.down_proj"] == (512, 256)


def test_reachable_budget_has_no_problem() -> None:
    assert budget_problem(_spec({"fractionOf16Bit": 0.8}), _tensors()) is None


def test_the_lm_head_pin_is_named_when_it_alone_puts_the_budget_out_of_reach() -> None:
    # The 2048x256 lm_head is under half of the linear weights of two small layers; on the
    # cpu profile every quantized format stores at least a byte per weight, so the plan's
    # floor is ~8.1 bits without the pin and 10.5 bits with the lm_head kept 16-bit.
    problem = budget_problem(_spec({"effectiveBits": 9.0}), _tensors())
    assert problem is not None
    assert "below the smallest feasible plan" in problem
    assert "keepLmHead16Bit alone puts it out of reach" in problem


def test_an_override_pin_is_named() -> None:
    spec = _spec({"effectiveBits": 9.0}, keepLmHead16Bit=False,
                 overrides=[{"match": "lm_head", "keepUnquantized": True}])
    problem = budget_problem(spec, _tensors())
    assert problem is not None and "overrides[0] ('lm_head')" in problem


def test_no_pin_to_blame_says_so() -> None:
    problem = budget_problem(_spec({"effectiveBits": 2.0}), _tensors())
    assert problem is not None and "raise the budget or allow smaller formats" in problem


def test_cpu_budgets_count_the_stored_int8_containers_of_w4a8() -> None:
    """W4A8 is written in int8 containers: on cpu a budget below a byte per weight is out
    of reach even with no pin, though the kernels compute with 4-bit values."""
    spec = _spec({"effectiveBits": 7.0}, keepLmHead16Bit=False)
    problem = budget_problem(spec, _tensors())
    assert problem is not None and "raise the budget or allow smaller formats" in problem
    assert budget_problem(_spec({"effectiveBits": 8.5}, keepLmHead16Bit=False), _tensors()) is None
