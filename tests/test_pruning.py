import copy
import json
import warnings

import pytest
import torch
from torch import nn

from pytorch_pruner import NoMatchingLayersError, Pruning, StateError, prune_

from .conftest import SEED_YAML, make_bert, make_bert_mini, make_mlp, train_steps


def magnitude(**keys) -> dict:
    return {"prune_type": "magnitude", "prune_layer_type": ["Linear"], **keys}


def test_the_seed_template_runs_as_written(bert) -> None:
    # the seed's coding template, verbatim apart from the model and data
    total_iterations = 12
    pruner = Pruning(str(SEED_YAML))
    pruner.update_items_for_all_pruners(start_step=2, end_step=total_iterations - 2)
    pruner.model = bert
    pruner.on_train_begin()
    optimizer = torch.optim.AdamW(bert.parameters(), lr=1e-3)
    for _epoch in range(2):
        bert.train()
        for step in range(total_iterations // 2):
            pruner.on_step_begin(step)
            batch = {"input_ids": torch.randint(0, 100, (4, 16)), "labels": torch.randint(0, 2, (4,))}
            output = bert(**batch)
            loss = output.loss
            loss.backward()
            pruner.on_before_optimizer_step()
            optimizer.step()
            pruner.on_after_optimizer_step()
            optimizer.zero_grad()
    assert pruner.step == total_iterations
    for p in pruner.pruners:
        assert p.layers, "each seed pruner selects layers"
        got = sum(layer.pruned_elements for layer in p.layers) / sum(layer.numel for layer in p.layers)
        assert got == pytest.approx(0.9, abs=0.01)
        for layer in p.layers:
            assert (layer.target.weight[~p.full_mask(layer)] == 0).all()


def test_seed_template_without_pruning_leaves_the_model_dense(bert) -> None:
    total = 4
    pruner = Pruning(SEED_YAML)
    pruner.update_items_for_all_pruners(start_step=total + 1, end_step=total + 1)  # "remove the pruner"
    pruner.on_train_begin(bert)
    before = copy.deepcopy(bert.state_dict())
    optimizer = torch.optim.SGD(bert.parameters(), lr=0.0)
    for step in range(total):
        pruner.on_step_begin(step)
        bert(input_ids=torch.randint(0, 100, (2, 8)), labels=torch.tensor([0, 1])).loss.backward()
        pruner.on_before_optimizer_step()
        optimizer.step()
        pruner.on_after_optimizer_step()
        optimizer.zero_grad()
    assert pruner.get_sparsity_ratio().elementwise_over_all == 0.0
    assert all(torch.equal(v, bert.state_dict()[k]) for k, v in before.items())


def test_bert_mini_seed_ratio_4x1_at_0_9() -> None:
    model = make_bert_mini()
    pruning = prune_(model, magnitude(pattern="4x1", target_sparsity=0.9, names=["encoder"]))
    ratios = pruning.get_sparsity_ratio()
    assert round(ratios.elementwise_over_matmul_gemm_conv, 4) == 0.8815
    # INC's third ratio: 0.9 of the pruned layers' blocks, weighed by their weights, over all Linear
    assert round(ratios.blockwise_over_matmul_gemm_conv, 4) == 0.8815
    assert pruning.report().block_sparsity == pytest.approx(0.9, abs=1e-5)
    total = sum(p.numel() for p in model.parameters())
    zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight"))
    assert ratios.elementwise_over_all == pytest.approx(zeros / total, rel=1e-3)


def test_bert_mini_seed_ratio_2in4() -> None:
    model = make_bert_mini()
    keys = magnitude(
        pattern="2:4", target_sparsity=0.5, names=["encoder"], exclude_names=["layer.3.attention.output.dense"]
    )
    pruning = prune_(model, keys)
    ratios = pruning.get_sparsity_ratio()
    assert round(ratios.elementwise_over_matmul_gemm_conv, 4) == 0.4795
    assert round(ratios.blockwise_over_matmul_gemm_conv, 4) == 0.4795  # INC's: a 2:4 block is a weight
    assert pruning.report().block_sparsity == 0.5


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
        lambda ps: torch.optim.Adam(ps, lr=0.01),
    ],
    ids=["sgd-momentum", "adamw-decay", "adam"],
)
@pytest.mark.parametrize("prune_type", ["magnitude", "snip_momentum"])
def test_pruned_weights_stay_exactly_zero_after_every_optimizer_step(make_optimizer, prune_type) -> None:
    model = make_mlp()
    pruning = Pruning(
        {
            "prune_type": prune_type,
            "pattern": "4x1",
            "target_sparsity": 0.8,
            "start_step": 1,
            "end_step": 4,
            "not_to_prune_names": ["head"],
        }
    )
    pruning.on_train_begin(model)
    optimizer = make_optimizer(model.parameters())
    for step in range(10):
        pruning.on_step_begin(step)
        model(torch.randn(8, 32)).pow(2).mean().backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
        for name, mask in pruning.masks().items():
            weight = model.get_submodule(name).weight
            assert (weight[~mask] == 0).all(), f"step {step}: {name}"
    assert pruning.report().block_sparsity == pytest.approx(0.8, abs=1e-3)


