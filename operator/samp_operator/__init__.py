"""samp_operator: the Kopf operator and its adapters (Kubernetes, Prometheus), and the `samp` CLI.

Importing this package imports nothing heavy; kopf and the Kubernetes client are
imported by the modules that need them.
"""
