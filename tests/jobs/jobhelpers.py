"""Helpers shared by the job-stage tests (tiny models, JSONL files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _tokenizer(tmp: Path) -> object:
    import json as _json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [
        _json.__doc__ or "",
        torch.__doc__ or "",
        pytest.__doc__ or "",
        "the quick brown fox jumps over the lazy dog " * 20,
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<s>", "<|end|>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(kind: str, out: Path, *, hidden: int = 128, layers: int = 2) -> Path:
    """Save a seeded random decoder of the given architecture with the shared tokenizer."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(0)
    tok = _tokenizer(out)
    common = {
        "vocab_size": len(tok),  # type: ignore[arg-type]
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "bos_token_id": tok.bos_token_id,  # type: ignore[attr-defined]
        "eos_token_id": tok.eos_token_id,  # type: ignore[attr-defined]
        "pad_token_id": tok.pad_token_id,  # type: ignore[attr-defined]
    }
    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }
    cfg_cls, model_cls = classes[kind]
    model = model_cls(cfg_cls(**common))
    # Heavier-tailed weights than the default init, so formats differ measurably.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(1 + 3 * torch.rand_like(p) ** 4)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)  # type: ignore[attr-defined]
    return out


def write_jsonl(path: Path, records: list[object]) -> Path:
    with path.open("w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path