def test_steps_are_optimizer_steps_under_gradient_accumulation(monkeypatch) -> None:
    model = make_mlp()
    pruning = Pruning(
        magnitude(pattern="1x1", target_sparsity=0.5, start_step=0, end_step=4, update_frequency_on_step=2)
    )
    pruning.on_train_begin(model)
    calls = []
    original = pruning.pruners[0].prune
    monkeypatch.setattr(pruning.pruners[0], "prune", lambda step: (calls.append(step), original(step)))
    train_steps(model, pruning, 6, accumulate=3)  # on_step_begin gets micro-batch indices 0..17
    assert pruning.step == 6
    assert calls == [0, 2, 4]


def test_accumulated_and_plain_runs_prune_identically() -> None:
    config = {"prune_type": "snip_momentum", "pattern": "1x1", "target_sparsity": 0.6, "start_step": 1, "end_step": 5}
    a, b = make_mlp(), make_mlp()
    b.load_state_dict(a.state_dict())
    pa, pb = Pruning(config), Pruning(config)
    pa.on_train_begin(a)
    pb.on_train_begin(b)
    batch = torch.randn(16, 32)
    train_steps(a, pa, 6, batch=batch)
    optimizer = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9)
    for step in range(6):
        for half in (batch[:8], batch[8:]):
            pb.on_step_begin(step)
            (b(half).pow(2).mean() / 2).backward()
        pb.on_before_optimizer_step()
        optimizer.step()
        pb.on_after_optimizer_step()
        optimizer.zero_grad()
    assert pa.masks().keys() == pb.masks().keys()
    agree = [float((pa.masks()[k] == pb.masks()[k]).float().mean()) for k in pa.masks()]
    assert min(agree) > 0.99  # same steps, same schedule; only float summation order differs


def test_non_finite_gradients_leave_scores_exactly_unchanged() -> None:
    model = make_mlp()
    pruning = Pruning({"prune_type": "snip_momentum", "pattern": "4x1", "start_step": 5, "end_step": 9})
    pruning.on_train_begin(model)
    train_steps(model, pruning, 2)
    before = [s.clone() for s in pruning.pruners[0].criterion.scores()]
    model(torch.randn(4, 32)).sum().backward()
    model.fc2.weight.grad[0, 0] = float("inf")  # what an fp16 overflow looks like
    pruning.on_before_optimizer_step()
    after = pruning.pruners[0].criterion.scores()
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    model.fc2.weight.grad[0, 0] = float("nan")
    pruning._scored_at = -1  # same step again, now with NaN
    pruning.on_before_optimizer_step()
    assert all(torch.equal(x, y) for x, y in zip(before, pruning.pruners[0].criterion.scores(), strict=True))


def test_masks_are_recomputed_so_a_pruned_block_can_come_back() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    pruning = Pruning(
        {
            "prune_type": "snip_momentum",
            "pattern": "1x1",
            "target_sparsity": 0.5,
            "start_step": 1,
            "end_step": 3,
            "update_frequency_on_step": 1,
            "sparsity_decay_type": "linear",
        }
    )
    pruning.on_train_begin(model)
    pruner = pruning.pruners[0]
    scores = pruner.criterion._scores[0]
    scores.copy_(torch.arange(64.0).reshape(8, 8))
    pruner.prune(3)
    first = pruner.layers[0].keep.clone()
    scores.copy_(-torch.arange(64.0).reshape(8, 8))
    pruner.prune(3)
    assert torch.equal(pruner.layers[0].keep, ~first)


def test_masks_are_bool_and_state_is_small() -> None:
    model = make_bert_mini()
    for prune_type, pattern, limit in [
        ("magnitude", "4x1", 1.0),
        ("snip_momentum", "4x1", 5.0),
        ("snip_momentum", "1x1", 5.0),
        ("snip_momentum", "2:4", 5.0),
    ]:
        pruning = Pruning(
            {
                "prune_type": prune_type,
                "pattern": pattern,
                "names": ["encoder"],
                "start_step": 1,
                "end_step": 2,
                "target_sparsity": 0.5,
            }
        )
        pruning.on_train_begin(model)
        layers = [layer for p in pruning.pruners for layer in p.layers]
        assert all(layer.keep.dtype == torch.bool for layer in layers)
        params = sum(layer.numel for layer in layers)
        state = sum(layer.keep.numel() for layer in layers) + pruning.pruners[0].criterion.state_bytes()
        assert state / params <= limit, (prune_type, pattern, state / params)


