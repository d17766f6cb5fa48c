"""Offline accuracy of the quantized model against the unquantized one.

Compared on prompts the calibration never saw: the held-out production prompts
(perplexity, mean next-token KL(base ‖ quant), top-1 agreement) and, when an
eval set with expected answers is given, greedy answers (task exact match,
JSON validity, answer flips). The quantized checkpoint is loaded the way a
user would load it with transformers (compressed-tensors decompresses weights
and still quantizes activations dynamically; bitsandbytes runs its NF4 kernels),
so the figures describe the artifact, not our fake-quant.

Both models are needed at once. On GPUs they are spread with accelerate's
device map over every visible GPU (each model gets under half of what is free),
spilling to host memory only if they do not fit: a 70B base plus its quantized
copy is ~280 GB in 16-bit, more than one GPU but fine for the 4-8 a job asks for.

Definitions: an *answer flip* is a task prompt whose correctness differs
between base and quantized (either direction); JSON validity counts answers
that parse as JSON, over prompts of kind ``json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from samp_core.results import EvaluationResult
from samp_jobs.calibration import CalibrationDataError, encode, jsonl_lines
from samp_jobs.modeling import ModelLoadError
from samp_jobs.runlog import progress as report


class EvalDataError(ValueError):
    """The eval set cannot be used; the message names file and line."""


MAX_EVAL_LINE_BYTES = 16 << 20


@dataclass(frozen=True)
class TaskItem:
    prompt: str  # rendered (chat template applied)
    expected: str
    kind: str  # exact | json


def eval_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """("file:line", record) of every record, each checked for the fields evaluate reads;
    cheap (no tokenizer), so the pipeline runs it before its first stage."""
    if not path.is_file():
        raise EvalDataError(f"{path}: eval set not found")
    records: list[tuple[str, dict[str, Any]]] = []
    try:
        for i, line in jsonl_lines(path, MAX_EVAL_LINE_BYTES):
            where = f"{path}:{i}"
            if line is None:
                raise EvalDataError(f"{where}: line longer than {MAX_EVAL_LINE_BYTES} bytes")
            if line.strip():
                records.append((where, _checked_record(line, where)))
    except CalibrationDataError as e:  # not UTF-8
        raise EvalDataError(str(e)) from None
    if not records:
        raise EvalDataError(
            f"{path}: eval set is empty; give records with 'text' or 'messages' "
            "(and 'expected'), or leave it out to evaluate on the held-out prompts only"
        )
    return records


def _checked_record(line: str, where: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise EvalDataError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(rec, dict):
        raise EvalDataError(f"{where}: expected a JSON object")
    msgs = rec.get("messages")
    if "messages" in rec and not (
        isinstance(msgs, list)
        and msgs
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)
    ):
        raise EvalDataError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    if "messages" not in rec and not isinstance(rec.get("text"), str):
        raise EvalDataError(f"{where}: needs 'messages' or 'text'")
    kind = str(rec.get("kind", "exact"))
    if "expected" in rec and kind not in ("exact", "json"):
        raise EvalDataError(f"{where}: kind must be exact or json, not {kind!r}")
    return rec


def read_eval_set(path: Path, tokenizer: Any) -> tuple[list[TaskItem], list[str]]:
    """(task items with expected answers, plain texts for perplexity) from a JSONL file."""
    tasks: list[TaskItem] = []
    texts: list[str] = []
    for _where, rec in eval_records(path):
        if "messages" in rec:
            prompt = str(
                tokenizer.apply_chat_template(
                    rec["messages"], tokenize=False, add_generation_prompt=True
                )
            )
        else:
            prompt = rec["text"]
        if "expected" in rec:
            tasks.append(TaskItem(prompt, str(rec["expected"]), str(rec.get("kind", "exact"))))
        else:
            texts.append(prompt)
    return tasks, texts


def _norm(s: str) -> str:
    return " ".join(s.strip().split()).lower()


def is_correct(answer: str, item: TaskItem) -> bool:
    if item.kind == "json":
        try:
            return bool(json.loads(answer) == json.loads(item.expected))
        except json.JSONDecodeError:
            return False
    return _norm(answer) == _norm(item.expected)


def is_json(answer: str) -> bool:
    try:
        json.loads(answer)
    except json.JSONDecodeError:
        return False
    return True


@dataclass
class TokenStats:
    nll_base: float = 0.0
    nll_quant: float = 0.0
    kl: float = 0.0
    agree: int = 0
    tokens: int = 0


def input_device(model: nn.Module) -> torch.device:
    """Where a (possibly dispatched over several devices) model wants its input ids."""
    hf: Any = model
    emb = hf.get_input_embeddings()
    dev = torch.device(emb.weight.device)
    if dev.type == "meta":  # offloaded to host by accelerate: runs on its hook's device
        hook = getattr(emb, "_hf_hook", None)
        dev = torch.device(getattr(hook, "execution_device", None) or "cpu")
    return dev


def gpu_memory_map(share: float, host_bytes: int | None = None) -> dict[int | str, int]:
    """accelerate ``max_memory``: ``share`` of what is free now on each GPU (+ host RAM)."""
    budget: dict[int | str, int] = {
        i: int(torch.cuda.mem_get_info(i)[0] * share) for i in range(torch.cuda.device_count())
    }
    if host_bytes is not None:
        budget["cpu"] = host_bytes
    return budget


def quantized_gpu_budget(
    free: dict[int | str, int], dense_bytes: int, stored_bytes: int
) -> dict[int | str, int]:
    """Per-GPU ``max_memory`` for the compressed-tensors model, GPUs only.

    accelerate places the model as stored (int4/fp8, ~1/3 of 16-bit) but it
    decompresses to 16-bit in place on first use, and it cannot decompress layers
    offloaded to host memory. So each GPU gets its free memory scaled by
    stored/dense, and the whole must fit the GPUs or the job stops here, saying so.
    """
    gpus = {k: v for k, v in free.items() if k != "cpu"}
    room = sum(gpus.values())
    if dense_bytes > room:
        raise ModelLoadError(
            f"evaluation keeps the quantized model on GPUs, where it decompresses to "
            f"{dense_bytes / 2**30:.1f} GiB, but only {room / 2**30:.1f} GiB are free on "
            f"{len(gpus)} GPU(s) next to the base model; raise spec.hardware.gpusPerJob"
        )
    scale = min(1.0, stored_bytes / max(dense_bytes, 1))
    return {k: int(v * scale) for k, v in gpus.items()}


@torch.no_grad()
def compare_texts(
    base: nn.Module,
    quant: nn.Module,
    tokenizer: Any,
    texts: list[str],
    *,
    max_len: int,
    progress: bool = True,
) -> TokenStats:
    """Teacher-forced comparison of next-token distributions on held-out texts."""
    st = TokenStats()
    db, dq = input_device(base), input_device(quant)
    for text in report(tqdm(texts, desc="eval texts", disable=not progress, leave=False),
                       "evaluate", "held-out texts", total=len(texts)):
        ids = torch.tensor([encode(tokenizer, text)[:max_len]])
        if ids.shape[1] < 2:
            continue
        # compared on the base model's output device (the two may sit on different GPUs)
        out_b = base(input_ids=ids.to(db)).logits[0, :-1].float()
        out_q = quant(input_ids=ids.to(dq)).logits[0, :-1].float().to(out_b.device)
        lb, lq = torch.log_softmax(out_b, -1), torch.log_softmax(out_q, -1)
        tgt = ids[0, 1:].to(out_b.device)
        st.nll_base -= float(lb.gather(-1, tgt[:, None]).sum())
        st.nll_quant -= float(lq.gather(-1, tgt[:, None]).sum())
        st.kl += float((lb.exp() * (lb - lq)).sum())
        st.agree += int((lb.argmax(-1) == lq.argmax(-1)).sum())
        st.tokens += int(tgt.numel())
    return st


@torch.no_grad()
def greedy(model: nn.Module, tokenizer: Any, prompt: str, max_new: int) -> str:
    ids = torch.tensor([encode(tokenizer, prompt)], device=input_device(model))
    hf: Any = model  # transformers generation API
    out = hf.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)).strip()


def load_quantized(
    path: Path,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
    max_memory: dict[int | str, int] | None = None,
) -> nn.Module:
    """Load the exported artifact with transformers (compressed-tensors or bitsandbytes).

    ``dtype`` (e.g. float32 on the CPU) applies to compressed-tensors checkpoints,
    which decompress into it; bitsandbytes models keep their own compute dtype.
    ``max_memory`` spreads the model over GPUs (see ``gpu_memory_map``).
    """
    from transformers import AutoModelForCausalLM

    if not (path / "config.json").is_file():
        raise EvalDataError(f"{path}: no exported checkpoint (run `samp export` first)")
    cfg = json.loads((path / "config.json").read_text())
    qmethod = (cfg.get("quantization_config") or {}).get("quant_method")
    kwargs: dict[str, Any] = {"dtype": dtype or "auto", "trust_remote_code": trust_remote_code}
    if qmethod == "bitsandbytes":
        kwargs["dtype"] = torch.bfloat16
    if max_memory is not None:
        kwargs.update(device_map="auto", max_memory=max_memory)
    model: nn.Module = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.train(False)
    return model


def evaluate(
    base: nn.Module,
    quant: nn.Module,
    tokenizer: Any,
    *,
    texts: list[str],
    tasks: list[TaskItem],
    max_len: int = 512,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> EvaluationResult:
    """Compare the two models; each takes its inputs where its embeddings live."""
    if not texts and not tasks:
        raise EvalDataError("nothing to evaluate: no held-out prompts and no eval set")
    st = compare_texts(
        base,
        quant,
        tokenizer,
        texts + [t.prompt for t in tasks],
        max_len=max_len,
        progress=progress,
    )
    if st.tokens == 0:
        raise EvalDataError("held-out prompts contain no tokens to score")
    em_b = em_q = js_b = js_q = 0
    flips = 0
    n_json = sum(1 for t in tasks if t.kind == "json")
    for t in report(tqdm(tasks, desc="eval tasks", disable=not progress, leave=False),
                    "evaluate", "tasks", total=len(tasks)):
        ab = greedy(base, tokenizer, t.prompt, max_new_tokens)
        aq = greedy(quant, tokenizer, t.prompt, max_new_tokens)
        cb, cq = is_correct(ab, t), is_correct(aq, t)
        em_b += cb
        em_q += cq
        flips += cb != cq
        if t.kind == "json":
            js_b += is_json(ab)
            js_q += is_json(aq)
    n = len(tasks)
    return EvaluationResult(
        num_prompts=len(texts) + n,
        num_tokens=st.tokens,
        perplexity_base=math.exp(st.nll_base / st.tokens),
        perplexity_quant=math.exp(st.nll_quant / st.tokens),
        mean_kl=max(0.0, st.kl / st.tokens),
        top1_agreement=st.agree / st.tokens,
        answer_flips=flips,
        task_exact_match_base=em_b / n if n else None,
        task_exact_match_quant=em_q / n if n else None,
        json_validity_base=js_b / n_json if n_json else None,
        json_validity_quant=js_q / n_json if n_json else None,
    )
