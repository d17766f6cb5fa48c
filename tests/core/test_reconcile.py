"""Every transition of the quantization state machine, without a cluster.

A tiny in-memory "world" stands in for the API server: it applies a Decision (status,
CreateChild and DeleteChild actions) and lets the test move Jobs to Running / Succeeded / Failed.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from samp_core.decision import CreateChild, Decision, DeleteChild, EnsureCanary, StartReplan
from samp_core.formats import ExportFormat, SensitivityMethod
from samp_core.reconcile import (
    RESULT_GRACE_SECONDS,
    ObservedJob,
    parse_status,
    reconcile,
)
from samp_core.results import (
    CalibrationResultSummary,
    EvaluationResultSummary,
    ExportResultSummary,
    LengthStats,
    PlanResultSummary,
    SensitivityResultSummary,
    Stage,
)
from samp_core.stage_contract import StageInvocation
from samp_core.stage_jobs import JobSettings, stage_hashes_for
from samp_core.stage_layout import (
    ANNOTATION_INPUTS_HASH,
    LABEL_GENERATION,
    LABEL_STAGE,
    STAGES,
    child_name,
)
from samp_core.status import Phase
from samp_core.validation import validate_manifest

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = JobSettings(default_image="samp-jobs:test")


def created(d: Decision) -> list[Any]:
    """The manifests the decision creates, in order."""
    return [a.manifest for a in d.actions if isinstance(a, CreateChild)]


def deleted(d: Decision) -> list[DeleteChild]:
    """The children the decision deletes, in order."""
    return [a for a in d.actions if isinstance(a, DeleteChild)]

# What each stage's pod leaves in its termination message: the typed summaries, as JSON.
SUMMARIES: dict[str, dict[str, Any]] = {s.stage.value: json.loads(s.to_json()) for s in (
    CalibrationResultSummary(stage=Stage.CALIBRATE, num_samples=64, num_tokens=8192,
                             lengths=LengthStats(p50=100, p90=200, max=256)),
    SensitivityResultSummary(stage=Stage.SENSITIVITY, method=SensitivityMethod.FISHER,
                             num_tokens=8192, num_groups=9, formats=[], wall_seconds=1.0),
    PlanResultSummary(stage=Stage.PLAN, profile="sm90", export_format="compressed-tensors",
                      groups=9, by_format={"int4-w4a16": 6, "fp8-w8a8": 2, "bf16": 1},
                      total_bytes=400, bytes_16bit=1000, fraction_of_16bit=0.4,
                      memory_saved_percent=60.0, effective_bits=6.4, predicted_loss=0.01,
                      budget_bytes=400, budget_used=1.0),
    ExportResultSummary(stage=Stage.EXPORT, artifact_uri="pvc://artifacts/ns/m/export-x",
                        export_format=ExportFormat.COMPRESSED_TENSORS, bytes_on_disk=400),
    EvaluationResultSummary(stage=Stage.EVALUATE, num_prompts=32, perplexity_base=10.0,
                            perplexity_quant=10.1, mean_kl=0.01, top1_agreement=0.97),
)}


def manifest(name: str = "llama", generation: int = 1, **spec_changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"source": "hf://meta-llama/Llama-3-8B@main",
                  "secretRef": {"name": "hf-token"}},
        "calibration": {"source": "pvc://prompts/prod.jsonl", "samples": 256},
        "quantization": {"budget": {"fractionOf16Bit": 0.4}},
        "hardware": {"target": "h100", "gpusPerJob": 2, "retries": 1},
        "artifacts": {"uri": "pvc://artifacts/samp"},
        "gates": {"latency": {"p99MaxSeconds": 5}},  # no serving.stable: a ceiling is required
    }
    for path, value in spec_changes.items():
        node = spec
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return {
        "apiVersion": "samp.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": name, "namespace": "ml", "generation": generation,
                     "uid": "uid-1"},
        "spec": spec,
    }


class World:
    """Jobs and ConfigMaps as the API server would hold them."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.jobs: dict[str, dict[str, Any]] = {}
        self.config_maps: set[str] = set()
        self.invocations: dict[str, StageInvocation] = {}  # what each Job's ConfigMap holds
        self.events: list[tuple[str, str, str]] = []
        self.created: list[str] = []
        self.now = T0

    def observed(self) -> list[ObservedJob]:
        return [ObservedJob(**j["obs"]) for j in self.jobs.values()]

    def step(self) -> Any:
        d = reconcile(copy.deepcopy(self.body), self.observed(), sorted(self.config_maps),
                      self.now, SETTINGS)
        self.body["status"] = d.status.to_wire()
        for obj in created(d):
            name = obj["metadata"]["name"]
            if obj["kind"] == "ConfigMap":
                self.config_maps.add(name)
                self.invocations[name] = StageInvocation.model_validate_json(
                    obj["data"]["invocation.json"])
                continue
            assert name not in self.jobs, f"duplicate Job {name}"
            labels = obj["metadata"]["labels"]
            self.created.append(name)
            self.jobs[name] = {"manifest": obj, "obs": {
                "name": name, "stage": labels[LABEL_STAGE],
                "inputs_hash": obj["metadata"]["annotations"][ANNOTATION_INPUTS_HASH],
                "generation": int(labels[LABEL_GENERATION]), "state": "Running",
                "started_at": self.now}}
        for ref in deleted(d):
            if ref.kind == "Job":
                self.jobs.pop(ref.name, None)
            else:
                self.config_maps.discard(ref.name)
        self.events += [(e.type, e.reason, e.message) for e in d.events]
        return d

    def finish(self, stage: str, result: str | None = None, **obs: Any) -> None:
        job = self.running(stage)
        self.now += timedelta(seconds=30)
        job["obs"].update(state="Succeeded", finished_at=self.now,
                          result=json.dumps(SUMMARIES[stage]) if result is None else result,
                          **obs)

    def fail(self, stage: str, reason: str = "BackoffLimitExceeded", message: str = "OOM") -> None:
        job = self.running(stage)
        self.now += timedelta(seconds=30)
        job["obs"].update(state="Failed", finished_at=self.now, reason=reason,
                          message=message, failed_pods=2)

    def running(self, stage: str) -> dict[str, Any]:
        found = [j for j in self.jobs.values()
                 if j["obs"]["stage"] == stage and j["obs"]["state"] == "Running"]
        assert len(found) == 1, (stage, list(self.jobs))
        return found[0]

    @property
    def status(self) -> Any:
        return parse_status(self.body.get("status"))

    def cond(self, ctype: str) -> Any:
        return next(c for c in self.status.conditions if c.type == ctype)

    def run_to_evaluated(self) -> None:
        for stage in STAGES:
            self.step()
            self.finish(stage.value)
        d = self.step()
        assert d.facts.quantized