def test_two_pruners_with_different_patterns() -> None:
    model = make_bert()
    pruning = Pruning(
        {
            "prune_type": "magnitude",
            "names": ["encoder"],
            "pruners": [
                {"names": ["attention"], "pattern": "2:4", "target_sparsity": 0.5},
                {"pattern": "4x1", "target_sparsity": 0.7, "exclude_names": ["attention"]},
            ],
        }
    )
    pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    first, second = pruning.pruners
    assert all("attention" in layer.name for layer in first.layers)
    assert all("attention" not in layer.name for layer in second.layers)
    assert all(layer.sparsity == 0.5 for layer in first.layers)
    assert sum(layer.pruned_elements for layer in second.layers) / sum(
        layer.numel for layer in second.layers
    ) == pytest.approx(0.7, abs=0.01)


def test_a_layer_matched_by_two_pruners_belongs_to_the_first(mlp) -> None:
    pruning = Pruning({"prune_type": "magnitude", "pruners": [{"names": ["fc"]}, {"names": ["fc1", "head"]}]})
    with pytest.warns(
        UserWarning, match=r"pruners\[1\]: layers already pruned by an earlier pruner are skipped here: \['fc1'\]"
    ):
        pruning.on_train_begin(mlp)
    assert [layer.name for layer in pruning.pruners[1].layers] == ["head"]


def test_a_pruner_without_layers_warns_with_the_candidates(mlp) -> None:
    pruning = Pruning({"prune_type": "magnitude", "pruners": [{"names": ["fc"]}, {"names": ["decoder"]}]})
    with pytest.warns(UserWarning, match=r"pruners\[1\] selects no layer .* could match: \['fc1', 'fc2', 'head'\]"):
        pruning.on_train_begin(mlp)


