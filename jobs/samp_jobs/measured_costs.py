"""Hardware profiles with measured kernel costs, for the stages that plan.

``samp_core.hardware`` does no I/O: its profiles carry assumed relative costs
and :meth:`HardwareProfile.with_measured_costs` applies a benchmark. This module
is the I/O half: it reads the :class:`MeasuredCosts` document that
``tests/benchmarks/gpu_matmul_costs.py`` wrote on a GPU and hands the stages the
profile with those costs (``cost_source = "measured:<file>"``).

Where the document comes from, first match wins:

1. ``$SAMP_MEASURED_COSTS`` (a path; ``none`` turns measured costs off);
2. the package data ``samp_core/profiles/<profile>.measured.json`` shipped in the
   image (sm90 is measured on an H200).

A profile with no such file keeps its assumed costs.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from samp_core.formats import HardwareTarget
from samp_core.hardware import HardwareProfile, MeasuredCosts, get_profile

__all__ = ["ENV_VAR", "measured_costs_for", "profile_with_measured_costs"]

ENV_VAR = "SAMP_MEASURED_COSTS"


def measured_costs_for(profile: str) -> tuple[MeasuredCosts, str] | None:
    """The benchmark document for ``profile`` and a name for where it came from, or None."""
    override = os.environ.get(ENV_VAR, "").strip()
    if override.lower() == "none":
        return None
    if override:
        path = Path(override)
        doc = MeasuredCosts.model_validate_json(path.read_text())
        return (doc, path.name) if doc.profile == profile else None
    res = resources.files("samp_core").joinpath("profiles", f"{profile}.measured.json")
    if not res.is_file():
        return None
    return MeasuredCosts.model_validate_json(res.read_text()), res.name


def profile_with_measured_costs(name_or_target: str | HardwareTarget) -> HardwareProfile:
    """``samp_core.hardware.get_profile`` (assumed costs), with measured costs applied where
    a benchmark document exists."""
    profile = get_profile(name_or_target)
    found = measured_costs_for(profile.name)
    if found is None:
        return profile
    doc, source = found
    return profile.with_measured_costs(doc, source)