def test_first_reconcile_creates_calibration_configmap_and_job() -> None:
    w = World(manifest())
    d = w.step()
    assert [o["kind"] for o in created(d)] == ["ConfigMap", "Job"]
    assert w.created == ["llama-g1-cal"]
    assert w.status.phase == Phase.CALIBRATING
    assert w.status.observed_generation == 1
    ready = w.cond("Ready")
    assert (ready.status, ready.reason, ready.observed_generation) == ("False", "Calibrating", 1)
    assert ("Normal", "StageStarted", "calibrate: created Job llama-g1-cal") in w.events
    assert d.requeue_after is None  # Job events wake us, not polling


def test_reconcile_is_idempotent_no_duplicate_jobs_or_events() -> None:
    w = World(manifest())
    w.step()
    events = list(w.events)
    d = w.step()
    assert created(d) == [] and deleted(d) == [] and d.events == ()
    assert w.events == events


def test_happy_path_walks_every_phase_to_evaluated() -> None:
    w = World(manifest())
    phases = []
    for stage in STAGES:
        w.step()
        phases.append(w.status.phase)
        w.finish(stage.value)
    d = w.step()
    phases.append(w.status.phase)
    assert phases == [Phase.CALIBRATING, Phase.SCORING, Phase.PLANNING, Phase.EXPORTING,
                      Phase.EVALUATING, Phase.EVALUATED]
    assert d.facts.quantized
    st = w.status
    assert st.plan is not None and st.plan.effective_bits == 6.4
    assert st.plan.memory_saved_percent == 60.0 and st.plan.groups_per_format["bf16"] == 1
    assert st.artifact_uri == "pvc://artifacts/ns/m/export-x"
    assert st.accuracy is not None and st.accuracy.perplexity_increase_percent == 1.0
    assert [c.status for c in st.conditions if c.type in
            ("Calibrated", "Quantized", "Evaluated", "Ready")] == ["True"] * 4
    assert [r.state for r in st.stages] == ["Succeeded"] * 5
    assert w.created == [child_name("llama", 1, s) for s in STAGES]
    assert [r for _, r, _ in w.events].count("StageSucceeded") == 5
    assert w.events[-1][:2] == ("Normal", "Evaluated")
    # Stage durations feed the metrics exactly once per stage.
    assert len(d.facts.stage_durations) == 1 and d.facts.stage_durations[0][0] == "evaluate"
    assert w.step().events == ()


