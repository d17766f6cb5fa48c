"""Statistics for the canary gates, over the bucket counts of vLLM's latency histograms.

Pure functions on plain numbers (stdlib only, no I/O): :mod:`.histogram` (bucket counts,
quantiles, the minimum-evidence rule, order-statistic intervals and the canary/stable
quantile-ratio interval), :mod:`.ranktest` (the Mann-Whitney U test on bucketed samples)
and :mod:`.judge` (Kayenta-style per-metric classification and score).
"""
