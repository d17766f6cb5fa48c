"""Trade-off picture: bench_rounding.py's rows plus peer rows from other runs (ModelOpt).

    python tests/benchmarks/plot_rounding.py tests/benchmarks/results/rounding_small.json \
        tests/benchmarks/results/modelopt_small_h200.jsonl \
        --out tests/benchmarks/results/rounding_small_peers.svg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rounding import svg


def peer_rows(path: Path) -> list[dict[str, object]]:
    """Rows of a peer's .json document (``rows``) or .jsonl file (one row a line)."""
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows: list[dict[str, object]] = json.loads(text)["rows"]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bench", type=Path, help="bench_rounding.py's OUT.json")
    ap.add_argument("peers", type=Path, nargs="*", help="peer rows (.json with rows, .jsonl)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = json.loads(args.bench.read_text())["rows"]
    for p in args.peers:
        rows += [{**r, "method": str(r["method"]).split(" (")[0]} for r in peer_rows(p)]
    args.out.write_text(svg(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
