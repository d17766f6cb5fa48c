"""A client of the public Service, as users are: it sends the model's public name to
``http://<service>:<port>/v1/completions`` at a fixed rate for a bounded time and counts
every answer. Runs in a pod of the e2e cluster (the operator image has Python and
requests); prints one JSON line of cumulative counts every ``--report`` seconds and a
final one, which the e2e test reads with ``kubectl logs``.

Bounded in count and time (``--duration``, ``--max-requests``); it only ever talks to the
in-cluster Service it is given.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

PROMPTS = [
    "The capital of France is",
    "Write a haiku about autumn:",
    "def fibonacci(n):",
    '{"name": "Ada", "age":',
    "Kubernetes is",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="e.g. http://tiny-llama.default.svc:8000")
    ap.add_argument("--model", required=True, help="the public model name clients send")
    ap.add_argument("--rate", type=float, default=4.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds, at most")
    ap.add_argument("--max-requests", type=int, default=20000)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--report", type=float, default=10.0)
    args = ap.parse_args()

    counts: Counter[str] = Counter()
    served_by: Counter[str] = Counter()
    error_log: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        body = {
            "model": args.model,
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": args.max_tokens,
            "temperature": 0,
        }
        try:
            # A new connection per request: kube-proxy balances connections, not requests,
            # so keep-alive pinned most traffic to whichever pod a connection first reached
            # (the canary saw 13-18 of ~80 requests per window at a 50% replica ratio).
            r = requests.post(
                f"{args.url}/v1/completions",
                json=body,
                timeout=30,
                headers={"Connection": "close"},
            )
            key = str(r.status_code)
            model = r.json().get("model", "?") if r.ok else None
            detail = "" if r.ok else r.text
        except requests.RequestException as exc:
            key, model, detail = type(exc).__name__, None, str(exc)
        with lock:
            counts[key] += 1
            if model:
                served_by[model] += 1
            elif len(error_log) < 50:  # when and what, to line up with the cluster's events
                error_log.append(f"{time.strftime('%H:%M:%S')} {key} {detail[:120]}")

    def report(final: bool = False) -> None:
        with lock:
            ok = sum(v for k, v in counts.items() if k.startswith("2"))
            total = sum(counts.values())
            line = {
                "t": round(time.monotonic() - t0, 1),
                "total": total,
                "ok": ok,
                "errors": total - ok,
                "by_status": dict(counts),
                "answered_as": dict(served_by),
                "error_log": list(error_log),
                "final": final,
            }
        print(json.dumps(line), flush=True)

    t0 = time.monotonic()
    next_report = t0 + args.report
    with ThreadPoolExecutor(max_workers=8) as pool:
        i = 0
        while i < args.max_requests and time.monotonic() - t0 < args.duration:
            pool.submit(one, i)
            i += 1
            time.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
            if time.monotonic() >= next_report:
                report()
                next_report += args.report
    report(final=True)


if __name__ == "__main__":
    main()
