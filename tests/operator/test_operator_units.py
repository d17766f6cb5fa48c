"""The operator's adapters without a cluster: observation, merge patches, settings, metrics."""

from __future__ import annotations

import argparse
import json
import urllib.request

import pytest
from operator_harness import free_port, summary_for

from samp_operator.kube import merge_patch
from samp_operator.metrics import Metrics
from samp_operator.observe import job_record, observed_job, pod_record
from samp_operator.settings import add_arguments, from_env_and_args

JOB = {
    "metadata": {
        "name": "m-g1-cal",
        "labels": {"samp.dev/quantizedmodel": "m", "samp.dev/stage": "calibrate",
                   "samp.dev/generation": "1"},
        "annotations": {"samp.dev/inputs-hash": "sha256:abc"},
    },
    "status": {"startTime": "2026-01-01T00:00:00Z", "failed": 1,
               "conditions": [{"type": "Failed", "status": "True",
                               "reason": "BackoffLimitExceeded",
                               "message": "Job has reached the specified backoff limit",
                               "lastTransitionTime": "2026-01-01T00:05:00Z"}]},
}


def pod(phase: str, message: str, exit_code: int = 0, finished: str = "") -> dict[str, object]:
    return {"metadata": {"name": f"p-{phase}-{exit_code}"},
            "status": {"phase": phase, "containerStatuses": [{
                "name": "samp", "state": {"terminated": {
                    "exitCode": exit_code, "reason": "Error" if exit_code else "Completed",
                    "message": message, "finishedAt": finished}}}]}}


def test_failed_job_carries_reason_and_last_pod_message() -> None:
    rec = job_record(JOB)
    assert rec["state"] == "Failed" and rec["reason"] == "BackoffLimitExceeded"
    pods = [pod_record(pod("Failed", "first", 1, "2026-01-01T00:01:00Z")),
            pod_record(pod("Failed", "CUDA out of memory", 1, "2026-01-01T00:04:00Z"))]
    obs = observed_job(rec, pods)
    assert obs.state == "Failed" and obs.failed_pods == 2
    assert obs.message.endswith("CUDA out of memory")
    assert obs.finished_at is not None and obs.finished_at.minute == 5
    assert obs.inputs_hash == "sha256:abc" and obs.generation == 1


def test_succeeded_job_result_is_the_termination_message() -> None:
    done = json.loads(json.dumps(JOB))
    done["status"] = {"startTime": "2026-01-01T00:00:00Z",
                      "completionTime": "2026-01-01T00:02:00Z",
                      "conditions": [{"type": "Complete", "status": "True"}]}
    message = summary_for("plan")
    obs = observed_job(job_record(done), [pod_record(pod("Succeeded", message))])
    assert obs.state == "Succeeded" and obs.result == message


def test_crash_without_message_says_exit_code() -> None:
    obs = observed_job(job_record(JOB), [pod_record(pod("Failed", "", 137))])
    assert "exit code 137" in obs.message


def test_merge_patch_nulls_removed_fields_and_skips_unchanged() -> None:
    old = {"phase": "Planning", "plan": {"a": 1, "b": 2}, "stages": [1], "x": 1}
    new = {"phase": "Planning", "plan": {"a": 1}, "stages": [1, 2]}
    assert merge_patch(old, new) == {"plan": {"b": None}, "stages": [1, 2], "x": None}
    assert merge_patch(new, new) is None


def test_settings_flags_beat_environment() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    env = {"SAMP_NAMESPACES": "a, b", "SAMP_JOB_IMAGE": "img:env", "SAMP_JOB_TTL_SECONDS": "60",
           "SAMP_JOB_POD_ANNOTATIONS": "x=1,y=2", "SAMP_CANARY": "false"}
    s = from_env_and_args(parser.parse_args(["--job-image", "img:flag"]), env)
    assert s.namespaces == ("a", "b") and not s.clusterwide
    assert s.job_image == "img:flag" and s.job_ttl_seconds == 60
    assert s.job_pod_annotations == {"x": "1", "y": "2"} and s.canary is False
    js = s.job_settings()
    assert js.default_image == "img:flag" and js.ttl_seconds_after_finished == 60
    assert from_env_and_args(parser.parse_args([]), {}).clusterwide


@pytest.mark.parametrize(("env", "word"), [({"SAMP_JOB_TTL_SECONDS": "soon"}, "TTL"),
                                          ({"SAMP_JOB_POD_LABELS": "novalue"}, "POD_LABELS"),
                                          ({"SAMP_WORKERS": "-1"}, "WORKERS")])
def test_bad_settings_name_the_variable(env: dict[str, str], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        from_env_and_args(None, env)


def test_metrics_endpoint_health_and_phase_gauge() -> None:
    m = Metrics()
    m.set_phase(("ns", "a"), "Calibrating")
    m.set_phase(("ns", "b"), "Calibrating")
    m.set_phase(("ns", "a"), "Evaluated")
    m.set_phase(("ns", "b"), None)
    port = free_port()
    server = m.serve("127.0.0.1", port)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert 'samp_quantizedmodels{phase="Evaluated"} 1.0' in text
        assert 'samp_quantizedmodels{phase="Calibrating"} 0.0' in text
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").status == 200
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz")
        m.ready = True
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz").status == 200
    finally:
        server.shutdown()


def test_peering_identity_needs_no_passwd_entry(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The chart runs the operator as uid 65532, which no slim image lists in /etc/passwd:
    Kopf's default identity (getpass.getuser) raised there and the pod crash-looped."""
    import getpass
    import socket

    from samp_operator.main import peering_identity

    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_user)
    first = peering_identity()
    assert first.startswith(socket.gethostname() + "/")  # the pod name, as peers see it