def test_a_target_that_rounds_to_no_unit_warns(mlp) -> None:
    # head:16 units are 16 input columns: fc1 (32 inputs) has 2, fc2 (64 inputs) has 4
    config = {"prune_type": "magnitude", "names": ["fc"], "pattern": "head:16", "prune_domain": "local"}
    pruning = Pruning({**config, "target_sparsity": 0.25})
    with pytest.warns(
        UserWarning,
        match=r"pruners\[0\]: target_sparsity 0.25 prunes no unit of pattern 'head:16' .*"
        r"local ranking prunes floor\(target x units\)\): fc1 \(2\); they will stay dense",
    ):
        pruning.on_train_begin(mlp)
    pruning.on_step_begin(0)
    assert [layer.sparsity for layer in pruning.pruners[0].layers] == [0.0, 0.25]
    with pytest.warns(UserWarning, match=r"target_sparsity 0.1 .* global ranking .*: fc1 \(2\), fc2 \(4\);"):
        Pruning({**config, "prune_domain": "global", "target_sparsity": 0.1}).on_train_begin(mlp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0.25 of 6 units globally is 1 unit; 0.5 of 2 locally is 1
        Pruning({**config, "prune_domain": "global", "target_sparsity": 0.25}).on_train_begin(mlp)
        Pruning({**config, "target_sparsity": 0.5}).on_train_begin(mlp)


def test_no_matching_layer_at_all_is_an_error(mlp) -> None:
    pruning = Pruning({"prune_type": "magnitude", "names": ["decoder"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NoMatchingLayersError, match=r"no layer of the model matches.*fc1 \(Linear\)"):
            pruning.on_train_begin(mlp)


def test_lifecycle_errors(mlp) -> None:
    pruning = Pruning(magnitude())
    with pytest.raises(StateError, match="on_step_begin called before on_train_begin"):
        pruning.on_step_begin(0)
    with pytest.raises(StateError, match="no model"):
        pruning.on_train_begin()
    pruning.on_train_begin(mlp)
    with pytest.raises(StateError, match="cannot be replaced after on_train_begin"):
        pruning.model = make_mlp()


def test_state_dict_round_trip_resumes_exactly() -> None:
    config = {
        "prune_type": "snip_momentum",
        "pattern": "4x1",
        "target_sparsity": 0.7,
        "start_step": 2,
        "end_step": 8,
        "update_frequency_on_step": 2,
    }
    batches = [torch.randn(8, 32) for _ in range(10)]

    def run(model, pruning, optimizer, steps):
        for step in steps:
            pruning.on_step_begin(step)
            model(batches[step]).pow(2).mean().backward()
            pruning.on_before_optimizer_step()
            optimizer.step()
            pruning.on_after_optimizer_step()
            optimizer.zero_grad()

    whole = make_mlp()
    first = copy.deepcopy(whole)
    p_whole = Pruning(config)
    p_whole.on_train_begin(whole)
    opt_whole = torch.optim.SGD(whole.parameters(), lr=0.05, momentum=0.9)
    run(whole, p_whole, opt_whole, range(10))

    p1 = Pruning(config)
    p1.on_train_begin(first)
    opt1 = torch.optim.SGD(first.parameters(), lr=0.05, momentum=0.9)
    run(first, p1, opt1, range(5))
    saved = copy.deepcopy({"model": first.state_dict(), "opt": opt1.state_dict(), "pruning": p1.state_dict()})

    resumed = make_mlp()
    resumed.load_state_dict(saved["model"])
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.05, momentum=0.9)
    opt2.load_state_dict(saved["opt"])
    p2 = Pruning(config)
    p2.on_train_begin(resumed)
    p2.load_state_dict(saved["pruning"])
    assert p2.step == 5
    run(resumed, p2, opt2, range(5, 10))
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert all(torch.equal(p_whole.masks()[k], p2.masks()[k]) for k in p_whole.masks())


def test_loading_a_state_of_another_config_changes_nothing(mlp) -> None:
    a = Pruning(magnitude(target_sparsity=0.5, pattern="1x1"))
    a.on_train_begin(make_mlp())
    a.on_step_begin(0)
    b = Pruning(magnitude(target_sparsity=0.6, pattern="1x1"))
    b.on_train_begin(mlp)
    before = copy.deepcopy(mlp.state_dict())
    with pytest.raises(StateError, match="saved with another config"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(StateError, match="not a pytorch-pruner state of format 1"):
        b.load_state_dict({"format": 99})
    state = b.state_dict()
    state["pruners"][0]["masks"][0] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(StateError, match="the saved mask of fc1 does not fit"):
        b.load_state_dict(state)
    assert b.step == 0
    assert all(torch.equal(v, mlp.state_dict()[k]) for k, v in before.items())
    assert all(bool(m.all()) for m in b.masks().values())


def test_report_table_and_json(mlp) -> None:
    pruning = prune_(mlp, pattern="4x1", target_sparsity=0.5, prune_layer_type=["Linear"])
    report = pruning.report()
    data = json.loads(report.to_json())
    assert [row["name"] for row in data["layers"]] == ["fc1", "fc2", "head"]
    assert all(row["compliant"] for row in data["layers"])
    assert data["ratios"]["blockwise_over_matmul_gemm_conv"] == pytest.approx(0.5, abs=1e-3)
    table = report.to_table()
    assert "fc1" in table and "elementwise_over_matmul_gemm_conv" in table


def test_prune_one_verb(convnet) -> None:
    pruning = prune_(convnet, pattern="1x1", target_sparsity=0.3, prune_domain="local")
    for layer in pruning.pruners[0].layers:
        assert layer.sparsity == pytest.approx(0.3, abs=1 / layer.numel)
    assert float((convnet.conv1.weight == 0).float().mean()) == pytest.approx(0.3, abs=0.01)


def test_on_train_end_leaves_the_model_exactly_sparse(mlp) -> None:
    pruning = prune_(mlp, pattern="1x1", target_sparsity=0.5)
    with torch.no_grad():
        mlp.fc1.weight.add_(1.0)  # something moved the weights outside the hooks
    pruning.on_train_end()
    assert (mlp.fc1.weight[~pruning.masks()["fc1"]] == 0).all()


def test_bert_model_with_seed_yaml_end_to_end_shapes() -> None:
    model = make_bert(layers=2, hidden=64, ffn=128)
    pruning = Pruning(SEED_YAML)
    pruning.update_items_for_all_pruners(start_step=1, end_step=1)
    pruning.on_train_begin(model)
    train = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(2):
        pruning.on_step_begin(step)
        model(input_ids=torch.randint(0, 100, (2, 8)), labels=torch.tensor([0, 1])).loss.backward()
        pruning.on_before_optimizer_step()
        train.step()
        pruning.on_after_optimizer_step()
        train.zero_grad()
    assert pruning.report().block_sparsity == pytest.approx(0.9, abs=0.01)


def test_damaged_or_foreign_states_are_refused_and_change_nothing(mlp) -> None:
    config = magnitude(pattern="1x1", target_sparsity=0.5)
    a = Pruning(config)
    a.on_train_begin(make_mlp())
    a.on_step_begin(0)
    b = Pruning(config)
    b.on_train_begin(mlp)
    state = a.state_dict()
    with pytest.raises(StateError, match="the saved config is damaged"):
        b.load_state_dict({**state, "config": 42})
    with pytest.raises(StateError, match="the state holds another number of pruners than this config"):
        b.load_state_dict({**state, "pruners": []})
    with pytest.raises(StateError, match="saved criterion state is not magnitude's"):
        b.load_state_dict({**state, "pruners": [{**state["pruners"][0], "criterion": {"scores": []}}]})
    assert b.step == 0 and all(bool(m.all()) for m in b.masks().values())
