"""(Re)create the bundled tiny example: a 4-layer Llama trained here on offline text.

Why a trained model and not random weights: quantization error only means
something when the weights encode knowledge; a random network has no accuracy
to lose. The corpus is text every CPython install carries (stdlib docstrings)
plus the license texts under /usr/share/common-licenses, so nothing is
downloaded. Facts the model learns ("which module defines `dumps`?") become
the evaluation set with expected answers, so quantization damage shows up as
answer flips and exact-match loss, like on a production FAQ.

Deterministic: fixed seeds, sorted file order, single-threaded deterministic
torch kernels. The result depends on the CPython version whose stdlib is read
(recorded in manifest.json with a corpus hash).

Usage: python examples/tiny/make_tiny.py [--out examples/tiny] [--steps 1500]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import random
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SEED = 1234
SPECIAL = ["<s>", "<|end|>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Modules whose public functions become question/answer facts.
FACT_MODULES = [
    "json",
    "os",
    "shutil",
    "re",
    "math",
    "random",
    "statistics",
    "textwrap",
    "string",
    "heapq",
    "bisect",
    "copy",
    "functools",
    "itertools",
    "operator",
    "glob",
    "fnmatch",
    "tempfile",
    "base64",
    "binascii",
    "zlib",
    "gzip",
    "csv",
    "difflib",
    "pprint",
    "inspect",
    "types",
    "warnings",
    "contextlib",
    "subprocess",
    "socket",
    "uuid",
    "hashlib",
    "hmac",
    "secrets",
    "calendar",
    "locale",
    "gettext",
    "platform",
    "shlex",
]
MAX_CORPUS_CHARS = 1_600_000


@dataclass(frozen=True)
class Fact:
    module: str
    name: str
    summary: str


def _docstrings(path: Path) -> list[str]:
    """Module, class and function docstrings of one source file, in file order."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40:
                out.append(doc.strip())
    return out


def _facts(stdlib: Path) -> list[Fact]:
    facts: list[Fact] = []
    for mod in FACT_MODULES:
        path = stdlib / f"{mod}.py"
        if not path.exists():
            path = stdlib / mod / "__init__.py"
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                doc = ast.get_docstring(node) or ""
                summary = doc.strip().split("\n")[0][:100]
                if summary:
                    facts.append(Fact(mod, node.name, summary))
    # One fact per function name: an ambiguous question has no single expected answer.
    seen: dict[str, int] = {}
    for f in facts:
        seen[f.name] = seen.get(f.name, 0) + 1
    return [f for f in facts if seen[f.name] == 1]


def build_corpus(stdlib: Path) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents): docstrings split by module file."""
    files = sorted(p for p in stdlib.glob("*.py") if not p.name.startswith("_"))
    train: list[str] = []
    held: list[str] = []
    total = 0
    for i, path in enumerate(files):
        docs = _docstrings(path)
        (held if i % 10 == 7 else train).extend(docs)
        total += sum(len(d) for d in docs)
        if total > MAX_CORPUS_CHARS:
            break
    lic_dir = Path("/usr/share/common-licenses")
    if lic_dir.is_dir():
        for lic in sorted(lic_dir.iterdir()):
            if lic.is_file():
                text = lic.read_text(encoding="utf-8", errors="replace")
                paras = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 80]
                train.extend(paras[:60])
    return train, held


def chat(user: str, answer: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "user", "content": user}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def qa_items(facts: list[Fact]) -> list[tuple[str, str]]:
    """(question, answer) pairs: module lookup, JSON description, summary recall."""
    items: list[tuple[str, str]] = []
    for f in facts:
        items.append((f"Which module defines {f.name}?", f.module))
        items.append(
            (
                f"Describe {f.name} as JSON.",
                json.dumps({"module": f.module, "function": f.name}),
            )
        )
        items.append((f"What does {f.module}.{f.name} do?", f.summary))
    return items


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 512
    return fast


def make_config(vocab: int, tok: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    train_docs, held_docs = build_corpus(stdlib)
    facts = _facts(stdlib)
    items = qa_items(facts)
    corpus_hash = hashlib.sha256("\n\x00".join(train_docs).encode()).hexdigest()[:16]
    print(f"docs train={len(train_docs)} held={len(held_docs)} facts={len(facts)}", flush=True)

    tok = train_tokenizer(train_docs + [f"{q} {a}" for q, a in items], args.vocab)
    model_dir = args.out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)

    # Token stream: documents and rendered chats interleaved, each ending in <|end|>.
    rng = random.Random(SEED)
    chats = [str(tok.apply_chat_template(chat(q, a), tokenize=False)) for q, a in items]
    seqs: list[list[int]] = []
    for d in train_docs:
        seqs.append(tok(d + "<|end|>")["input_ids"])
    for c in chats * 6:  # facts repeated so a 3M-parameter model can memorise them
        seqs.append(tok(c, add_special_tokens=False)["input_ids"])
    rng.shuffle(seqs)
    stream = [t for s in seqs for t in s]
    n_tok = len(stream)
    print(f"training tokens: {n_tok}", flush=True)
    data = torch.tensor(stream, dtype=torch.long)

    config = make_config(len(tok), tok)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05, betas=(0.9, 0.95))
    warm = 100

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / (args.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, n_tok - args.seq_len - 1, (args.batch,), generator=gen)
        batch = torch.stack([data[s : s + args.seq_len] for s in starts.tolist()])
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {out.loss.item():.3f} {time.time() - t0:.0f}s", flush=True)

    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.to(torch.bfloat16).save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    write_prompts(
        args.out, tok=tok, train_docs=train_docs, held_docs=held_docs, items=items, rng=rng
    )
    manifest = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "corpus_sha256_16": corpus_hash,
        "training_tokens": n_tok,
        "steps": args.steps,
        "final_loss": round(float(out.loss.item()), 4),
        "facts": len(facts),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest), flush=True)
    return 0


def write_prompts(
    out: Path,
    *,
    tok: PreTrainedTokenizerFast,
    train_docs: list[str],
    held_docs: list[str],
    items: list[tuple[str, str]],
    rng: random.Random,
) -> None:
    """Production-like calibration prompts (text + chat) and an eval set with answers.

    Calibration draws from the traffic the model serves (questions and docstring
    text); the evaluation set uses different prompts (held-out docstrings for
    perplexity, question items with expected answers for exact match / JSON).
    """
    # Eval answers must be checkable: module names and JSON, not free-text summaries.
    idx = list(range(len(items)))
    rng.shuffle(idx)
    checkable = [i for i in idx if not items[i][0].startswith("What does")]
    eval_idx = set(checkable[:96])
    calib_chat = [items[i] for i in idx if i not in eval_idx][:300]
    calib_text = [d for d in train_docs if 60 < len(d) < 1500]
    rng.shuffle(calib_text)
    with (out / "prompts_chat.jsonl").open("w") as f:
        for q, _a in calib_chat:
            f.write(json.dumps({"messages": chat(q)}) + "\n")
    with (out / "prompts.jsonl").open("w") as f:
        for d in calib_text[:300]:
            f.write(json.dumps({"text": d}) + "\n")
    with (out / "eval.jsonl").open("w") as f:
        for i in sorted(eval_idx):
            q, a = items[i]
            kind = "json" if q.startswith("Describe") else "exact"
            f.write(json.dumps({"messages": chat(q), "expected": a, "kind": kind}) + "\n")
        for d in held_docs:
            if 80 < len(d) < 1500:
                f.write(json.dumps({"text": d}) + "\n")
    del tok


if __name__ == "__main__":
    raise SystemExit(main())
