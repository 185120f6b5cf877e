"""CPU sparse (CSR) export: the SparseLinear module, the per-layer choice and the whole model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytorch_pruner import prune_
from pytorch_pruner.speed import SparseLinear, time_sparse_linear, to_sparse_csr_

from .conftest import make_bert


def _sparse_linear(bias: bool = True, dtype: torch.dtype = torch.float32) -> nn.Linear:
    layer = nn.Linear(64, 32, bias=bias, dtype=dtype)
    prune_(nn.Sequential(layer), pattern="4x1", target_sparsity=0.9)
    return layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_linear_matches_the_dense_layer(bias: bool, dtype: torch.dtype) -> None:
    dense = _sparse_linear(bias, dtype)
    sparse = SparseLinear(dense)
    assert list(sparse.parameters()) == [] and sparse.weight.layout == torch.sparse_csr
    assert sparse.density == pytest.approx(float(dense.weight.ne(0).sum()) / dense.weight.numel())
    for shape in [(5, 64), (2, 7, 64), (64,)]:
        x = torch.randn(*shape, dtype=dtype)
        with torch.no_grad():
            out = sparse(x)
            torch.testing.assert_close(out, dense(x))
        assert out.is_contiguous()  # row-major like a dense Linear's, for the layers after it
    back = sparse.to_linear()
    assert torch.equal(back.weight, dense.weight) and back.weight.dtype == dtype
    assert (back.bias is None) == (not bias) and (not bias or torch.equal(back.bias, dense.bias))


def _pruned_bert(sparsity: float = 0.9) -> nn.Module:
    model = make_bert().eval()
    prune_(model, names=["encoder"], pattern="4x1", target_sparsity=sparsity, prune_domain="local")
    return model


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits


def test_only_layers_timed_faster_are_converted() -> None:
    model = _pruned_bert()
    ids = torch.randint(0, 100, (2, 16))
    before = _logits(model, ids)
    timed: list[tuple[str, int]] = []
    modules = {m: n for n, m in model.named_modules()}

    def timer(layer: nn.Linear, tokens: int) -> tuple[float, float]:
        name = modules[layer]
        timed.append((name, tokens))
        return (2.0, 1.0) if "intermediate" in name else (1.0, 1.0)  # only the FFN input layers gain

    report = to_sparse_csr_(model, tokens=32, timer=timer)
    encoder = [name for layer, name in modules.items() if isinstance(layer, nn.Linear) and ".encoder." in name]
    assert sorted(name for name, _ in timed) == sorted(encoder)  # all 0.9 sparse, so all timed
    assert {tokens for _, tokens in timed} == {32}
    assert report.converted == ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.intermediate.dense"]
    assert all(isinstance(model.get_submodule(n), SparseLinear) for n in report.converted)
    assert isinstance(model.get_submodule("bert.encoder.layer.0.output.dense"), nn.Linear)
    decisions = {d.name: d for d in report.layers}
    assert decisions["bert.encoder.layer.0.output.dense"].reason == "speedup 1.00x < 1.05x"
    assert not decisions["classifier"].eligible and decisions["classifier"].reason == "sparsity 0.00 < min_sparsity 0.7"
    assert "bert.encoder.layer.0.intermediate.dense [64, 32]: CSR sparse (dense 2.000 ms" in str(report)
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-5, rtol=1e-5)


def test_real_timings_decide_and_outputs_stay() -> None:
    model = _pruned_bert(0.95)
    ids = torch.randint(0, 100, (1, 16))
    before = _logits(model, ids)
    report = to_sparse_csr_(model, tokens=16, min_speedup=1.0)
    timed = [d for d in report.layers if d.eligible]
    assert len(timed) == 12 and all(d.dense_ms and d.sparse_ms for d in timed)  # 2 layers x 6 Linear
    for d in timed:
        assert d.converted == (d.dense_ms / d.sparse_ms >= 1.0)
        assert isinstance(model.get_submodule(d.name), SparseLinear) == d.converted
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-5, rtol=1e-5)


def test_time_sparse_linear_times_both() -> None:
    dense_ms, sparse_ms = time_sparse_linear(_sparse_linear(), tokens=8, repeats=3)
    assert dense_ms > 0 and sparse_ms > 0


def test_what_is_not_converted_says_why() -> None:
    half = nn.Sequential(_sparse_linear(dtype=torch.float16))
    (decision,) = to_sparse_csr_(half, timer=lambda layer, tokens: (2.0, 1.0)).layers
    assert not decision.eligible and decision.reason == (
        "dtype torch.float16: the sparse CPU kernels take float32/float64"
    )
    assert isinstance(half[0], nn.Linear)
    elsewhere = nn.Sequential(nn.Linear(64, 32, device="meta"))  # as a GPU layer would be: not on the CPU
    (decision,) = to_sparse_csr_(elsewhere, timer=lambda layer, tokens: (2.0, 1.0)).layers
    assert not decision.eligible and decision.reason.startswith("on meta: CSR export is for CPU inference")
    with pytest.raises(ValueError, match=r"names \['decoder'\] match no Linear layer .* which are: \['0'\]"):
        to_sparse_csr_(half, names=["decoder"])


def test_a_compiled_model_is_converted_inside() -> None:
    model = _pruned_bert()
    compiled = torch.compile(model, backend="eager")
    report = to_sparse_csr_(compiled, names=[r"layer\.0\.output\.dense$"], timer=lambda layer, tokens: (2.0, 1.0))
    assert report.converted == ["bert.encoder.layer.0.output.dense"]
    assert isinstance(model.bert.encoder.layer[0].output.dense, SparseLinear)
