"""samp_local: the local demo harness (``make demo``) and the rollout tests' real processes.

Not part of the operator: real vLLM CPU servers and Prometheus as local processes
(``processes``), loopback traffic split by the canary's weight (``load``), the
operator's canary driver run on the local clock (``canary_loop``) and the end-to-end
demo (``demo``). It reuses the operator's canary driver and Prometheus provider; the
operator never imports it (import-linter enforces both directions it cares about).
"""
