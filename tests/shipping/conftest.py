"""tests/shipping: the cluster tests here reuse tests/operator's operator harness."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
