"""Batch jobs of the SAMP pipeline: calibrate, score sensitivity, plan, export, evaluate.

Each stage is a small CLI (``samp_jobs.cli``) over pure tensor functions
(``samp_jobs.fakequant``) and writes a ``samp_core.results`` document the
operator reads back.
"""
