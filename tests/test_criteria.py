import pytest
import torch
from torch import nn

from pytorch_pruner import CRITERIA, Criterion, Pruning
from pytorch_pruner.criteria import Magnitude, ScoreSlot, Snip, SnipMomentum


def slot(weight: torch.Tensor, block: int = 1) -> ScoreSlot:
    rows, cols = weight.shape

    def reduce(t2d, out=None):
        if block == 1:
            return t2d if out is None else out.copy_(t2d)
        return torch.mean(t2d.reshape(rows // block, block, cols, 1), dim=(1, 3), keepdim=True, out=out)

    shape = (rows, cols) if block == 1 else (rows // block, 1, cols, 1)
    return ScoreSlot(weight, lambda t: t, reduce, shape, elementwise=block == 1)


def test_magnitude_ranks_by_absolute_value() -> None:
    w = nn.Parameter(torch.tensor([[-5.0, 0.1], [2.0, -0.2]]))
    (scores,) = Magnitude([slot(w)]).scores()
    assert torch.allclose(scores, torch.tensor([[5.0, 0.1], [2.0, 0.2]]))


def test_snip_is_abs_w_times_grad_of_the_last_step() -> None:
    w = nn.Parameter(torch.randn(4, 6))
    crit = Snip([slot(w)])
    for _ in range(3):
        w.grad = torch.randn(4, 6)
        crit.accumulate_()
    assert torch.allclose(crit.scores()[0], (w * w.grad).abs())


@pytest.mark.parametrize("block", [1, 4])
def test_snip_momentum_formula(block: int) -> None:
    w = nn.Parameter(torch.randn(8, 6))
    crit = SnipMomentum([slot(w, block)])
    expected = torch.zeros(8, 6)
    for _ in range(5):
        w.grad = torch.randn(8, 6)
        expected = 0.9 * expected + (w.detach() * w.grad).abs()
        crit.accumulate_()
        with torch.no_grad():
            w.add_(0.1)
    if block > 1:
        expected = expected.reshape(2, 4, 6, 1).mean(dim=(1, 3), keepdim=True)
    assert torch.allclose(crit.scores()[0], expected, atol=1e-6)


def test_snip_momentum_decays_layers_without_gradients() -> None:
    w = nn.Parameter(torch.ones(2, 2))
    crit = SnipMomentum([slot(w)])
    w.grad = torch.ones(2, 2)
    crit.accumulate_()
    w.grad = None
    crit.accumulate_()
    assert torch.allclose(crit.scores()[0], torch.full((2, 2), 0.9))


def test_a_new_criterion_is_one_class_and_one_register_line() -> None:
    @CRITERIA.register("test_negative_magnitude")
    class Reverse(Criterion):
        def scores(self):
            return [-s.reduce(s.to_2d(s.weight.detach().abs())) for s in self.slots]

    try:
        model = nn.Sequential(nn.Linear(8, 8))
        with torch.no_grad():
            model[0].weight.copy_(torch.arange(64.0).reshape(8, 8) + 1)
        pruning = Pruning({"prune_type": "test_negative_magnitude", "pattern": "1x1", "target_sparsity": 0.5})
        pruning.on_train_begin(model)
        pruning.on_step_begin(0)
        assert (model[0].weight[4:] == 0).all() and (model[0].weight[:4] != 0).all()  # the largest went
    finally:
        CRITERIA._items.pop("test_negative_magnitude")


# sparsegpt is one-shot only and pattern_lock keeps the pattern it finds: tests/test_oneshot.py covers them
_SCHEDULED = [n for n in CRITERIA.names() if not CRITERIA.get(n).oneshot_only and not CRITERIA.get(n).fixed_mask]


@pytest.mark.parametrize("name", _SCHEDULED)
def test_every_registered_criterion_reaches_the_target_in_a_training_loop(name: str) -> None:
    from .conftest import make_mlp, train_steps

    model = make_mlp()
    pruning = Pruning(
        {
            "prune_type": name,
            "pattern": "4x1",
            "target_sparsity": 0.75,
            "start_step": 1,
            "end_step": 6,
            "update_frequency_on_step": 2,
            "not_to_prune_names": ["head"],
            "prune_domain": "local",
        }
    )
    pruning.on_train_begin(model)
    train_steps(model, pruning, 8)
    for layer in pruning.pruners[0].layers:
        assert layer.sparsity == 0.75  # 4x1 blocks divide these layers exactly
        assert (layer.target.weight[~pruning.pruners[0].full_mask(layer)] == 0).all()
    assert pruning.report().block_sparsity == pytest.approx(0.75, abs=1e-3)
