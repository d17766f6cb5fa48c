"""Parsing of Kubernetes quantities ("38Gi") and Go durations ("1h30m").

The CRD stores both as strings so manifests read the way Kubernetes users
expect; the core turns them into numbers with these two functions.
"""

from __future__ import annotations

import re

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?$"
# Container resources take Kubernetes' whole quantity grammar: CPU in millicores ("250m"),
# decimal exponents ("1e3"). QUANTITY_PATTERN above is for byte sizes only.
RESOURCE_QUANTITY_PATTERN = (
    r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_quantity(text: str) -> int:
    """Bytes in a Kubernetes quantity such as ``38Gi`` or ``40G``; rounds down to whole bytes."""
    match = re.fullmatch(QUANTITY_PATTERN, text.strip())
    if match is None:
        raise ValueError(
            f"{text!r} is not a quantity; write a number with an optional suffix, "
            "for example 38Gi, 512Mi or 40G"
        )
    suffix = match.group(2) or ""
    number = text.strip()[: len(text.strip()) - len(suffix)]
    scale = _BINARY.get(suffix) or _DECIMAL.get(suffix) or 1
    whole, _, frac = number.partition(".")
    value = int(whole) * scale
    if frac:
        value += int(frac) * scale // 10 ** len(frac)
    return value


def format_bytes(value: float) -> str:
    """Human-readable binary size, e.g. 40802189312 -> '38.0Gi'."""
    for suffix, scale in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{int(value)}B"


def parse_duration(text: str) -> float:
    """Seconds in a Go duration such as ``90s``, ``5m`` or ``1h30m``."""
    if re.fullmatch(DURATION_PATTERN, text.strip()) is None:
        raise ValueError(
            f"{text!r} is not a duration; write it like 30s, 5m or 1h30m (units ms, s, m, h)"
        )
    total = 0.0
    for number, _, unit in re.findall(r"([0-9]+(\.[0-9]+)?)(ms|s|m|h)", text):
        total += float(number) * _DURATION_UNITS[unit]
    return total
