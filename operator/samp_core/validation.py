"""Turn a manifest into a QuantizedModel, or into a list of problems a person can fix.

Every problem names the field path as it appears in the manifest
(``spec.rollout.steps[1].weight``), says what is wrong, and how to fix it.
``samp validate`` and the operator use this same function, so a manifest that
slips past the API server's schema is reported in the same words.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from samp_core.api import QuantizedModel
from samp_core.manifest_text import MAX_OBJECT_BYTES, object_bytes


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" + (f" (fix: {self.fix})" if self.fix else "")


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "<root>"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that owns the field at ``loc`` (to list its known fields)."""
    model: Any = QuantizedModel
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        field = fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [
            c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)
        ]
        if not nested:
            return None
        model = nested[0]
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _fix_for(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    loc = tuple(error["loc"])
    if kind == "missing":
        return f"add the required field '{loc[-1]}'"
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        known = sorted(f.alias or n for n, f in owner.model_fields.items()) if owner else []
        unknown = str(loc[-1])
        close = difflib.get_close_matches(unknown, known, n=1, cutoff=0.6) or [
            k for k in known if k.lower().startswith(unknown.lower())
        ][:1]
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{hint}remove it; fields allowed here: {', '.join(known)}"
    if kind in ("enum", "literal_error"):
        return "use one of the values listed"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(iter(ctx.values()), "")
        word = {"greater_than": "above", "greater_than_equal": "at least",
                "less_than": "below", "less_than_equal": "at most"}[kind]
        return f"use a value {word} {bound}"
    if kind == "string_pattern_mismatch":
        owner = _model_at(loc[:-1])
        fields = {f.alias or n: f for n, f in owner.model_fields.items()} if owner else {}
        field = fields.get(str(loc[-1]))
        if field is not None and field.description:
            return field.description
        return "see `kubectl explain quantizedmodel.spec` for the accepted forms"
    if kind in ("too_short", "too_long"):
        return "change the number of items or characters"
    if kind == "finite_number":
        return "write a finite number: a NaN bound can never pass, an infinite one never fail"
    if kind in ("bool_type", "int_type", "float_type"):
        plain = {"bool_type": "true or false", "int_type": "an integer",
                 "float_type": "a number"}[kind]
        return f"write {plain} without quotes (values are not converted from strings)"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"write a value of type {kind.removesuffix('_type').removesuffix('_parsing')}"
    return ""


def problems_of(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        if item["type"] == "string_pattern_mismatch":
            message = f"{item['input']!r} is not in an accepted form"
        if item["type"] == "value_error" and (broken := _broken_rules(loc, message)):
            problems += broken
            continue
        problems.append(Problem(path=_path(loc), message=message, fix=_fix_for(item)))
    return problems


def _broken_rules(loc: tuple[int | str, ...], message: str) -> list[Problem]:
    """A cross-field rule's error, one problem per broken rule, at the field it names."""
    owner = _model_at(loc) if loc else QuantizedModel
    rules = [r for r in getattr(owner, "rules", ()) if r.message in message]
    return [
        Problem(path=_path(loc) + (r.field_path or ""), message=r.message, fix="")
        for r in rules
    ]


def validate_manifest(manifest: Any) -> tuple[QuantizedModel | None, list[Problem]]:
    """Parse one manifest; returns the object, or None and every problem found."""
    if not isinstance(manifest, dict):
        return None, [
            Problem("<root>", "the document is not a mapping", "write a YAML object")
        ]
    size = object_bytes(manifest)
    if size > MAX_OBJECT_BYTES:
        return None, [Problem(
            "<root>",
            f"the object is {size} bytes as JSON, more than the {MAX_OBJECT_BYTES} bytes "
            "(1.5 MiB) etcd accepts in one request, so the API server would refuse it",
            "keep large data out of the manifest: prompts in a ConfigMap or on a PVC",
        )]
    try:
        return QuantizedModel.model_validate(manifest), []
    except ValidationError as error:
        return None, problems_of(error)
