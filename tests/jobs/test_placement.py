"""Memory placement for sensitivity scoring, with the real sizes of the models users run."""

from __future__ import annotations

import pytest

from samp_jobs.placement import GIB, plan_memory

H200 = int(139 * GIB * 0.9)
TOKENS = 4 * 2048  # one micro-batch
MB_262K = 262_144 // TOKENS  # 128 x 2048 calibration tokens


def llama(hidden: int, layers: int, params_b: float, working_gib: float, mbs: int = MB_262K):
    return {
        "model_bytes": int(params_b * 1e9 * 2),
        "layer_bytes": int(params_b * 1e9 * 2 / layers * 0.9),
        "working_bytes": int(working_gib * GIB),
        "state_bytes_per_micro_batch": TOKENS * hidden * 2,
        "num_micro_batches": mbs,
        "num_boundaries": layers + 1,
    }


def test_8b_on_an_h200_keeps_everything_on_the_gpu_in_one_pass() -> None:
    p = plan_memory(
        accelerator=True, device_budget=H200, host_budget=100 * GIB, **llama(4096, 32, 8.03, 12)
    )
    assert (p.resident_weights, p.boundaries_on_device, p.num_chunks) == (True, True, 1)


def test_70b_streams_weights_and_chunks_the_tokens() -> None:
    p = plan_memory(
        accelerator=True, device_budget=H200, host_budget=100 * GIB, **llama(8192, 80, 70.6, 20)
    )
    assert not p.resident_weights and p.boundaries_on_device
    # 81 boundaries x 134 MB per micro-batch: about 9 micro-batches per pass fit
    assert 7 <= p.micro_batches_per_chunk <= 10
    assert p.num_chunks == -(-MB_262K // p.micro_batches_per_chunk)


def test_states_fall_back_to_host_memory_when_the_device_is_small() -> None:
    p = plan_memory(
        accelerator=True, device_budget=8 * GIB, host_budget=100 * GIB, **llama(4096, 32, 8.03, 6)
    )
    assert not p.boundaries_on_device and p.micro_batches_per_chunk >= 1
    assert "host memory" in p.reason


def test_a_cap_on_micro_batches_splits_into_chunks() -> None:
    p = plan_memory(
        accelerator=False,
        device_budget=0,
        host_budget=100 * GIB,
        max_micro_batches_per_chunk=5,
        **llama(64, 2, 0.001, 0, mbs=12),
    )
    assert (p.micro_batches_per_chunk, p.num_chunks) == (5, 3)


def test_nothing_fits_says_what_to_change() -> None:
    with pytest.raises(MemoryError, match="micro-batch size or calibration sequence length"):
        plan_memory(
            accelerator=True, device_budget=4 * GIB, host_budget=2 * GIB, **llama(8192, 80, 70.6, 2)
        )


def test_no_tokens_is_an_error() -> None:
    with pytest.raises(ValueError, match="no calibration"):
        plan_memory(
            accelerator=False, device_budget=0, host_budget=GIB, **llama(64, 2, 0.001, 0, mbs=0)
        )
