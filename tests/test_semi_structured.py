"""2:4 export: layout check, layer choice and the no-GPU path on CPU; the conversion on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytorch_pruner import PatternError, prune_
from pytorch_pruner.speed import (
    LayerDecision,
    check_2to4,
    choose_layers,
    select_faster,
    semi_structured_support,
    time_linear,
    to_semi_structured_,
)

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the path without a CUDA GPU")


def _model() -> nn.Sequential:
    """fc0 and fc1 fit the 2:4 kernels' shapes; the last layer (10 outputs) does not."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def _pruned() -> nn.Sequential:
    model = _model()
    prune_(model, {"names": ["^0$", "^2$"], "pattern": "2:4", "target_sparsity": 0.5})
    return model


def test_check_2to4_accepts_pruned_weights() -> None:
    model = _pruned()
    check_2to4(model[0].weight, "0")
    zeros = model[2].weight.reshape(-1, 4).eq(0).sum(dim=1)
    assert bool((zeros >= 2).all())


def test_check_2to4_names_the_first_bad_group() -> None:
    weight = torch.zeros(3, 8)
    weight[1, 4:7] = 1.0  # row 1, second group: 3 nonzeros
    with pytest.raises(
        PatternError, match=r"fc: 1 of 6 groups .* \(first: row 1, columns 4..7 = \[1.0, 1.0, 1.0, 0.0\]\)"
    ):
        check_2to4(weight, "fc")
    with pytest.raises(PatternError, match=r"fc: 2:4 sparsity needs the input dimension divisible by 4; .*\[2, 6\]"):
        check_2to4(torch.zeros(2, 6), "fc")


def test_choose_layers_marks_what_fits() -> None:
    decisions = {d.name: d for d in choose_layers(_pruned(), dtype=torch.float16)}
    assert decisions["0"].eligible and decisions["2"].eligible
    assert not decisions["4"].eligible and decisions["4"].reason.startswith("not 2:4 sparse")
    fp32 = {d.name: d for d in choose_layers(_pruned())}
    assert "dtype torch.float32 has no 2:4 kernel" in fp32["0"].reason


def test_choose_layers_names_layers_as_in_the_plain_model() -> None:
    compiled = torch.compile(_pruned(), backend="eager")
    assert [d.name for d in choose_layers(compiled, names=["^0$", "^2$"])] == ["0", "2"]


def test_choose_layers_checks_shape_multiples() -> None:
    model = nn.Sequential(nn.Linear(32, 48))  # 2:4 sparse, but 48 rows is not a multiple of 32
    prune_(model, {"pattern": "2:4", "target_sparsity": 0.5})
    (decision,) = choose_layers(model, dtype=torch.bfloat16)
    assert not decision.eligible and "not a multiple of (32, 64)" in decision.reason


def test_named_layers_must_be_2to4() -> None:
    with pytest.raises(PatternError, match=r"^4: .* not 2:4 sparse"):
        choose_layers(_pruned(), names=["^4$"])
    with pytest.raises(ValueError, match=r"names \['nothing'\] match no Linear layer .* which are: \['0', '2', '4'\]"):
        choose_layers(_pruned(), names=["nothing"])


def test_select_faster_converts_only_faster_layers() -> None:
    decisions = [
        LayerDecision("a", (64, 64), True, "2:4 sparse"),
        LayerDecision("b", (64, 64), True, "2:4 sparse"),
        LayerDecision("c", (10, 64), False, "shape"),
    ]
    chosen = select_faster(decisions, {"a": (2.0, 1.0), "b": (1.0, 1.25)}, min_speedup=1.1)
    assert [d.converted for d in chosen] == [True, False, False]
    assert chosen[0].speedup == 2.0 and chosen[0].reason == "speedup 2.00x >= 1.1x"
    assert chosen[1].reason == "speedup 0.80x < 1.1x" and chosen[2] == decisions[2]


def test_layer_on_a_device_without_kernels_stays_dense() -> None:
    from pytorch_pruner.speed.semi_structured import _on_supported_device

    eligible = LayerDecision("0", (128, 64), True, "2:4 sparse")
    decision = _on_supported_device(eligible, nn.Linear(64, 128))  # a CPU layer: no 2:4 kernels there
    assert not decision.eligible and decision.reason.startswith("stays dense: ") and "CUDA" in decision.reason
    ineligible = LayerDecision("4", (10, 64), False, "shape")
    assert _on_supported_device(ineligible, nn.Linear(64, 10)) is ineligible


@needs_no_gpu
def test_without_gpu_warns_and_leaves_the_model_unchanged() -> None:
    model = _pruned()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="no CUDA GPU is available .* the model is left unchanged"):
        report = to_semi_structured_(model)
    assert report.converted == [] and "not exported: no CUDA GPU" in report.layers[0].reason
    assert all(torch.equal(before[k], v) and v.layout == torch.strided for k, v in model.state_dict().items())


@needs_no_gpu
def test_layout_is_checked_before_the_device() -> None:
    with pytest.raises(PatternError, match="not 2:4 sparse"):
        to_semi_structured_(_model(), names=["^0$"])


