"""The operator on the real control plane (etcd, kube-apiserver, controllers, KWOK).

Nothing is mocked: the operator is `samp operator run` under the RBAC-limited operator
identity; the real Job controller runs the Jobs' pods, KWOK plays the kubelet, and the
test plays the stage processes (see conftest.JobRuntime for how results reach the
termination message).
"""

from __future__ import annotations

import time
from typing import Any

from operator_harness import (
    OPERATOR_RULES,
    Api,
    JobRuntime,
    Operator,
    condition,
    qm_manifest,
    summary_for,
    wait_for,
)

STAGES = ["calibrate", "sensitivity", "plan", "export", "evaluate"]
SHORT = {"calibrate": "cal", "sensitivity": "sens", "plan": "plan", "export": "export",
         "evaluate": "eval"}


def hold(stage: str, runtime: JobRuntime) -> list[bool]:
    """Make the runtime keep ``stage`` pods running until the returned flag is set."""
    release = [False]

    def policy(pod: dict[str, Any]) -> Any:
        if pod["metadata"]["labels"].get("samp.dev/stage") == stage and not release[0]:
            return None
        return JobRuntime.succeed_all(pod)

    runtime.policy = policy
    return release


def test_happy_path_to_evaluated(operator_env: tuple[Operator, JobRuntime, Api],
                                 cluster: Any) -> None:
    op, _runtime, api = operator_env
    api.create_qm(qm_manifest("llama", api.ns))
    qm = api.wait_phase("llama", "Evaluated")
    st = qm["status"]
    assert st["observedGeneration"] == 1
    assert [(s["stage"], s["state"]) for s in st["stages"]] == [(s, "Succeeded") for s in STAGES]
    assert st["plan"]["effectiveBits"] == 6.4 and st["plan"]["memorySavedPercent"] == 60.0
    assert st["artifactUri"] == "pvc://artifacts/samp/llama/artifact"
    assert st["accuracy"]["perplexityIncreasePercent"] == 0.5
    for ctype in ("Calibrated", "Quantized", "Evaluated", "Ready"):
        c = condition(qm, ctype)
        assert c["status"] == "True" and c["observedGeneration"] == 1, c

    jobs = {j["metadata"]["name"]: j for j in api.jobs("llama")}
    assert sorted(jobs) == sorted(f"llama-g1-{SHORT[s]}" for s in STAGES)
    sens = jobs["llama-g1-sens"]
    assert sens["metadata"]["ownerReferences"][0]["uid"] == qm["metadata"]["uid"]
    pod = sens["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert sens["spec"]["backoffLimit"] == 0 and sens["spec"]["activeDeadlineSeconds"] == 7200
    # The Job pods really were scheduled onto the fake GPU node (nvidia.com/gpu request).
    assert api.pods("llama-g1-sens")[0]["spec"]["nodeName"] == "samp-gpu-h100-0"
    assert {cm["metadata"]["name"] for cm in api.config_maps("llama")} == set(jobs)

    reasons = api.reasons("llama")
    assert reasons.count("StageStarted") == 5 and reasons.count("StageSucceeded") == 5
    assert "Evaluated" in reasons
    table = cluster.kubectl("get", "qm", "llama", "-n", api.ns).stdout
    assert "Evaluated" in table and "h100" in table

    assert op.get("/healthz") == 200
    metrics = op.metrics()
    assert 'samp_quantizedmodels{phase="Evaluated"} 1.0' in metrics
    assert 'samp_stage_duration_seconds_count{stage="calibrate"} 1.0' in metrics
    assert "samp_reconciles_total" in metrics


def test_failing_job_is_retried_then_failed(operator_env: tuple[Operator, JobRuntime, Api]
                                            ) -> None:
    op, runtime, api = operator_env
    runtime.policy = lambda pod: ("fail", "RuntimeError: CUDA out of memory")
    api.create_qm(qm_manifest("oom", api.ns, hardware__retries=1))
    qm = api.wait_phase("oom", "Failed", timeout=120)
    ready = condition(qm, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "JobFailed"
    assert "BackoffLimitExceeded" in ready["message"]
    assert "CUDA out of memory" in ready["message"]
    assert condition(qm, "Calibrated")["status"] == "False"
    assert len(api.pods("oom-g1-cal")) == 2  # the first try and one retry
    events = api.events("oom")
    failed = [e for e in events if e["reason"] == "StageFailed"]
    assert failed and failed[0]["type"] == "Warning"
    assert "CUDA out of memory" in failed[0]["message"]
    retrying = [e for e in events if e["reason"] == "JobRetrying"]
    assert retrying and "CUDA out of memory" in retrying[0]["message"]
    assert [j["metadata"]["name"] for j in api.jobs("oom")] == ["oom-g1-cal"]
    metrics = op.metrics()
    assert 'samp_job_failures_total{reason="BackoffLimitExceeded",stage="calibrate"} 1.0' in \
        metrics


def test_operator_killed_mid_stage_restarts_without_duplicates(
        operator_env: tuple[Operator, JobRuntime, Api]) -> None:
    op, runtime, api = operator_env
    release = hold("sensitivity", runtime)
    api.create_qm(qm_manifest("crash", api.ns))
    api.wait_phase("crash", "Scoring")
    wait_for(lambda: api.pods("crash-g1-sens"), 30, "the sensitivity pod")
    op.kill()
    release[0] = True  # the stage finishes while the operator is down
    def sens_complete() -> bool:
        job = next(j for j in api.jobs("crash") if j["metadata"]["name"] == "crash-g1-sens")
        return any(c.get("type") == "Complete" and c.get("status") == "True"
                   for c in job.get("status", {}).get("conditions") or [])

    wait_for(sens_complete, 30, "the sensitivity Job to complete")
    op.start()
    qm = api.wait_phase("crash", "Evaluated")
    names = [j["metadata"]["name"] for j in api.jobs("crash")]
    assert sorted(names) == sorted(f"crash-g1-{SHORT[s]}" for s in STAGES)
    for name in names:
        assert len(api.pods(name)) == 1, name
    reasons = api.reasons("crash")
    assert reasons.count("StageStarted") == 5, reasons
    assert reasons.count("StageSucceeded") == 5, reasons
    assert qm["status"]["stages"][1]["state"] == "Succeeded"


def test_spec_change_mid_stage_restarts_from_first_changed_stage(
        operator_env: tuple[Operator, JobRuntime, Api]) -> None:
    _op, runtime, api = operator_env
    release = hold("sensitivity", runtime)
    api.create_qm(qm_manifest("moving", api.ns))
    api.wait_phase("moving", "Scoring")
    wait_for(lambda: api.pods("moving-g1-sens"), 30, "the sensitivity pod")
    # Calibration input changes: calibrate and everything after it is obsolete.
    api.patch_spec("moving", {"calibration": {"samples": 256}})
    wait_for(lambda: {j["metadata"]["name"] for j in api.jobs("moving")
                      if not j["metadata"].get("deletionTimestamp")} == {"moving-g2-cal"} or
             False, 30, "obsolete g1 Jobs deleted and g2 calibration created")
    release[0] = True
    qm = api.wait_phase("moving", "Evaluated")
    assert qm["status"]["observedGeneration"] == 2
    assert condition(qm, "Ready")["observedGeneration"] == 2
    assert {j["metadata"]["name"] for j in api.jobs("moving")} == {
        f"moving-g2-{SHORT[s]}" for s in STAGES}

    # A new budget: calibration and sensitivity are reused, plan onward reruns.
    api.patch_spec("moving", {"quantization": {"budget": {"fractionOf16Bit": 0.3}}})
    wait_for(lambda: (api.qm("moving") or {}).get("status", {}).get("observedGeneration") == 3
             and api.phase("moving") == "Evaluated", 60, "generation 3 evaluated")
    qm = api.qm("moving")
    assert qm is not None
    assert [(s["stage"], s["state"]) for s in qm["status"]["stages"]] == [
        ("calibrate", "Reused"), ("sensitivity", "Reused"), ("plan", "Succeeded"),
        ("export", "Succeeded"), ("evaluate", "Succeeded")]
    names = {j["metadata"]["name"] for j in api.jobs("moving")}
    assert names == {"moving-g2-cal", "moving-g2-sens", "moving-g3-plan", "moving-g3-export",
                     "moving-g3-eval"}
    assert api.reasons("moving").count("StageReused") == 2


def test_deletion_without_artifact_cleanup(operator_env: tuple[Operator, JobRuntime, Api]
                                           ) -> None:
    _op, runtime, api = operator_env
    hold("sensitivity", runtime)
    api.create_qm(qm_manifest("gone", api.ns))
    api.wait_phase("gone", "Scoring")
    qm = api.qm("gone")
    assert qm is not None and "samp.dev/cleanup" in qm["metadata"]["finalizers"]
    api.delete_qm("gone")
    wait_for(lambda: api.qm("gone") is None, 30, "the QuantizedModel to be deleted")
    wait_for(lambda: not [j for j in api.jobs("gone")
                          if not j["metadata"].get("deletionTimestamp")], 30, "Jobs deleted")
    wait_for(lambda: not api.config_maps("gone"), 30, "ConfigMaps deleted")
    assert not any(j["metadata"]["name"] == "gone-cleanup" for j in api.jobs())
    assert "ArtifactCleanupStarted" not in api.reasons("gone")


def test_deletion_with_artifact_cleanup(operator_env: tuple[Operator, JobRuntime, Api]
                                        ) -> None:
    _op, runtime, api = operator_env
    api.create_qm(qm_manifest("tidy", api.ns, artifacts__cleanupOnDelete=True))
    api.wait_phase("tidy", "Evaluated")
    seen: list[dict[str, Any]] = []

    def policy(pod: dict[str, Any]) -> Any:
        if pod["metadata"]["labels"].get("samp.dev/stage") == "cleanup":
            seen.append(pod)
        return JobRuntime.succeed_all(pod)

    runtime.policy = policy
    api.delete_qm("tidy")
    wait_for(lambda: api.qm("tidy") is None, 60, "the QuantizedModel to be deleted")
    assert seen, "the artifact cleanup Job never ran"
    c = seen[0]["spec"]["containers"][0]
    assert c["command"][-1] == "/mnt/pvc/artifacts/samp/" + api.ns + "/tidy"
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/mnt/pvc/artifacts")
    assert not mount.get("readOnly")  # the artifact claim is the one writable volume
    reasons = api.reasons("tidy")
    assert "ArtifactCleanupStarted" in reasons and "ArtifactsDeleted" in reasons


def test_invalid_spec_is_reported_not_crashed_on(
        operator_env: tuple[Operator, JobRuntime, Api]) -> None:
    op, _runtime, api = operator_env
    # The CRD schema cannot check that a regex compiles; the operator's Python rules do.
    bad = qm_manifest("bad", api.ns,
                      quantization__overrides=[{"match": "model.layers.([0-9", "format": "bf16"}])
    api.create_qm(bad)
    qm = api.wait_phase("bad", "Failed")
    ready = condition(qm, "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert "spec.quantization.overrides[0].match" in ready["message"]
    ev = [e for e in api.events("bad") if e["reason"] == "InvalidSpec"]
    assert len(ev) == 1 and ev[0]["type"] == "Warning"
    assert api.jobs("bad") == []
    assert op.proc is not None and op.proc.poll() is None
    # Fixed: it proceeds.
    api.patch_spec("bad", {"quantization": {"overrides": [{"match": "lm_head",
                                                           "keepUnquantized": True}]}})
    api.wait_phase("bad", "Evaluated")


def test_twenty_quantized_models_at_once(operator_env: tuple[Operator, JobRuntime, Api]
                                         ) -> None:
    op, _runtime, api = operator_env
    names = [f"fleet-{i:02d}" for i in range(20)]
    t0 = time.monotonic()
    for name in names:
        api.create_qm(qm_manifest(name, api.ns))

    def all_evaluated() -> Any:
        items = api.items(f"/apis/samp.dev/v1alpha1/namespaces/{api.ns}/quantizedmodels")
        phases = [i.get("status", {}).get("phase") for i in items]
        return phases.count("Evaluated") == 20 or False

    wait_for(all_evaluated, 300, "20 QuantizedModels to reach Evaluated", interval=1)
    elapsed = time.monotonic() - t0
    jobs = api.jobs()
    assert len(jobs) == 100 and len({j["metadata"]["name"] for j in jobs}) == 100
    print(f"20 QuantizedModels evaluated in {elapsed:.1f} s")
    assert 'samp_quantizedmodels{phase="Evaluated"} 20.0' in op.metrics()
    assert summary_for("plan")  # the transport format stayed the real one


def test_deletion_never_blocks_forever_when_the_api_refuses(
        operator_env: tuple[Operator, JobRuntime, Api], operator_rbac: Any) -> None:
    """The operator may no longer delete Jobs: cleanup retries, then gives up with a Warning
    after --finalizer-timeout-seconds (30 s here) and releases the finalizer."""
    _op, runtime, api = operator_env
    hold("calibrate", runtime)
    api.create_qm(qm_manifest("stuck", api.ns))
    api.wait_phase("stuck", "Calibrating")
    wait_for(lambda: api.jobs("stuck"), 30, "the calibration Job")
    operator_rbac([r if r["resources"] != ["jobs"] else {**r, "verbs": ["get", "list", "watch"]}
                   for r in OPERATOR_RULES])
    time.sleep(2)
    t0 = time.monotonic()
    api.delete_qm("stuck")
    wait_for(lambda: api.qm("stuck") is None, 90, "the finalizer to be released")
    assert time.monotonic() - t0 >= 25
    warning = [e for e in api.events("stuck") if e["reason"] == "CleanupIncomplete"]
    assert warning and warning[0]["type"] == "Warning" and "HTTP 403" in warning[0]["message"]


def test_job_the_api_server_refuses_is_reported(operator_env: tuple[Operator, JobRuntime, Api]
                                                ) -> None:
    """A spec the CRD accepts but the Job API rejects (a CPU request above its limit, which
    only the pod template's validation checks): a Warning Event quotes the API server, and
    the operator keeps running."""
    op, _runtime, api = operator_env
    api.create_qm(qm_manifest("picky", api.ns, hardware__resources={
        "requests": {"cpu": "2"}, "limits": {"cpu": "1"}}))

    def refused() -> Any:
        return [e for e in api.events("picky") if e["reason"] == "CreateFailed"]

    events = wait_for(refused, 30, "a CreateFailed Event")
    assert events[0]["type"] == "Warning" and "picky-g1-cal" in events[0]["message"]
    assert "must be less than or equal to cpu limit" in events[0]["message"]
    assert op.proc is not None and op.proc.poll() is None
    api.patch_spec("picky", {"hardware": {"resources": {"limits": {"cpu": "2"}}}})
    wait_for(lambda: api.jobs("picky"), 30, "the Job once the spec is fixed")
