"""samp_core: the pure core of samp-operator.

No I/O lives here: no Kubernetes client, no HTTP client, no torch. The API
models, the SAMP planner, the job-result schemas, the rollout state machine and
gate evaluation are plain functions over typed data, so they are tested without
anything running. import-linter enforces this (see pyproject.toml).
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
