"""The QuantizedModel CRD against a real kube-apiserver: install, accept the
examples, reject the invalid manifests with the server's own schema/CEL
messages, status subresource semantics, printer columns."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane

from samp_operator import cli as samp_cli

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "samp.dev_quantizedmodels.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "manifests" / "invalid").glob("*.yaml"))
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def _directives(path: Path) -> dict[str, list[str]]:
    """`# key: value` comment lines at the top of a manifest."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^#\s*([a-z-]+):\s*(.*?)\s*$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def _server_rejected() -> list[Path]:
    return [
        p for p in INVALID if _directives(p).get("server-rejects", ["false"])[0].lower() == "true"
    ]


def _crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


def _qm_path(namespace: str, name: str = "", sub: str = "") -> str:
    p = f"/apis/samp.dev/v1alpha1/namespaces/{namespace}/quantizedmodels"
    if name:
        p += f"/{name}"
    if sub:
        p += f"/{sub}"
    return p


def _load(path: Path, namespace: str) -> dict[str, Any]:
    return _load_text(path.read_text(), namespace)


def _load_text(text: str, namespace: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(text)
    doc.setdefault("metadata", {})["namespace"] = namespace
    return doc


def _create(
    cluster: ControlPlane, obj: dict[str, Any], *, dry_run: bool = False
) -> tuple[int, Any]:
    """POST like `kubectl create` does: strict field validation."""
    ns = obj["metadata"]["namespace"]
    q = "?fieldValidation=Strict" + ("&dryRun=All" if dry_run else "")
    return cluster.request("POST", _qm_path(ns) + q, obj)


def test_crd_file_exists() -> None:
    assert CRD_FILE.is_file(), f"{CRD_FILE} is missing"


def test_crd_installs_and_is_served(cluster: ControlPlane, samp_crds: list[str]) -> None:
    assert "quantizedmodels.samp.dev" in samp_crds
    status, crd = cluster.request(
        "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/quantizedmodels.samp.dev"
    )
    assert status == 200
    conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conds["Established"] == "True" and conds["NamesAccepted"] == "True"
    # short name and category resolve like `kubectl get qm` / `kubectl get samp`
    status, disc = cluster.request("GET", "/apis/samp.dev/v1alpha1")
    res = {r["name"]: r for r in disc["resources"]}
    assert "qm" in res["quantizedmodels"]["shortNames"]
    assert "quantizedmodels/status" in res
    out = cluster.kubectl("get", "qm", "-A")
    assert out.returncode == 0


def test_crd_is_structural_and_cel_compiles(cluster: ControlPlane, samp_crds: list[str]) -> None:
    """The server accepted the CRD: no NonStructuralSchema condition, CEL rules compiled."""
    _, crd = cluster.request(
        "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/quantizedmodels.samp.dev"
    )
    bad = [
        c
        for c in crd["status"]["conditions"]
        if c["type"] == "NonStructuralSchema" and c["status"] == "True"
    ]
    assert not bad, bad


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_accepted(
    cluster: ControlPlane, samp_crds: list[str], cluster_namespace: str, example: Path
) -> None:
    obj = _load(example, cluster_namespace)
    status, body = _create(cluster, obj, dry_run=True)
    assert status == 201, f"{example.name} dry-run rejected: {_message(body)}"
    status, body = _create(cluster, obj)
    assert status == 201, (
        f"{example.name} rejected: {body.get('message') if isinstance(body, dict) else body}"
    )
    # defaults from the schema are applied by the server
    assert body["metadata"]["uid"]
    status, got = cluster.request("GET", _qm_path(cluster_namespace, obj["metadata"]["name"]))
    assert status == 200 and got["spec"]["model"] == body["spec"]["model"]


def test_examples_exist() -> None:
    assert EXAMPLES, "examples/*.yaml: no QuantizedModel examples found"


def _message(body: Any) -> str:
    if not isinstance(body, dict):
        return str(body)
    causes = [c.get("message", "") for c in (body.get("details") or {}).get("causes", [])]
    return " | ".join([body.get("message", ""), *causes])


def _create_raw_yaml(cluster: ControlPlane, text: str, namespace: str) -> tuple[int, Any]:
    """POST the manifest's own YAML text, as `kubectl create --validate=strict` sends it
    when it does not re-encode: the server's strict decoder sees duplicate keys too."""
    text = re.sub(r"(?m)^(  namespace:) .*$", rf"\1 {namespace}", text, count=1)
    return cluster.request(
        "POST",
        _qm_path(namespace) + "?fieldValidation=Strict&dryRun=All",
        text.encode(),
        headers={"Content-Type": "application/yaml"},
    )


def _oversized_manifest() -> str:
    """The tiny example carrying 2 MiB in an annotation: more than etcd takes in a request."""
    src = next(p for p in EXAMPLES if "tiny" in p.name).read_text()
    blob = "x" * (2 * 2**20)
    return src.replace("metadata:\n", f"metadata:\n  annotations:\n    blob: {blob}\n", 1)


BAD_INPUTS = [(p.stem, p.read_text()) for p in INVALID] + [
    ("oversized-2MiB", "# expect: 1.5 MiB\n# server-rejects: true\n" + _oversized_manifest())
]


def _header_of(text: str, key: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"(?m)^#\s*{key}:\s*(.*?)\s*$", text)]


