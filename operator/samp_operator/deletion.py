"""Deletion of a QuantizedModel (Kopf's finalizer ``samp.dev/cleanup``): the canary
released, the stage Jobs and ConfigMaps deleted, the artifacts cleaned up when asked.

:meth:`Deletion.finalize` raises kopf.TemporaryError to be called again while something
is still to wait for; samp_operator.engine.Engine.finalize runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from samp_core.stage_jobs import JobSettings, cleanup_job_manifest, cleanup_supported
from samp_core.stage_layout import cleanup_job_name, selector
from samp_core.validation import validate_manifest
from samp_operator.api_errors import brief
from samp_operator.canary_kube import KubeCanary
from samp_operator.kube import Kube
from samp_operator.metrics import Metrics
from samp_operator.observe import job_record

CLEANUP_POLL_SECONDS = 3.0
FINALIZER_RETRY_SECONDS = 10.0

PostEvent = Callable[[Mapping[str, Any], str, str, str], None]  # body, type, reason, message


@dataclass
class Deletion:
    """The finalizer's work, with the engine's API access, canary stage and metrics."""

    kube: Kube
    canary: KubeCanary | None
    metrics: Metrics
    timeout_seconds: float  # --finalizer-timeout-seconds
    job_settings: JobSettings
    post_event: PostEvent

    def finalize(self, body: Mapping[str, Any], elapsed: float, first_attempt: bool) -> None:
        """Clean up before the finalizer goes; raises kopf.TemporaryError to come back.

        First the canary's traffic goes back to the stable and the canary is removed once
        the stable serves on its own (replica-ratio mode scales the stable up first).
        Then it deletes the stage Jobs and ConfigMaps and, when spec.artifacts.cleanupOnDelete,
        runs the artifact cleanup Job and waits for it. After ``timeout_seconds`` it stops
        waiting: a Warning Event says what may be left, and it returns so the finalizer is
        released (never blocks deletion forever).
        """
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        give_up = elapsed >= self.timeout_seconds
        manifest = {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")}
        resource, _problems = validate_manifest(manifest)
        try:
            if self.canary is not None and resource is not None and not give_up \
                    and not self.canary.release(resource.spec, meta):
                # The canary goes with the QuantizedModel (owner references): first the
                # stable serves the traffic on its own again.
                raise kopf.TemporaryError("waiting for the stable to serve again before the "
                                          "canary goes", delay=CLEANUP_POLL_SECONDS)
            for job in self.kube.list_names("Job", namespace, selector(name)):
                if job != cleanup_job_name(name):
                    self.kube.delete("Job", namespace, job)
            for cm in self.kube.list_names("ConfigMap", namespace, selector(name)):
                self.kube.delete("ConfigMap", namespace, cm)
            if resource is not None and resource.spec.artifacts.cleanup_on_delete:
                prefix = f"{resource.spec.artifacts.uri.rstrip('/')}/{namespace}/{name}"
                if not cleanup_supported(resource):
                    if first_attempt:
                        self.post_event(body, "Warning", "ArtifactCleanupUnsupported",
                                        f"artifacts under {prefix} are in an object store; "
                                        "delete them with a bucket lifecycle rule")
                else:
                    self._cleanup_artifacts(body, resource, prefix, give_up)
        except kopf.TemporaryError:
            raise
        except Exception as err:
            if give_up:
                self.post_event(body, "Warning", "CleanupIncomplete",
                                f"gave up cleaning up after {elapsed:.0f} s ({brief(err)}); "
                                "owner references still let the garbage collector remove "
                                "the Jobs")
                return
            self.metrics.reconcile_errors.labels(type(err).__name__).inc()
            raise kopf.TemporaryError(f"cleanup failed: {brief(err)}",
                                      delay=FINALIZER_RETRY_SECONDS) from err

    def _cleanup_artifacts(self, body: Mapping[str, Any], resource: Any, prefix: str,
                           give_up: bool) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        job = self.kube.get("Job", namespace, cleanup_job_name(name))
        if job is None:
            self.kube.create(cleanup_job_manifest(resource, str(meta.get("uid", "")),
                                                  self.job_settings))
            self.post_event(body, "Normal", "ArtifactCleanupStarted",
                            f"deleting artifacts under {prefix}")
            raise kopf.TemporaryError("waiting for the artifact cleanup Job",
                                      delay=CLEANUP_POLL_SECONDS)
        rec = job_record(job)
        if rec["state"] == "Running":
            if give_up:
                self.post_event(body, "Warning", "ArtifactCleanupTimedOut",
                                f"cleanup Job {rec['name']} did not finish; artifacts under "
                                f"{prefix} may remain")
                return
            raise kopf.TemporaryError("waiting for the artifact cleanup Job",
                                      delay=CLEANUP_POLL_SECONDS)
        if rec["state"] == "Failed":
            self.post_event(body, "Warning", "ArtifactCleanupFailed",
                            f"cleanup Job {rec['name']} failed ({rec['reason']}); artifacts "
                            f"under {prefix} may remain")
        else:
            self.post_event(body, "Normal", "ArtifactsDeleted", f"deleted {prefix}")
