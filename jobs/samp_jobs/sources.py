"""Where a Job finds its model: a mounted path, or a Hugging Face hub snapshot.

The operator's Jobs get mounted paths in their invocation (samp_core.stage_jobs); a local
run from a manifest (samp_jobs.invocation) finds ``pvc://claim/path`` sources under
``$SAMP_MODEL_ROOT`` / ``$SAMP_DATA_ROOT``.
``hf://org/name@revision`` sources are downloaded with huggingface_hub (the token comes
from ``HF_TOKEN`` in the Secret named by spec.model.secretRef) into a cache beside the
work directory, on the artifact volume, so the stages of one QuantizedModel download the
weights once, not once per pod.
"""

from __future__ import annotations

import os
from pathlib import Path

from samp_jobs.modeling import ModelLoadError

# Weights in safetensors plus what a tokenizer and config need; skips duplicate .bin/.pth.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]


def parse_hub_uri(uri: str) -> tuple[str, str | None]:
    """``hf://org/name@rev`` -> (``org/name``, ``rev``); the revision is optional."""
    repo, _, revision = uri.removeprefix("hf://").partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ModelLoadError(f"{uri!r} is not hf://org/name[@revision]")
    return repo, revision or None


def hub_cache_dir(workdir: Path) -> Path:
    return Path(os.environ.get("SAMP_HF_CACHE") or workdir.parent / "hf-cache")


def mounted_path(uri: str, env: str, default_root: str) -> str:
    """Where the operator mounts a ``pvc://claim/path`` source (root from ``env``).

    The spec refuses '..' segments; this checks again (lexically: links inside the volume
    are the volume owner's business), so no '..' that reached the Job leaves its volume."""
    if uri.startswith("pvc://"):
        root = Path(os.path.normpath(os.environ.get(env, default_root)))
        path = Path(os.path.normpath(root / uri.removeprefix("pvc://")))
        if not path.is_relative_to(root):
            raise ModelLoadError(
                f"{uri!r} resolves to {path}, outside its volume {root}; "
                "write a path inside the claim, without '..'"
            )
        return str(path)
    return uri


def resolve_prompts(uri: str) -> str:
    """A local path for the calibration or evaluation JSONL."""
    return mounted_path(uri, "SAMP_DATA_ROOT", "/data")


def mounted_model(uri: str) -> str | None:
    """The local directory of a mounted (or local) model; None for a hub model."""
    return None if uri.startswith("hf://") else mounted_path(uri, "SAMP_MODEL_ROOT", "/models")


def resolve_model(uri: str, workdir: Path) -> str:
    """A local directory holding the model named by ``uri`` (a hub model is downloaded)."""
    local = mounted_model(uri)
    if local is not None:
        return local
    repo, revision = parse_hub_uri(uri)
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(
            repo_id=repo, revision=revision, cache_dir=hub_cache_dir(workdir),
            allow_patterns=HUB_PATTERNS, token=os.environ.get("HF_TOKEN") or None,
        ))
    except Exception as err:  # network, auth, missing revision: one clear message
        raise ModelLoadError(
            f"cannot fetch {uri} from the Hugging Face hub ({type(err).__name__}: {err}); "
            "check the HF_TOKEN in spec.model.secretRef, the revision and the cluster's "
            "egress, or copy the model to a PVC and use pvc://claim/path"
        ) from err
