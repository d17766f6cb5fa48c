"""``spec.serving``: how vLLM serves the quantized model, and the stable target it replaces."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from samp_core.schema_base import ApiModel, Rule
from samp_core.spec.common import DNS_LABEL_PATTERN, IMAGE_PATTERN, SERVED_MODEL_NAME_PATTERN
from samp_core.spec.hardware import Resources

# vLLM flags the operator sets itself, and the field that controls each. vLLM reads '_' as
# '-' and argparse takes an unambiguous prefix, so '--served_model' is '--served-model-name'.
OPERATOR_FLAGS = {
    "--model": "spec.artifacts.uri (the operator serves the exported checkpoint)",
    "--served-model-name": "spec.serving.servedModelName",
    "--host": "the operator (it binds 0.0.0.0 for the Service and probes)",
    "--port": "spec.serving.port",
    "--trust-remote-code": "spec.model.trustRemoteCode",
    "--quantization": "spec.quantization.exportFormat",
    "--load-format": "spec.artifacts.uri (s3:// and gs:// stream with runai_streamer)",
}
SHORT_FLAGS = {"-q": "--quantization"}


def owned_flag(arg: str) -> str | None:
    """The operator-owned flag ``arg`` sets (exactly, abbreviated or with =value), if any."""
    name = arg.split("=", 1)[0]
    if name in SHORT_FLAGS:
        return SHORT_FLAGS[name]
    name = name.replace("_", "-")
    if not arg.startswith("--") or len(name) < 3:
        return None
    return next((flag for flag in OPERATOR_FLAGS if flag.startswith(name)), None)


def _owned_flag_rule(flag: str, field: str) -> Rule:
    short = [s for s, long in SHORT_FLAGS.items() if long == flag]
    cel_short = "".join(f" && a.split('=')[0] != '{s}'" for s in short)
    return Rule(
        cel="!has(self.extraArgs) || self.extraArgs.all(a, (!a.startsWith('--') || "
        "size(a.split('=')[0]) < 3 || "
        f"!'{flag}'.startsWith(a.split('=')[0].replace('_', '-'))){cel_short})",
        message=f"serving.extraArgs sets {flag}, which the operator sets from {field}; "
        "drop the flag (and set that field instead)",
        holds=lambda s: all(owned_flag(a) != flag for a in s.extra_args),
        field_path=".extraArgs",
    )


StableManagement = Literal["OperatorOwned", "PatchInPlace"]


class StableTarget(ApiModel):
    """The serving Deployment the canary is compared against and replaces on promotion."""

    deployment: str = Field(
        pattern=DNS_LABEL_PATTERN, max_length=63, description="Name of the stable Deployment."
    )
    service: str = Field(
        pattern=DNS_LABEL_PATTERN, max_length=63, description="Name of the stable Service."
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=SERVED_MODEL_NAME_PATTERN,
        description="model_name label of the stable vLLM series in Prometheus: letters, "
        "digits and . _ : / - (it reaches PromQL label matchers).",
    )
    management: StableManagement = Field(
        default="OperatorOwned",
        description="Who owns the stable Deployment, i.e. how promotion (promotionStrategy "
        "UpdateStable) changes it. OperatorOwned: the operator server-side applies the "
        "whole serving Deployment under its own field manager (samp-operator) and owns it "
        "(ownerReference to this QuantizedModel), creating it when missing; keep it out of "
        "Git (keep the QuantizedModel, Service and HTTPRoute there) and nothing in Git "
        "drifts. PatchInPlace: a user-owned Deployment (e.g. in Git) is merge-patched "
        "(image, args, volumes); under Argo CD self-heal that reverts the promotion unless "
        "the Application ignores samp-operator's fields (managedFieldsManagers with "
        "RespectIgnoreDifferences=true). See the README, 'GitOps layouts'.",
    )


class VllmSecurityContext(ApiModel):
    """The vLLM container's securityContext. The defaults pass Pod Security "restricted";
    turn a field off only where the image needs it (the vllm/vllm-openai image runs as
    root: give it a runAsUser, or set runAsNonRoot: false)."""

    rules = (
        Rule(
            cel="!self.runAsNonRoot || !has(self.runAsUser) || self.runAsUser != 0",
            message="serving.securityContext.runAsUser 0 is root, which runAsNonRoot "
            "refuses; set runAsNonRoot: false to run as root",
            holds=lambda c: not c.run_as_non_root or c.run_as_user != 0,
            field_path=".runAsUser",
        ),
    )

    run_as_non_root: bool = Field(default=True, description="The container may not run as root.")
    run_as_user: int | None = Field(
        default=None, ge=0, le=2_147_483_647, description="UID to run as; the image's when unset."
    )
    run_as_group: int | None = Field(
        default=None, ge=0, le=2_147_483_647, description="GID to run as; the image's when unset."
    )
    allow_privilege_escalation: bool = Field(
        default=False, description="Let a process gain more privileges than its parent."
    )
    drop_all_capabilities: bool = Field(
        default=True, description="Drop every Linux capability (capabilities.drop: [ALL])."
    )
    seccomp_profile: Literal["RuntimeDefault", "Unconfined"] = Field(
        default="RuntimeDefault", description="seccompProfile.type of the container."
    )


class ServingSpec(ApiModel):
    """How vLLM serves the quantized model."""

    rules = tuple(_owned_flag_rule(flag, field) for flag, field in OPERATOR_FLAGS.items())

    image: str = Field(
        default="vllm/vllm-openai:v0.32.0",
        max_length=512,
        pattern=IMAGE_PATTERN,
        description="vLLM image: [registry[:port]/]path[:tag][@sha256:digest].",
    )
    extra_args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=64,
        description="Extra vLLM server arguments. Flags the operator sets (--model, "
        "--served-model-name, --host, --port, --trust-remote-code, --quantization, "
        "--load-format) are refused: set their fields instead.",
    )
    replicas: int = Field(default=1, ge=1, le=1000, description="Replicas after promotion.")
    port: int = Field(default=8000, ge=1, le=65535, description="vLLM HTTP port.")
    served_model_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=SERVED_MODEL_NAME_PATTERN,
        description="Name clients use (letters, digits and . _ : / -); the canary is served "
        "as <name>-canary so its Prometheus series are separable. Defaults to the resource "
        "name.",
    )
    resources: Resources = Field(
        default_factory=Resources, description="Resources of each vLLM pod."
    )
    stable: StableTarget | None = Field(
        default=None,
        description="Existing stable serving target. Without it the canary is compared "
        "against absolute ceilings only (gates.latency.p99MaxSeconds is then required) and "
        "promotion creates the stable Deployment.",
    )
    security_context: VllmSecurityContext = Field(
        default_factory=VllmSecurityContext,
        description="securityContext of the vLLM container; Pod Security 'restricted' by "
        "default.",
    )
    automount_service_account_token: bool = Field(
        default=False,
        description="Mount the service-account token into the vLLM pods (vLLM never "
        "calls the Kubernetes API).",
    )
