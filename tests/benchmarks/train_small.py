"""Train the rounding benchmark's small model: a 27M-parameter Llama on stdlib source.

Bigger than the bundled tiny example (hidden 512, 8 layers, MLP 1536, untied head), so
4-bit rounding error matters the way it does in real models, and regenerated rather
than committed: deterministic for a given CPython stdlib, torch build and device. The
corpus is the source of the running Python's standard library (tests excluded), cut
at blank lines into ~1500-character documents and split by file: one file in ten
becomes held-out evaluation text, one in ten the "production" calibration prompts, the
rest training text. The tokenizer is the tiny example's (2048 BPE tokens).

Writes OUT/model, OUT/prompts.jsonl ({"text"}), OUT/eval.jsonl ({"text"}), OUT/manifest.json.

    python tests/benchmarks/train_small.py --out /tmp/small --device cuda   # ~1-2 min, H200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SEED = 1234


def chunks(path: Path, size: int = 1500) -> list[str]:
    """A source file cut at blank lines into documents of about ``size`` characters."""
    text = path.read_text(encoding="utf-8", errors="replace")
    out: list[str] = []
    cur = ""
    for para in text.split("\n\n"):
        if cur and len(cur) + len(para) > size:
            out.append(cur.strip())
            cur = ""
        cur += para + "\n\n"
    if cur.strip():
        out.append(cur.strip())
    return [c for c in out if len(c) > 80]


def corpus(stdlib: Path) -> tuple[list[str], list[str], list[str]]:
    """(train, calibration, held-out) documents: the standard library's source, by file."""
    files = sorted(
        p
        for p in stdlib.rglob("*.py")
        if not {"test", "tests", "site-packages", "idlelib", "lib2to3"} & set(p.parts)
    )
    train: list[str] = []
    calib: list[str] = []
    held: list[str] = []
    for i, path in enumerate(files):
        {7: held, 3: calib}.get(i % 10, train).extend(chunks(path))
    return train, calib, held


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokenizer", type=Path, default=ROOT / "examples/tiny/model")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    train, calib, held = corpus(stdlib)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    digest = hashlib.sha256("\x00".join(train + calib + held).encode()).hexdigest()[:16]
    stream: list[int] = []
    for d in train:
        stream.extend(tok(d + "<|end|>")["input_ids"])
    data = torch.tensor(stream, dtype=torch.long)
    print(f"docs train={len(train)} calib={len(calib)} held={len(held)} tokens={len(data)}")

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 128,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    dev = torch.device(args.device)
    model = LlamaForCausalLM(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, betas=(0.9, 0.95))
    warm = 200

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warm) / (args.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    t0 = time.time()
    loss = torch.tensor(0.0)
    for step in range(args.steps):
        starts = torch.randint(0, len(data) - args.seq_len - 1, (args.batch,), generator=gen)
        batch = torch.stack([data[s : s + args.seq_len] for s in starts.tolist()]).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
    model.eval()
    out = args.out
    (out / "model").mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    with (out / "prompts.jsonl").open("w") as f:
        for d in calib:
            f.write(json.dumps({"text": d}) + "\n")
    with (out / "eval.jsonl").open("w") as f:
        for d in held:
            f.write(json.dumps({"text": d}) + "\n")
    manifest = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": str(dev),
        "corpus_sha256_16": digest,
        "training_tokens": len(data),
        "steps": args.steps,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "final_loss": round(float(loss.item()), 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.time() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