def _samp_validate(tmp_path: Path, name: str, text: str) -> tuple[int, str]:
    """`samp validate FILE` (the CLI's own function): exit status and everything it said."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = samp_cli.main(["validate", str(path)])
    return status, out.getvalue() + err.getvalue()


@pytest.mark.parametrize(("name", "text"), BAD_INPUTS, ids=[n for n, _ in BAD_INPUTS])
def test_bad_input_is_refused_by_api_server_and_samp_validate(
    cluster: ControlPlane, samp_crds: list[str], cluster_namespace: str, tmp_path: Path,
    *, name: str, text: str,
) -> None:
    """Every in-repo invalid manifest, through both the real API server (raw YAML, strict
    field validation, as kubectl and Argo CD send) and `samp validate`. `samp validate`
    refuses all, with the `# expect:` words; the server refuses those marked
    `# server-rejects: true`, with the `# expect-server:` (else `# expect:`) words, and
    accepts the rest (only the operator's own validation catches those)."""
    expected = _header_of(text, "expect")
    assert expected, f"{name}: no '# expect:' line"
    status, said = _samp_validate(tmp_path, name, text)
    assert status == 1, f"{name}: samp validate accepted it:\n{said}"
    for exp in expected:
        assert exp in said, f"{name}: {exp!r} not in samp validate's output:\n{said}"

    server_rejects = _header_of(text, "server-rejects") == ["true"]
    status, body = _create_raw_yaml(cluster, text, cluster_namespace)
    if not server_rejects:
        assert status == 201, f"{name}: server-rejects: false, but the server says {_message(body)}"
        return
    assert status in (400, 413, 422), (
        f"{name}: the API server accepted it (HTTP {status}); expected a rejection"
    )
    messages = [_message(body)]
    server_expected = _header_of(text, "expect-server") or (
        [] if name == "oversized-2MiB" else expected
    )
    if any(e not in messages[0] for e in server_expected) and "unknown field" in messages[0]:
        # an unknown field stops the strict decoder first; the schema's own findings come
        # when unknown fields are merely pruned (the API default, fieldValidation=Warn)
        obj = _load_text(text, cluster_namespace)
        st2, body2 = cluster.request(
            "POST", _qm_path(cluster_namespace) + "?fieldValidation=Warn&dryRun=All", obj
        )
        if st2 in (400, 422):
            messages.append(_message(body2))
    for exp in server_expected:
        assert any(exp in m for m in messages), (
            f"{name}: {exp!r} not in the server's message(s): {messages}"
        )


def test_some_manifests_are_server_rejected() -> None:
    if not INVALID:
        pytest.fail("tests/manifests/invalid/*.yaml: none found")
    assert _server_rejected(), "no invalid manifest is marked '# server-rejects: true'"


def _example_obj(namespace: str, name: str) -> dict[str, Any]:
    src = next((p for p in EXAMPLES if "tiny" in p.name), EXAMPLES[0])
    obj = _load(src, namespace)
    obj["metadata"]["name"] = name
    return obj


def test_status_is_a_subresource(
    cluster: ControlPlane, samp_crds: list[str], cluster_namespace: str
) -> None:
    ns, name = cluster_namespace, "status-sub"
    status, created = _create(cluster, _example_obj(ns, name))
    assert status == 201, created
    gen = created["metadata"]["generation"]

    # 1. writing status through the main resource is ignored
    obj = copy.deepcopy(created)
    obj["status"] = {"phase": "Promoted", "message": "written through the main resource"}
    status, updated = cluster.request("PUT", _qm_path(ns, name), obj)
    assert status == 200, updated
    assert (updated.get("status") or {}).get("phase") != "Promoted"
    assert (updated.get("status") or {}).get("message") != "written through the main resource"
    assert updated["metadata"]["generation"] == gen  # nothing in spec changed

    # 2. writing status through /status works and does not bump generation
    patch = {"status": {"phase": "Planning", "observedGeneration": gen, "message": "planning"}}
    status, st = cluster.request(
        "PATCH",
        _qm_path(ns, name, "status"),
        patch,
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200, st
    assert st["status"]["phase"] == "Planning"
    assert st["metadata"]["generation"] == gen

    # 3. writing spec through /status is ignored
    old_target = st["spec"]["hardware"]["target"]
    new_target = "h100" if old_target != "h100" else "a100"
    patch = {"spec": {"hardware": {"target": new_target}}, "status": {"message": "still planning"}}
    status, st2 = cluster.request(
        "PATCH",
        _qm_path(ns, name, "status"),
        patch,
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200, st2
    assert st2["spec"]["hardware"]["target"] == old_target
    assert st2["status"]["message"] == "still planning"
    assert st2["metadata"]["generation"] == gen

    # 4. a spec write bumps generation and keeps status
    obj = copy.deepcopy(st2)
    obj["spec"]["calibration"]["seed"] = int(obj["spec"]["calibration"].get("seed", 0)) + 1
    status, upd = cluster.request("PUT", _qm_path(ns, name) + "?fieldValidation=Strict", obj)
    assert status == 200, upd
    assert upd["metadata"]["generation"] == gen + 1
    assert upd["status"]["phase"] == "Planning"

    # 5. the status schema is enforced on /status too
    status, bad = cluster.request(
        "PATCH",
        _qm_path(ns, name, "status"),
        {"status": {"phase": "Exploded"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 422, bad
    assert "Unsupported value" in bad["message"]


def test_table_shows_printer_columns(
    cluster: ControlPlane, samp_crds: list[str], cluster_namespace: str
) -> None:
    ns, name = cluster_namespace, "table"
    status, created = _create(cluster, _example_obj(ns, name))
    assert status == 201, created
    status, _ = cluster.request(
        "PATCH",
        _qm_path(ns, name, "status"),
        {"status": {"phase": "Evaluating"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200

    status, table = cluster.request("GET", _qm_path(ns), headers={"Accept": TABLE})
    assert status == 200, table
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    want = [c["name"] for c in _crd()["spec"]["versions"][0]["additionalPrinterColumns"]]
    got = [c["name"] for c in table["columnDefinitions"]]
    assert got == ["Name", *want], got
    assert len(table["rows"]) == 1
    row = dict(zip(got, table["rows"][0]["cells"], strict=True))
    assert row["Name"] == name
    assert row["Phase"] == "Evaluating"
    if "Target" in row:
        assert row["Target"] == created["spec"]["hardware"]["target"]

    # what an SRE sees
    out = cluster.kubectl("get", "qm", "-n", ns).stdout
    assert "PHASE" in out.splitlines()[0] and "Evaluating" in out, out
    wide = cluster.kubectl("get", "qm", "-n", ns, "-o", "wide").stdout.splitlines()[0]
    hidden = [c["name"].upper() for c in table["columnDefinitions"] if c.get("priority", 0) > 0]
    assert all(h in wide for h in hidden), wide


def test_kubectl_apply_like_a_user(
    cluster: ControlPlane, samp_crds: list[str], cluster_namespace: str
) -> None:
    """`kubectl apply` (client-side, strict validation) with the example as written."""
    src = next((p for p in EXAMPLES if "tiny" in p.name), EXAMPLES[0])
    r = cluster.kubectl(
        "apply",
        "-n",
        cluster_namespace,
        "-f",
        "-",
        check=False,
        input=yaml.safe_dump({**_load(src, cluster_namespace)}),
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(cluster.kubectl("get", "qm", "-n", cluster_namespace, "-o", "json").stdout)
    assert len(got["items"]) == 1

