"""tests/e2e imports its own modules (node, e2e) by name, like tests/cluster does."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
