"""``spec.model`` and ``spec.calibration``: the base model and the production prompts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from samp_core.schema_base import ApiModel, Rule
from samp_core.spec.common import (
    CALIBRATION_URI_PATTERN,
    MODEL_URI_PATTERN,
    SecretRef,
    no_path_escape,
)


class ModelSpec(ApiModel):
    """The unquantized base model."""

    rules = (no_path_escape("source", "source", "spec.model.source"),)

    source: str = Field(
        description="Where the model is: hf://org/name@revision, s3://bucket/prefix, "
        "gs://bucket/prefix or pvc://claim/path. Pin a revision for reproducible artifacts.",
        pattern=MODEL_URI_PATTERN,
        max_length=1024,
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the model repository's own Python code to run when loading. "
        "Off by default: only enable it for sources you trust.",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Dtype the unquantized model is loaded and compared in."
    )
    secret_ref: SecretRef | None = Field(
        default=None, description="Credentials for the source (hub token or object-store keys)."
    )


class CalibrationSpec(ApiModel):
    """The production prompts used for calibration, sensitivity scoring and evaluation."""

    rules = (
        Rule(
            cel="!self.source.startsWith('synthetic://') || self.allowSynthetic",
            message="calibration.source is synthetic data, which misses the production "
            "distribution; point it at real prompts or set calibration.allowSynthetic: true",
            holds=lambda s: not s.source.startswith("synthetic://") or s.allow_synthetic,
            field_path=".source",
        ),
        no_path_escape("source", "source", "spec.calibration.source"),
    )

    source: str = Field(
        description="JSONL of production prompts: pvc://claim/path.jsonl, s3://bucket/key, "
        "gs://bucket/key or configmap://name/key. One JSON object per line.",
        pattern=CALIBRATION_URI_PATTERN,
        max_length=1024,
    )
    format: Literal["text", "chat"] = Field(
        default="text",
        description="'text': each line has a plain-text field; 'chat': each line has a list of "
        "{role, content} messages rendered with the tokenizer's chat template.",
    )
    text_field: str = Field(
        default="text", min_length=1, max_length=128, description="Field holding the text."
    )
    messages_field: str = Field(
        default="messages",
        min_length=1,
        max_length=128,
        description="Field holding the chat messages (format: chat).",
    )
    samples: int = Field(
        default=512, ge=8, le=1_000_000, description="Prompts sampled for calibration."
    )
    max_sequence_length: int = Field(
        default=2048, ge=16, le=1_048_576, description="Tokens per packed calibration sequence."
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the sampling.")
    held_out_fraction: float = Field(
        default=0.1,
        gt=0.0,
        le=0.5,
        description="Fraction of prompts kept out of calibration for the accuracy evaluation.",
    )
    allow_synthetic: bool = Field(
        default=False,
        description="Accept a synthetic:// source. Off by default because quantization "
        "calibrated on random text hurts real traffic.",
    )
