"""Layer groups: the unit the SAMP planner assigns one format to.

vLLM fuses some Linear layers at load time (q/k/v into ``qkv_proj``, gate/up into
``gate_up_proj``) and refuses a checkpoint whose shards of one fused layer carry
different schemes. So the planner never decides per Linear: it decides per
*group*, a set of Linear modules that must share one scheme. This module is the
data model for those groups plus a pure helper that builds them from module names
and shapes, so the torch job (which walks the real model) and the planner agree on
names without sharing any torch code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "FUSED_SIBLINGS",
    "GroupKind",
    "LayerGroup",
    "build_groups",
    "kind_of_module",
]


class GroupKind(StrEnum):
    """What role a group plays; the planner and reports aggregate by it."""

    ATTENTION_QKV = "attention_qkv"
    ATTENTION_O = "attention_o"
    MLP_GATE_UP = "mlp_gate_up"
    MLP_DOWN = "mlp_down"
    LM_HEAD = "lm_head"
    EMBEDDING = "embedding"
    OTHER = "other"

    @property
    def is_head_or_embedding(self) -> bool:
        """True for the groups SAMP keeps 16-bit by default (output head, token embedding)."""
        return self in (GroupKind.LM_HEAD, GroupKind.EMBEDDING)


class LayerGroup(BaseModel):
    """One or more Linear modules that must share a single quantization scheme.

    ``in_features`` is the common input size (fused modules read the same input);
    ``out_features`` is summed over the fused modules, which is what a fused
    ``qkv_proj`` looks like to vLLM. ``num_params`` counts weights only (no bias),
    because biases stay 16-bit under every scheme and so do not change the plan.
    """

    model_config = ConfigDict(
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        extra="forbid",
    )

    name: str = Field(min_length=1)
    kind: GroupKind
    layer_index: int | None = None
    modules: list[str] = Field(min_length=1)
    in_features: int = Field(gt=0)
    out_features: int = Field(gt=0)
    num_params: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _fill_params(self) -> LayerGroup:
        # num_params defaults to in*out; a caller that knows better (tied or
        # non-dense weights) may pass its own count, which must be positive.
        if self.num_params == 0:
            object.__setattr__(self, "num_params", self.in_features * self.out_features)
        if len(set(self.modules)) != len(self.modules):
            raise ValueError(f"group {self.name}: duplicate module names {self.modules}")
        return self

    @property
    def num_modules(self) -> int:
        return len(self.modules)


# Sibling Linear names that vLLM fuses into one layer -> (fused group suffix, kind).
# Order inside a fused group follows vLLM's shard order (q, k, v / gate, up).
FUSED_SIBLINGS: dict[tuple[str, ...], tuple[str, GroupKind]] = {
    ("q_proj", "k_proj", "v_proj"): ("qkv", GroupKind.ATTENTION_QKV),
    ("gate_proj", "up_proj"): ("gate_up", GroupKind.MLP_GATE_UP),
    ("w1", "w3"): ("gate_up", GroupKind.MLP_GATE_UP),  # Mixtral-style expert naming
}

_SINGLE_KIND: dict[str, GroupKind] = {
    "qkv_proj": GroupKind.ATTENTION_QKV,  # already fused in the checkpoint (Phi-3)
    "query_key_value": GroupKind.ATTENTION_QKV,  # GPT-NeoX / Falcon
    "c_attn": GroupKind.ATTENTION_QKV,  # GPT-2
    "W_pack": GroupKind.ATTENTION_QKV,  # Baichuan
    "o_proj": GroupKind.ATTENTION_O,
    "out_proj": GroupKind.ATTENTION_O,
    "gate_up_proj": GroupKind.MLP_GATE_UP,
    "down_proj": GroupKind.MLP_DOWN,
    "w2": GroupKind.MLP_DOWN,
    "lm_head": GroupKind.LM_HEAD,
    "embed_tokens": GroupKind.EMBEDDING,
    "wte": GroupKind.EMBEDDING,
    "word_embeddings": GroupKind.EMBEDDING,
}

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)(?:\.|$)")


def _layer_index(name: str) -> int | None:
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def kind_of_module(name: str) -> GroupKind:
    """Classify a single module by its last name component (HF naming conventions)."""
    leaf = name.rsplit(".", 1)[-1]
    for siblings, (_, kind) in FUSED_SIBLINGS.items():
        if leaf in siblings:
            return kind
    return _SINGLE_KIND.get(leaf, GroupKind.OTHER)


def build_groups(
    shapes: Mapping[str, tuple[int, int]],
    *,
    skip: Iterable[str] = (),
) -> list[LayerGroup]:
    """Group Linear modules the way vLLM fuses them.

    ``shapes`` maps full module names to ``(in_features, out_features)`` in model
    order. Siblings listed in :data:`FUSED_SIBLINGS` under one parent become one
    group named ``<parent>.<suffix>`` (e.g. ``model.layers.3.self_attn.qkv``);
    every other module is its own group named after the module. A fused set that is
    only partly present is a model we do not understand, so it raises rather than
    silently producing a checkpoint vLLM would reject. ``skip`` drops modules by
    exact name (e.g. vision towers handled elsewhere).
    """
    skipped = set(skip)
    names = [n for n in shapes if n not in skipped]
    claimed = _claim_fused(names)
    groups: list[LayerGroup] = []
    emitted: set[str] = set()
    for n in names:
        if n in claimed:
            gname, kind, members = claimed[n]
            if gname not in emitted:
                groups.append(_fused_group(gname, kind, members, shapes))
                emitted.add(gname)
        else:
            fin, fout = shapes[n]
            groups.append(
                LayerGroup(
                    name=n,
                    kind=kind_of_module(n),
                    layer_index=_layer_index(n),
                    modules=[n],
                    in_features=fin,
                    out_features=fout,
                )
            )
    return groups


def _claim_fused(names: Iterable[str]) -> dict[str, tuple[str, GroupKind, list[str]]]:
    """Module name -> (group name, kind, members) for every module of a fused set."""
    by_parent: dict[str, dict[str, str]] = {}
    for n in names:
        parent, _, leaf = n.rpartition(".")
        by_parent.setdefault(parent, {})[leaf] = n

    claimed: dict[str, tuple[str, GroupKind, list[str]]] = {}
    for parent, leaves in by_parent.items():
        for siblings, (suffix, kind) in FUSED_SIBLINGS.items():
            present = [s for s in siblings if s in leaves]
            if not present:
                continue
            if len(present) != len(siblings):
                raise ValueError(
                    f"{parent}: fused set {siblings} only partly present ({present}); "
                    "vLLM needs all shards of a fused layer to share one scheme"
                )
            members = [leaves[s] for s in siblings]
            gname = f"{parent}.{suffix}" if parent else suffix
            for mname in members:
                claimed[mname] = (gname, kind, members)
    return claimed


def _fused_group(
    gname: str, kind: GroupKind, members: list[str], shapes: Mapping[str, tuple[int, int]]
) -> LayerGroup:
    ins = {shapes[m][0] for m in members}
    if len(ins) != 1:
        raise ValueError(f"{gname}: fused modules have different in_features {ins}")
    return LayerGroup(
        name=gname,
        kind=kind,
        layer_index=_layer_index(gname),
        modules=members,
        in_features=ins.pop(),
        out_features=sum(shapes[m][1] for m in members),
        num_params=sum(shapes[m][0] * shapes[m][1] for m in members),
    )
