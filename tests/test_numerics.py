"""One-shot math at full float32 precision whatever the process chose for its matmuls, and the
Hessian preparation's memory off the CPU (its out-of-place path, run here on the CPU)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from unittest import mock

import pytest
import torch

from pytorch_pruner._numerics import _matmul_backends, full_fp32_matmul
from pytorch_pruner.criteria import HessianStats
from pytorch_pruner.oneshot import sparsegpt as sg
from pytorch_pruner.patterns import parse_pattern

needs_new_api = pytest.mark.skipif(not _matmul_backends(), reason="per-backend fp32_precision needs PyTorch 2.9+")


def _settings() -> tuple[str, ...]:
    return tuple(b.fp32_precision for b in _matmul_backends())  # type: ignore[attr-defined]


@pytest.fixture
def fast_matmuls() -> Iterator[None]:
    """The process lets float32 matmuls run in bfloat16 on the CPU (TF32 on a GPU), as Lightning
    suggests for speed; set back after the test."""
    torch.set_float32_matmul_precision("medium")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision("highest")


def _spy_addmm() -> tuple[list[tuple[str, ...]], object]:
    seen: list[tuple[str, ...]] = []
    real = torch.Tensor.addmm_

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(_settings())
        return real(self, *args, **kwargs)

    return seen, spy


@needs_new_api
@pytest.mark.parametrize("setting", ["default", "high", "medium", "cuda tf32"])
def test_full_precision_inside_and_every_setting_as_it_was_after(setting: str) -> None:
    try:
        if setting in ("high", "medium"):
            torch.set_float32_matmul_precision(setting)
        elif setting == "cuda tf32":
            torch.backends.cuda.matmul.fp32_precision = "tf32"
        before = _settings()
        with full_fp32_matmul():
            assert _settings() == ("ieee",) * len(before)
        assert _settings() == before
        if setting != "cuda tf32":  # the legacy reading still works and reads the same
            assert torch.get_float32_matmul_precision() == ("highest" if setting == "default" else setting)
    finally:
        torch.backends.cuda.matmul.fp32_precision = "none"
        torch.set_float32_matmul_precision("highest")


@needs_new_api
def test_hessian_sums_at_full_precision_in_a_process_that_allows_bf16(fast_matmuls: None) -> None:
    torch.manual_seed(0)
    x = torch.randn(2048, 256)
    seen, spy = _spy_addmm()
    stats = HessianStats(256, torch.device("cpu"))
    with mock.patch.object(torch.Tensor, "addmm_", spy):
        stats.update_(x)
    assert seen and all(s == ("ieee",) * len(s) for s in seen)
    assert torch.get_float32_matmul_precision() == "medium"  # the process's choice is back
    torch.set_float32_matmul_precision("highest")
    exact = HessianStats(256, torch.device("cpu"))
    exact.update_(x)
    assert torch.equal(stats.h, exact.h)  # the same bits as in a full-precision process


@needs_new_api
def test_sparsegpt_error_feedback_at_full_precision_in_a_process_that_allows_bf16(fast_matmuls: None) -> None:
    torch.manual_seed(1)
    w = torch.randn(64, 256)
    x = torch.randn(512, 256)
    hessian = 2 * x.t() @ x / x.shape[0]
    seen, spy = _spy_addmm()
    with mock.patch.object(torch.Tensor, "addmm_", spy):
        fast, keep_fast = sg.sparsegpt_(w, hessian, 0.5, parse_pattern("1x1"), block_size=64)
    assert seen and all(s == ("ieee",) * len(s) for s in seen)
    torch.set_float32_matmul_precision("highest")
    exact, keep = sg.sparsegpt_(w, hessian, 0.5, parse_pattern("1x1"), block_size=64)
    assert torch.equal(keep_fast, keep) and torch.equal(fast, exact)


def test_hessian_prepared_out_of_place_equals_in_place_and_frees_the_handed_over_matrix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The path GPUs take (each step allocates its result), run on the CPU: the same factor as the
    in-place path, and the caller's H is freed after the first factorisation (two matrices at a
    time, not three)."""
    torch.manual_seed(2)
    x = torch.randn(400, 96)
    x[:, 7] = 0  # a dead input
    hessian = 2 * x.t() @ x / x.shape[0]
    u_in_place, dead_in_place = sg.prepare_hessian(hessian)

    monkeypatch.setattr(sg, "_IN_PLACE_DEVICES", frozenset())
    alive_at_inverse: list[bool] = []
    real_inverse = torch.cholesky_inverse
    handed: list[torch.Tensor] = [hessian.clone()]
    ref = weakref.ref(handed[0])

    def inverse(*args, **kwargs):  # type: ignore[no-untyped-def]
        alive_at_inverse.append(ref() is not None)
        return real_inverse(*args, **kwargs)

    monkeypatch.setattr(torch, "cholesky_inverse", inverse)
    u, dead = sg.prepare_hessian_(handed.pop())
    assert alive_at_inverse == [False]
    assert torch.equal(dead, dead_in_place) and bool(dead[7])
    torch.testing.assert_close(u, u_in_place, rtol=1e-5, atol=1e-6)
    w = torch.randn(32, 96)
    pattern = parse_pattern("2:4")
    assert torch.equal(
        sg.sparsegpt_(w, None, 0.5, pattern, prepared=(u, dead))[1],
        sg.sparsegpt_(w, None, 0.5, pattern, prepared=(u_in_place, dead_in_place))[1],
    )
