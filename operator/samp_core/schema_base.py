"""Base class for API objects: camelCase on the wire, unknown fields refused, and
cross-field rules written once for both the API server (CEL) and Python.

A `Rule` holds a CEL expression, the message users see, and a Python predicate
that means the same thing. The CRD generator emits the CEL as
``x-kubernetes-validations``; the model validator runs the predicate, so
``samp validate`` and the API server reject the same manifests with the same
words. tests/core/test_api.py checks the CRD carries every rule's CEL, and
tests/cluster/test_cluster_crd.py that the API server rejects each invalid example
manifest (tests/manifests/invalid) with the expected words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: ``cel`` for the API server, ``holds`` for Python, one ``message``."""

    cel: str
    message: str
    holds: Callable[[Any], bool]
    field_path: str | None = None  # CEL fieldPath, e.g. ".steps", so errors point at a field

    def as_crd(self) -> dict[str, str]:
        rule = {"rule": self.cel, "message": self.message}
        if self.field_path:
            rule["fieldPath"] = self.field_path
        return rule


def _schema_with_rules(schema: dict[str, Any], model_class: type[Any]) -> None:
    """Put a model's rules into its JSON schema as CEL, for the CRD generator."""
    rules = getattr(model_class, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.as_crd() for rule in rules]


class ApiModel(BaseModel):
    """Every object of the QuantizedModel API derives from this."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        use_enum_values=False,
        validate_default=True,
        json_schema_extra=_schema_with_rules,
        # No coercion (``"yes"`` is not a bool, ``"8"`` not an int) and no NaN or infinity:
        # the API server refuses both, so ``samp validate`` must too. Enum fields opt out
        # with ``Strict(False)`` (a manifest writes them as strings).
        strict=True,
        allow_inf_nan=False,
    )

    # Rules of this object; checked in Python after field validation, emitted as CEL.
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        broken = [rule.message for rule in type(self).rules if not rule.holds(self)]
        if broken:
            raise ValueError("; ".join(broken))
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase, unset optional fields omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