def test_job_manifest_is_restricted_and_carries_the_spec() -> None:
    w = World(manifest(**{"hardware__nodeSelector": {"pool": "h100"}}))
    w.step()
    w.finish("calibrate")
    w.step()  # sensitivity: a GPU stage
    job = w.running("sensitivity")["manifest"]
    spec = job["spec"]
    assert spec["backoffLimit"] == 1 and spec["activeDeadlineSeconds"] == 7200
    assert spec["ttlSecondsAfterFinished"] == SETTINGS.ttl_seconds_after_finished
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"pool": "h100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = c["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                  "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                  "seccompProfile": {"type": "RuntimeDefault"}}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert "hf-token" not in json.dumps(c["env"])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/scratch"] and mounts["/etc/samp"]["readOnly"]
    assert mounts["/mnt/pvc/artifacts"]["readOnly"] is False
    assert mounts["/mnt/pvc/prompts"]["readOnly"] is True
    assert c["image"] == "samp-jobs:test" and c["command"][:2] == ["samp", "sensitivity"]
    # The calibration stage is CPU-only: no GPU request.
    cal = w.jobs["llama-g1-cal"]["manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(cal["resources"])


def test_configmap_holds_the_stage_invocation() -> None:
    body = manifest()
    d = reconcile(body, [], [], T0, SETTINGS)
    cm = created(d)[0]
    assert cm["immutable"] is True and cm["metadata"]["name"] == "llama-g1-cal"
    assert list(cm["data"]) == ["invocation.json"]  # the Job's only input document
    inv = StageInvocation.model_validate_json(cm["data"]["invocation.json"])
    assert inv.stage == Stage.CALIBRATE and inv.attempt == 1
    assert inv.inputs.calibration is not None and inv.inputs.calibration.samples == 256
    assert inv.inputs.profile == "sm90" and inv.inputs.model.source.startswith("hf://")
    assert inv.inputs_hash == cm["metadata"]["annotations"][ANNOTATION_INPUTS_HASH]
    assert inv.output_uri.startswith("pvc://artifacts/samp/ml/llama/w-")
    assert inv.paths.workdir == "/mnt/pvc/" + inv.output_uri.removeprefix("pvc://")
    assert inv.paths.prompts == "/mnt/pvc/prompts/prod.jsonl"
    assert inv.paths.model is None  # hf://: the Job fetches it from the hub
    assert inv.runtime.termination_log == "/dev/termination-log" and not inv.runtime.progress
    job = created(d)[1]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["samp", "calibrate", "--invocation", "/etc/samp/invocation.json"]
    assert "hf-token" not in cm["data"]["invocation.json"]  # secret names stay out of it


def test_pod_failures_emit_retry_events_then_failed_job_fails_the_resource() -> None:
    w = World(manifest())
    w.step()
    w.running("calibrate")["obs"].update(failed_pods=1, message="CUDA out of memory")
    d = w.step()
    assert ("Warning", "JobRetrying") in [e[:2] for e in w.events]
    assert d.facts.job_failures == (("calibrate", "PodFailed"),)
    assert w.status.phase == Phase.CALIBRATING
    w.fail("calibrate", message="CUDA out of memory")
    d = w.step()
    st = w.status
    assert st.phase == Phase.FAILED
    ready = w.cond("Ready")
    assert ready.status == "False" and ready.reason == "JobFailed"
    assert "BackoffLimitExceeded" in ready.message and "CUDA out of memory" in ready.message
    assert w.cond("Calibrated").status == "False"
    assert any(e[1] == "StageFailed" and "CUDA out of memory" in e[2] for e in w.events)
    assert ("calibrate", "BackoffLimitExceeded") in d.facts.job_failures
    # Failed is sticky for this generation: no new Job, no new Event.
    n = len(w.events)
    d = w.step()
    assert created(d) == [] and len(w.events) == n and w.status.phase == Phase.FAILED
    # Even once the Job is gone (TTL), the record keeps it failed.
    w.jobs.clear()
    assert created(w.step()) == [] and w.status.phase == Phase.FAILED


def test_new_generation_after_failure_retries_the_stage() -> None:
    w = World(manifest())
    w.step()
    w.fail("calibrate")
    w.step()
    w.body["metadata"]["generation"] = 2
    w.body["spec"]["hardware"]["retries"] = 3  # placement only: same inputs hash
    d = w.step()
    assert "llama-g2-cal" in w.created and w.status.phase == Phase.CALIBRATING
    assert any(r.name == "llama-g1-cal" for r in deleted(d))


def test_spec_change_mid_stage_deletes_obsolete_job_and_restarts_there() -> None:
    w = World(manifest())
    w.step()
    w.finish("calibrate")
    w.step()  # sensitivity running (g1)
    w.body["metadata"]["generation"] = 2
    w.body["spec"]["calibration"]["samples"] = 512  # calibration input changed
    d = w.step()
    assert {r.name for r in deleted(d) if r.kind == "Job"} == {"llama-g1-cal", "llama-g1-sens"}
    assert {r.name for r in deleted(d) if r.kind == "ConfigMap"} == {"llama-g1-cal",
                                                                    "llama-g1-sens"}
    assert w.created[-1] == "llama-g2-cal"
    assert w.status.phase == Phase.CALIBRATING
    assert [r.stage for r in w.status.stages] == ["calibrate"]


def test_unrelated_spec_change_adopts_the_running_job() -> None:
    w = World(manifest())
    w.step()
    w.finish("calibrate")
    w.step()  # sensitivity running (g1)
    w.body["metadata"]["generation"] = 2
    w.body["spec"]["quantization"]["budget"] = {"fractionOf16Bit": 0.3}  # affects plan on
    d = w.step()
    assert created(d) == [] and deleted(d) == []
    assert w.status.phase == Phase.SCORING and w.status.observed_generation == 2
    w.finish("sensitivity")
    w.step()
    assert w.created[-1] == "llama-g2-plan"


def test_unchanged_inputs_reuse_artifacts_and_rerun_from_first_changed_stage() -> None:
    w = World(manifest())
    w.run_to_evaluated()
    w.body["metadata"]["generation"] = 2
    w.body["spec"]["quantization"]["budget"] = {"fractionOf16Bit": 0.3}
    d = w.step()
    st = w.status
    assert [(r.stage, r.state) for r in st.stages] == [
        ("calibrate", "Reused"), ("sensitivity", "Reused"), ("plan", "Running")]
    assert w.created[-1] == "llama-g2-plan"
    assert st.plan is None and st.accuracy is None and st.artifact_uri is None
    assert st.phase == Phase.PLANNING
    assert sum(1 for e in d.events if e.reason == "StageReused") == 2
    # The old plan/export/evaluate Jobs describe another plan: deleted.
    assert {"llama-g1-plan", "llama-g1-export", "llama-g1-eval"} <= {r.name for r in deleted(d)}
    assert "llama-g1-cal" not in {r.name for r in deleted(d)}
    for stage in ("plan", "export", "evaluate"):
        w.finish(stage)
        w.step()
    assert w.status.phase == Phase.EVALUATED


def test_serving_only_change_reruns_nothing() -> None:
    w = World(manifest())
    w.run_to_evaluated()
    n = len(w.created)
    w.body["metadata"]["generation"] = 2
    w.body["spec"]["serving"] = {"replicas": 3}
    d = w.step()
    assert len(w.created) == n and d.facts.quantized and w.status.phase == Phase.EVALUATED
    assert w.cond("Ready").observed_generation == 2


def test_restart_adopts_existing_job_even_without_status() -> None:
    """An operator that crashed after creating the Job but before writing status."""
    w = World(manifest())
    w.step()
    del w.body["status"]
    d = w.step()
    assert created(d) == [] and w.status.phase == Phase.CALIBRATING
    assert [e.reason for e in d.events] == ["StageAdopted"]


def test_completed_job_without_result_waits_then_reads_the_stored_result() -> None:
    """The pod (and its termination message) is gone: a reader Job brings the result the
    stage stored in the artifact store (samp_core.stored_result)."""
    w = World(manifest())
    w.step()
    w.finish("calibrate", result="")
    d = w.step()
    assert d.requeue_after is not None and w.status.phase == Phase.CALIBRATING
    w.now += timedelta(seconds=RESULT_GRACE_SECONDS + 1)
    d = w.step()
    assert [o["metadata"]["name"] for o in created(d)] == ["llama-g1-cal-read"]
    assert w.status.phase == Phase.CALIBRATING and "ResultFromStore" in [e[1] for e in w.events]
    d = w.step()  # the reader runs: adopted as the stage's Job, nothing new
    assert created(d) == [] and deleted(d) == [] and "StageAdopted" not in [e[1] for e in w.events]
    w.finish("calibrate")  # the reader's pod leaves the stored summary
    d = w.step()
    assert w.status.stages[0].state == "Succeeded" and d.facts.stage_durations == ()
    assert w.status.stages[0].job == "llama-g1-cal-read"
    assert w.status.phase == Phase.SCORING


def test_no_stored_result_fails_with_the_readers_reason() -> None:
    w = World(manifest())
    w.step()
    w.finish("calibrate", result="")
    w.now += timedelta(seconds=RESULT_GRACE_SECONDS + 1)
    w.step()
    w.fail("calibrate", reason="PodFailurePolicy",
           message="llama-g1-cal completed, but its pod ... is gone: results/x.json does not exist")
    w.step()
    assert w.status.phase == Phase.FAILED and w.cond("Ready").reason == "JobFailed"
    assert "does not exist" in w.cond("Ready").message


def test_reader_without_result_fails_as_result_missing() -> None:
    w = World(manifest())
    w.step()
    w.finish("calibrate", result="")
    w.now += timedelta(seconds=RESULT_GRACE_SECONDS + 1)
    w.step()
    w.finish("calibrate", result="")  # the reader's pod is gone too: no reader of a reader
    w.now += timedelta(seconds=RESULT_GRACE_SECONDS + 1)
    d = w.step()
    assert created(d) == []
    assert w.status.phase == Phase.FAILED and w.cond("Ready").reason == "ResultMissing"


def test_garbage_termination_message_is_reported() -> None:
    w = World(manifest())
    w.step()
    w.finish("calibrate", result="Traceback (most recent call last): boom")
    w.step()
    assert w.status.phase == Phase.FAILED and w.cond("Ready").reason == "ResultInvalid"
    assert "not JSON" in w.cond("Ready").message


def test_wrong_kind_of_result_is_reported() -> None:
    w = World(manifest())
    w.step()
    w.finish("calibrate", result=json.dumps(SUMMARIES["plan"]))
    w.step()
    assert w.cond("Ready").reason == "ResultInvalid" and "CalibrationResult" in \
        w.cond("Ready").message


def test_invalid_spec_is_reported_not_raised() -> None:
    body = manifest(**{"quantization__overrides": [{"match": "([", "format": "bf16"}]})
    w = World(body)
    d = w.step()
    assert created(d) == [] and d.facts.resource is None
    assert w.status.phase == Phase.FAILED
    ready = w.cond("Ready")
    assert ready.reason == "InvalidSpec" and "spec.quantization.overrides[0].match" in \
        ready.message
    assert [e[:2] for e in w.events] == [("Warning", "InvalidSpec")]
    w.step()
    assert len(w.events) == 1  # reported once per generation


def test_object_store_uris_are_refused_with_the_field_and_the_fix() -> None:
    body = manifest(artifacts__uri="s3://bucket/models", calibration__source="gs://prompts/p.jsonl")
    w = World(body)
    d = w.step()
    assert created(d) == [] and w.status.phase == Phase.FAILED
    message = w.cond("Ready").message
    assert "spec.artifacts.uri: s3:// is not supported" in message
    assert "spec.calibration.source: gs:// is not supported" in message
    assert "pvc://claim/path" in message
    assert "spec.model.source" not in message  # hf:// models are downloaded by the Job


def test_invalid_spec_after_valid_deletes_children() -> None:
    w = World(manifest())
    w.step()
    w.body["metadata"]["generation"] = 2
    w.body["spec"]["hardware"]["target"] = "tpu-v5"
    d = w.step()
    assert {r.name for r in deleted(d)} == {"llama-g1-cal"}
    assert w.cond("Ready").reason == "InvalidSpec"


def test_unreadable_status_is_replaced_not_fatal() -> None:
    body = manifest()
    body["status"] = {"phase": "Bogus", "stages": "x"}
    d = reconcile(body, [], [], T0, SETTINGS)
    assert d.status.phase == Phase.CALIBRATING


def test_suspend_stops_new_jobs() -> None:
    w = World(manifest(suspend=True))
    d = w.step()
    assert created(d) == [] and w.status.phase == Phase.SUSPENDED
    assert w.cond("Ready").reason == "Suspended"
    w.body["spec"]["suspend"] = False
    w.body["metadata"]["generation"] = 2
    w.step()
    assert w.status.phase == Phase.CALIBRATING


def test_canary_phase_is_left_to_the_canary() -> None:
    w = World(manifest())
    w.run_to_evaluated()
    w.body["status"]["phase"] = "CanaryProgressing"
    d = w.step()
    assert d.facts.quantized and w.status.phase == Phase.CANARY
    assert d.events == () and created(d) == []


def test_stage_hash_chain() -> None:
    res, _ = validate_manifest(manifest())
    assert res is not None
    a = stage_hashes_for(res)
    res2, _ = validate_manifest(manifest(**{"gates__accuracy__evalSet": "pvc://p/eval.jsonl"}))
    assert res2 is not None
    b = stage_hashes_for(res2)
    assert [a[s] == b[s] for s in STAGES] == [True, True, True, True, False]
    res3, _ = validate_manifest(manifest(**{"hardware__target": "a100"}))
    assert res3 is not None
    c = stage_hashes_for(res3)
    assert a[Stage.CALIBRATE] == c[Stage.CALIBRATE] and a[Stage.SENSITIVITY] != c[
        Stage.SENSITIVITY]


@pytest.mark.parametrize("name", ["a" * 40])
def test_child_names_fit_in_63(name: str) -> None:
    for stage in STAGES:
        assert len(child_name(name, 10**12, stage)) <= 63


def test_replan_attempt_reruns_plan_export_evaluate_under_new_names() -> None:
    """The canary opens attempt 2 (phase Planning) after a failed gate."""
    w = World(manifest())
    w.run_to_evaluated()
    w.body["status"]["phase"] = "Planning"
    w.body["status"]["attempt"] = 2
    d = w.step()
    assert [(r.stage, r.state) for r in w.status.stages] == [
        ("calibrate", "Succeeded"), ("sensitivity", "Succeeded"), ("plan", "Running")]
    assert w.created[-1] == "llama-g1-a2-plan"
    assert w.invocations["llama-g1-a2-plan"].attempt == 2
    assert created(d)[0]["metadata"]["name"] == "llama-g1-a2-plan"
    for stage in ("plan", "export", "evaluate"):
        w.finish(stage)
        w.step()
    assert w.status.phase == Phase.EVALUATED and w.created[-1] == "llama-g1-a2-eval"


def test_pod_local_artifact_path_is_reported_as_its_uri() -> None:
    w = World(manifest())
    for stage in ("calibrate", "sensitivity", "plan"):
        w.step()
        w.finish(stage)
    w.step()
    w.finish("export", result=json.dumps({**SUMMARIES["export"],
                                          "artifactUri": "/mnt/pvc/artifacts/samp/x"}))
    w.step()
    assert w.status.artifact_uri is not None
    assert w.status.artifact_uri.startswith("pvc://artifacts/samp/ml/llama/artifact-")


def test_replan_closes_the_loop_with_a_conservative_plan_and_keeps_history() -> None:
    """Accuracy gate fails on attempt 1 → the canary opens attempt 2 → its plan Job derives
    a conservative plan from attempt 1's copy, export and evaluate rerun into a new
    artifact, and the history keeps both attempts' plan, accuracy and verdict."""
    from samp_core import canary

    body = manifest(**{"gates__accuracy__maxPerplexityIncreasePercent": 0.5,
                       "rollout__replan": {"enabled": True, "maxAttempts": 3,
                                           "maxBudgetIncreaseFraction": 0.2}})
    w = World(body)
    w.run_to_evaluated()
    res, _ = validate_manifest(body)
    assert res is not None
    plan1 = w.jobs["llama-g1-plan"]["manifest"]
    h1 = plan1["metadata"]["annotations"][ANNOTATION_INPUTS_HASH]
    inv1 = w.invocations["llama-g1-plan"]
    copy1 = inv1.paths.plan_copy
    assert copy1 is not None and copy1.endswith(f"/plans/{h1.removeprefix('sha256:')[:16]}.json")
    assert inv1.attempt == 1 and inv1.paths.previous_plan is None
    artifact1 = w.invocations["llama-g1-export"].paths.artifact

    # The canary machine: attempt 1 fails the accuracy gate (+1% > 0.5%) and re-plans.
    d = canary.decide(res.spec, w.status, canary.Observation(name="llama", generation=1),
                      w.now)
    assert any(isinstance(a, StartReplan) and a.attempt == 2 for a in d.actions)
    assert d.status.phase == Phase.PLANNING and d.status.attempt == 2
    w.body["status"] = d.status.to_wire()

    d2 = w.step()
    assert w.created[-1] == "llama-g1-a2-plan"
    assert [(r.stage, r.state, r.job) for r in w.status.stages] == [
        ("calibrate", "Succeeded", "llama-g1-cal"), ("sensitivity", "Succeeded", "llama-g1-sens"),
        ("plan", "Running", "llama-g1-a2-plan")]
    plan2 = w.jobs["llama-g1-a2-plan"]["manifest"]
    h2 = plan2["metadata"]["annotations"][ANNOTATION_INPUTS_HASH]
    assert h2 != h1 and h2 == stage_hashes_for(res, 2)[Stage.PLAN]
    assert plan2["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["samp", "plan"]
    inv2 = w.invocations["llama-g1-a2-plan"]
    assert inv2.attempt == 2 and inv2.inputs_hash == h2
    assert inv2.paths.previous_plan == copy1  # attempt 1's copy, in the shared work dir
    assert inv2.paths.plan_copy is not None and inv2.paths.plan_copy != copy1
    assert inv2.paths.workdir == inv1.paths.workdir
    assert created(d2)[0]["metadata"]["name"] == "llama-g1-a2-plan"
    assert w.status.plan is None and w.status.accuracy is None  # attempt 1's figures are gone
    assert "llama-g1-plan" not in w.jobs  # obsolete Jobs of attempt 1 are deleted

    # Attempt 2's plan is more conservative; it is exported and evaluated again.
    plan_sum = {**SUMMARIES["plan"], "totalBytes": 460, "fractionOf16Bit": 0.46,
                "effectiveBits": 7.36, "predictedLoss": 0.004,
                "byFormat": {"int4-w4a16": 5, "fp8-w8a8": 2, "bf16": 2}}
    w.finish("plan", result=json.dumps(plan_sum))
    w.step()
    assert w.created[-1] == "llama-g1-a2-export"
    export2 = w.invocations["llama-g1-a2-export"]
    artifact2 = export2.paths.artifact
    assert artifact2 != artifact1
    assert export2.paths.plan == inv2.paths.plan_copy  # exactly attempt 2's plan
    w.finish("export", result=json.dumps({**SUMMARIES["export"], "artifactUri": artifact2}))
    w.step()
    assert w.created[-1] == "llama-g1-a2-eval"
    w.finish("evaluate", result=json.dumps({**SUMMARIES["evaluate"], "perplexityQuant": 10.03}))
    d3 = w.step()
    assert d3.facts.quantized and w.status.phase == Phase.EVALUATED and w.status.attempt == 2
    assert w.status.plan is not None and w.status.plan.bytes_quantized == 460
    assert w.status.artifact_uri is not None
    assert artifact2.endswith(w.status.artifact_uri.removeprefix("pvc://"))

    # The canary takes attempt 2 (accuracy +0.3% passes) and starts serving its artifact.
    d4 = canary.decide(res.spec, w.status, canary.Observation(name="llama", generation=1),
                       w.now)
    assert d4.status.phase == Phase.CANARY
    ensure = next(a for a in d4.actions if isinstance(a, EnsureCanary))
    assert ensure.attempt == 2 and ensure.artifact_uri == w.status.artifact_uri
    hist = d4.status.history
    assert [(a.attempt, a.outcome) for a in hist] == [(1, "RolledBack"), (2, "Running")]
    assert hist[0].plan is not None and hist[0].plan.bytes_quantized == 400
    assert hist[0].accuracy is not None
    assert hist[0].accuracy.perplexity_increase_percent == pytest.approx(1.0)
    assert "perplexity" in hist[0].reason
    assert hist[1].plan is not None and hist[1].plan.bytes_quantized == 460
    assert hist[1].accuracy is not None
    assert hist[1].accuracy.perplexity_increase_percent == pytest.approx(0.3)
    assert hist[1].inputs_hash == w.status.inputs_hash != hist[0].inputs_hash


def test_replan_plan_failure_ends_the_attempt_in_history() -> None:
    """No group can be raised within the headroom: the plan Job exits 2 and fails."""
    from samp_core import canary

    body = manifest(**{"gates__accuracy__maxPerplexityIncreasePercent": 0.5,
                       "rollout__replan": {"enabled": True, "maxAttempts": 2}})
    w = World(body)
    w.run_to_evaluated()
    res, _ = validate_manifest(body)
    assert res is not None
    d = canary.decide(res.spec, w.status, canary.Observation(name="llama"), w.now)
    w.body["status"] = d.status.to_wire()
    w.step()
    w.fail("plan", reason="PodFailurePolicy",
           message="samp plan: re-plan attempt 2: no group of the previous plan can be raised")
    w.step()
    st = w.status
    assert st.phase == Phase.FAILED and st.attempt == 2
    assert [(a.attempt, a.outcome) for a in st.history] == [(1, "RolledBack"), (2, "Failed")]
    assert "no group of the previous plan can be raised" in st.history[1].reason
