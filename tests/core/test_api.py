"""The QuantizedModel API: examples parse, bad manifests fail with fixable messages,
the checked-in CRD equals the generator's output and is a structural schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from samp_core import api
from samp_core.crd import CRD_FILE_NAME, custom_resource_definition, render_yaml
from samp_core.formats import Format, HardwareTarget
from samp_core.manifest_text import load_documents
from samp_core.spec import RolloutSpec
from samp_core.units import parse_duration, parse_quantity
from samp_core.validation import validate_manifest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "tests" / "manifests" / "invalid").glob("*.yaml"))


def _header(path: Path, key: str) -> list[str]:
    prefix = f"# {key}: "
    return [
        line[len(prefix):].strip()
        for line in path.read_text().splitlines()
        if line.startswith(prefix)
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    resource, problems = validate_manifest(yaml.safe_load(path.read_text()))
    assert problems == []
    assert resource is not None and resource.kind == "QuantizedModel"


def test_there_are_at_least_25_distinct_invalid_manifests() -> None:
    assert len(INVALID) >= 25
    bodies = {p.read_text().split("\n", 4)[-1] for p in INVALID}
    assert len(bodies) == len(INVALID), "two invalid manifests are identical"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_with_its_message(path: Path) -> None:
    try:
        (document,) = load_documents(path.read_text())
    except yaml.YAMLError as err:  # refused before validation: a duplicate key
        text = str(err)
        for expected in _header(path, "expect"):
            assert expected in text, f"{path.name}: {expected!r} not in:\n{text}"
        return
    resource, problems = validate_manifest(document)
    assert resource is None
    text = "\n".join(str(p) for p in problems)
    for expected in _header(path, "expect"):
        assert expected in text, f"{path.name}: {expected!r} not in:\n{text}"
    for problem in problems:
        assert problem.path.startswith(("spec", "metadata", "apiVersion", "kind")), problem


def test_every_problem_is_reported_at_once() -> None:
    manifest = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    manifest["spec"]["calibration"]["samples"] = 1
    manifest["spec"]["serving"]["port"] = 0
    manifest["spec"]["hardware"]["target"] = "tpu"
    _, problems = validate_manifest(manifest)
    paths = {p.path for p in problems}
    assert {"spec.calibration.samples", "spec.serving.port", "spec.hardware.target"} <= paths


def test_unknown_field_suggests_the_right_name() -> None:
    manifest = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    manifest["spec"]["rollout"]["stepz"] = manifest["spec"]["rollout"].pop("steps")
    _, problems = validate_manifest(manifest)
    assert any("did you mean 'steps'" in p.fix for p in problems)


def test_defaults_fill_a_minimal_manifest() -> None:
    resource = api.parse({
        "apiVersion": "samp.dev/v1alpha1", "kind": "QuantizedModel",
        "metadata": {"name": "m"},
        "spec": {
            "model": {"source": "hf://org/model@main"},
            "calibration": {"source": "pvc://prompts/p.jsonl"},
            "quantization": {"budget": {"effectiveBits": 5}},
            "hardware": {"target": "h200"},
            "artifacts": {"uri": "s3://bucket/out"},
            "gates": {"latency": {"p99MaxSeconds": 5}},
        },
    })
    spec = resource.spec
    assert spec.quantization.keep_lm_head16_bit is True
    assert spec.model.trust_remote_code is False
    assert Format.NF4 not in spec.quantization.allowed_formats
    assert [s.weight for s in spec.rollout.steps] == [10, 50, 100]
    assert spec.hardware.target is HardwareTarget.H200 and spec.hardware.target.profile == "sm90"
    assert spec.gates.min_requests >= 1
    assert resource.namespace == "default"


def test_default_steps_are_not_shared_between_objects() -> None:
    a, b = RolloutSpec(), RolloutSpec()
    a.steps.append(a.steps[0])
    assert len(b.steps) == 3


def test_wire_form_round_trips() -> None:
    manifest = yaml.safe_load((ROOT / "examples" / "llama3-70b-h100.yaml").read_text())
    resource = api.parse(manifest)
    again = api.parse({**manifest, "spec": resource.spec.to_wire()})
    assert again.spec == resource.spec
    assert "fractionOf16Bit" not in resource.spec.to_wire()["quantization"]["budget"]


# --- the CRD ----------------------------------------------------------------------------

def test_checked_in_crd_matches_the_generator() -> None:
    checked_in = (ROOT / "crds" / CRD_FILE_NAME).read_text()
    assert checked_in == render_yaml(), "crds/ is stale: run `make crds`"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out += _walk(sub, f"{path}.{name}")
    if "items" in node:
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def _schema() -> dict[str, Any]:
    version = custom_resource_definition()["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_crd_names_and_subresources() -> None:
    crd = custom_resource_definition()
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == "quantizedmodels.samp.dev"
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "QuantizedModel", "quantizedmodels", ["qm"], ["samp"])
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Target", "Bits", "Saved%", "PPL+%", "P99-Ratio", "Age"} <= columns


def test_crd_schema_is_structural() -> None:
    for path, node in _walk(_schema()["properties"]["spec"]) + _walk(
        _schema()["properties"]["status"]
    ):
        assert "type" in node, f"{path} has no type"
        for key in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            assert key not in node, f"{path} has {key}"
        assert not ("properties" in node and "additionalProperties" in node), path


def test_every_spec_field_is_documented() -> None:
    undocumented = [
        path for path, node in _walk(_schema()["properties"]["spec"])
        if path and not path.endswith("[]") and not path.endswith("}") and not node.get(
            "description")
    ]
    assert undocumented == []


def test_crd_carries_the_cel_rules() -> None:
    rules = [
        rule["rule"]
        for _, node in _walk(_schema()["properties"]["spec"])
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert any("isSorted" in r for r in rules)
    assert any("maxWeightBytes" in r and "size() == 1" in r for r in rules)
    assert len(rules) >= 10


# --- units ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    ("38Gi", 38 * 2**30), ("512Mi", 512 * 2**20), ("40G", 40 * 10**9), ("1.5Gi", 3 * 2**29),
    ("1000", 1000),
])
def test_parse_quantity(text: str, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5 minutes", "1d", "m5"])
def test_bad_durations_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


@pytest.mark.parametrize("value", ["250m", "1", "1.5", "2Gi", "512Mi", "1e3", "100k", ".5"])
def test_container_resources_take_kubernetes_quantities(value: str) -> None:
    """CPU in millicores ("250m") is how every CPU request is written; it was refused."""
    from samp_core.spec import Resources

    assert Resources.model_validate({"requests": {"cpu": value}}).requests["cpu"] == value


@pytest.mark.parametrize("value", ["-1", "abc", "1 Gi", "2gb", ""])
def test_container_resources_refuse_what_kubernetes_refuses(value: str) -> None:
    from pydantic import ValidationError

    from samp_core.spec import Resources

    with pytest.raises(ValidationError):
        Resources.model_validate({"limits": {"memory": value}})