def test_conversion_replaces_only_the_layers_timed_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU branch of to_semi_structured_, run on CPU with the kernels' support, the timer and
    the conversion stood in for: only the eligible layer measured faster is replaced."""
    from pytorch_pruner.speed import semi_structured

    converted: list[torch.Tensor] = []

    def fake_convert(weight: torch.Tensor) -> torch.Tensor:
        assert not weight.requires_grad  # detached, as torch's conversion wants
        converted.append(weight.clone())
        return converted[-1]

    monkeypatch.setattr(semi_structured, "semi_structured_support", lambda device=None: None)
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", fake_convert)
    model = _pruned().half()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    timed: list[tuple[str, int]] = []

    def timer(module: nn.Linear, tokens: int) -> tuple[float, float]:
        name = "0" if module is model[0] else "2"
        timed.append((name, tokens))
        return (2.0, 1.0) if name == "0" else (1.0, 1.02)

    report = to_semi_structured_(model, tokens=512, min_speedup=1.05, timer=timer)
    assert timed == [("0", 512), ("2", 512)]  # the ineligible layer "4" is not timed
    assert report.converted == ["0"] and len(converted) == 1
    assert model[0].weight is not None and model[0].weight.data_ptr() == converted[0].data_ptr()
    assert not model[0].weight.requires_grad and torch.equal(model[0].weight, before["0.weight"])
    assert model[2].weight.requires_grad and torch.equal(model[2].weight, before["2.weight"])
    decisions = {d.name: d for d in report.layers}
    assert decisions["0"].speedup == 2.0 and decisions["2"].reason == "speedup 0.98x < 1.05x"
    assert not decisions["4"].eligible and decisions["4"].dense_ms is None
    assert "0 [128, 64]: 2:4 sparse (dense 2.000 ms, sparse 1.000 ms; speedup 2.00x >= 1.05x)" in str(report)


def test_time_linear_records_its_events_on_the_layer_s_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA events record on the current device's stream: a layer on a second GPU, timed from the
    first, measured nothing (both times ~0, a coin-flip decision), so the timing runs under
    ``torch.cuda.device`` of the weight. CUDA's device context, events and the conversion stood in
    for; test_time_linear_on_a_second_gpu runs it on two GPUs."""
    current: list[torch.device | None] = [None]

    class Device:  # torch.cuda.device: the current device within the block
        def __init__(self, device: torch.device) -> None:
            self.device, self.before = torch.device(device), None

        def __enter__(self) -> None:
            self.before, current[0] = current[0], self.device

        def __exit__(self, *exc: object) -> None:
            current[0] = self.before

    recorded: list[torch.device | None] = []

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            pass

        def record(self, stream: object = None) -> None:
            recorded.append(current[0])

        def synchronize(self) -> None:
            pass

        def elapsed_time(self, end: object) -> float:
            return 1.0

    monkeypatch.setattr(torch.cuda, "device", Device)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda weight: weight)
    layer = nn.Linear(64, 32)
    assert time_linear(layer, tokens=8, repeats=2) == (1.0, 1.0)
    assert len(recorded) == 8 and set(recorded) == {layer.weight.device}


@pytest.mark.gpu
@pytest.mark.skipif(
    torch.cuda.device_count() < 2 or semi_structured_support("cuda:1") is not None,
    reason="needs a second CUDA GPU with 2:4 kernels",
)
def test_time_linear_on_a_second_gpu() -> None:
    """A 4096 x 4096 fp16 layer on 8192 tokens is 275 GFLOP: well over 0.05 ms on any GPU. Timed
    with events of another GPU it read ~0 (the events waited for nothing)."""
    model = nn.Sequential(nn.Linear(4096, 4096)).to("cuda:1", torch.half)
    prune_(model, {"pattern": "2:4", "target_sparsity": 0.5})
    layer = model[0]
    with torch.cuda.device(0):
        dense, sparse = time_linear(layer, tokens=8192, repeats=5)
    assert dense > 0.05 and sparse > 0.05


def test_support_message_for_cpu_models() -> None:
    reason = semi_structured_support("cpu")
    assert reason is not None and ("CUDA" in reason)


@pytest.mark.gpu
@pytest.mark.skipif(semi_structured_support() is not None, reason=str(semi_structured_support()))
@pytest.mark.parametrize("min_speedup", [0.0, float("inf")])
def test_export_on_gpu(min_speedup: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 512)).cuda().half().eval()
    prune_(model, {"pattern": "2:4", "target_sparsity": 0.5})
    x = torch.randn(256, 1024, device="cuda", dtype=torch.half)
    with torch.inference_mode():
        dense = model(x)
    report = to_semi_structured_(model, tokens=256, min_speedup=min_speedup)
    converted = [isinstance(m.weight, torch.sparse.SparseSemiStructuredTensor) for m in (model[0], model[2])]
    if min_speedup == 0.0:
        assert converted == [True, True] and report.converted == ["0", "2"]
    else:
        assert converted == [False, False] and report.converted == []
    assert all(d.dense_ms and d.sparse_ms for d in report.layers)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), dense, atol=2e-2, rtol=2e-2)
