"""squash/remove, packed bitmasks, sparse safetensors files and transformers folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pytorch_pruner import Pruning, StateError, loads_config, prune_
from pytorch_pruner.export import (
    SPARSE_FILE,
    SPARSE_FORMAT,
    build_transformers_model,
    load_pretrained_sparse,
    load_sparse,
    pack_bits,
    read_sparse,
    remove,
    save_pretrained_sparse,
    save_sparse,
    squash,
    unpack_bits,
)

from .conftest import make_bert, make_convnet, make_mlp, train_steps

pytest.importorskip("safetensors")


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 64, 1000])
def test_pack_bits_round_trip_and_size(numel: int) -> None:
    mask = torch.rand(numel) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (numel + 7) // 8
    assert torch.equal(unpack_bits(packed, (numel,)), mask)


def test_pack_bits_order_is_msb_first() -> None:
    packed = pack_bits(torch.tensor([[True, False, False, False], [False, False, False, True]]))
    assert packed.tolist() == [0b10000001]


def test_unpack_bits_refuses_wrong_length() -> None:
    with pytest.raises(ValueError, match=r"shape \(3, 8\) needs 3 uint8 bytes"):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), (3, 8))


# -- squash ------------------------------------------------------------------------------------
def test_squash_bakes_zeros_and_leaves_a_plain_model() -> None:
    model = make_mlp()
    keys = list(model.state_dict())
    params = {n: p for n, p in model.named_parameters()}
    pruning = Pruning(
        {"prune_type": "magnitude", "pattern": "4x1", "target_sparsity": 0.5, "start_step": 1, "end_step": 1}
    )
    pruning.on_train_begin(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, pruning, 3, optimizer)
    # an optimizer step without on_after_optimizer_step: pruned weights move away from zero
    model(torch.randn(4, 32)).sum().backward()
    optimizer.step()
    masks = pruning.masks()
    assert any(bool((model.get_submodule(n).weight[~m] != 0).any()) for n, m in masks.items())

    plain = pruning.squash()
    assert plain is model
    assert list(plain.state_dict()) == keys  # no extra parameters or buffers
    assert all(plain.get_parameter(n) is p for n, p in params.items())  # the same Parameter objects
    for module in plain.modules():  # no hooks of any kind
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
        assert not hasattr(module, "parametrizations")
    for name, mask in masks.items():
        weight = plain.get_submodule(name).weight
        assert bool((weight[~mask] == 0).all())
    assert pruning.report().block_sparsity == 0.5
    assert remove is squash and Pruning.remove is Pruning.squash


def test_squash_leaves_a_parametrized_layer_as_it_was() -> None:
    """A parametrized weight is never pruned (SPEC §10: a mask on the stored tensor would not reach
    what forward computes), so squash has nothing of it to bake and leaves the parametrization."""
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w * 2

    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    parametrize.register_parametrization(model[0], "weight", Double())
    expected = model[0].weight.detach().clone()
    with pytest.warns(UserWarning, match="0: parametrized weight"):
        pruning = prune_(model, pattern="1x1", target_sparsity=0.5)
    squash(pruning)
    assert parametrize.is_parametrized(model[0])
    assert torch.equal(model[0].weight, expected)
    assert set(pruning.masks()) == {"1"} and int((model[1].weight == 0).sum()) == 32


def test_squash_before_on_train_begin_is_refused() -> None:
    with pytest.raises(StateError, match="squash called before on_train_begin"):
        Pruning({"prune_type": "magnitude"}).squash()


# -- sparse safetensors ------------------------------------------------------------------------
def _pruned(make: type[nn.Module] | object, sparsity: float, pattern: str = "1x1") -> tuple[nn.Module, Pruning]:
    model = make()  # type: ignore[operator]
    pruning = prune_(model, {"names": ["conv2", "fc1", "fc2", "head"]}, pattern=pattern, target_sparsity=sparsity)
    return model, pruning


@pytest.mark.parametrize("make", [make_mlp, make_convnet])
@pytest.mark.parametrize("pattern", ["1x1", "4x1", "2:4"])
def test_sparse_file_round_trips_bit_identical(tmp_path: Path, make: object, pattern: str) -> None:
    model, pruning = _pruned(make, 0.5, pattern)
    path = save_sparse(tmp_path / "m.safetensors", model, pruning)
    fresh = make()  # type: ignore[operator]
    info = load_sparse(path, fresh)
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    assert info.masks.keys() == {f"{n}.weight" for n in pruning.masks()}
    for name, mask in pruning.masks().items():
        assert torch.equal(info.masks[f"{name}.weight"], mask)
    assert loads_config(info.config) == pruning.config
    assert info.report.to_dict() == pruning.report().to_dict()
    assert [r.pattern for r in info.report.layers] == [pattern] * len(pruning.masks())


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_sparse_file_is_smaller_than_dense(tmp_path: Path, sparsity: float) -> None:
    from safetensors.torch import save_file

    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    pruning = prune_(model, pattern="1x1", target_sparsity=sparsity)
    sparse = save_sparse(tmp_path / "s.safetensors", model, pruning).stat().st_size
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "d.safetensors"))
    dense = (tmp_path / "d.safetensors").stat().st_size
    # fp32 values of the kept 1 - s weights + 1 bit per weight, plus a few kB of metadata
    expected = (1 - sparsity) + 1 / 32
    assert sparse / dense == pytest.approx(expected, abs=0.03)


def test_dense_tensors_and_shared_weights(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.fc = nn.Linear(8, 8)
            self.out = nn.Linear(8, 10, bias=False)
            self.out.weight = self.emb.weight  # tied, as in language models
            self.register_buffer("scale", torch.tensor([2.0]))

    torch.manual_seed(0)
    model = Tied()
    pruning = prune_(model, {"names": ["fc"]}, pattern="1x1", target_sparsity=0.5)
    path = save_sparse(tmp_path / "t.safetensors", model, pruning)
    torch.manual_seed(1)
    fresh = Tied()
    load_sparse(path, fresh)
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    assert fresh.out.weight is fresh.emb.weight


def test_pruned_tied_weight_is_stored_once(tmp_path: Path) -> None:
    """A pruned Linear tied to an embedding: one sparse copy in the file, the tie restored on load."""
    from safetensors import safe_open

    class TiedHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(16, 8)
            self.decoder = nn.Linear(8, 16, bias=False)
            self.decoder.weight = self.emb.weight

    torch.manual_seed(0)
    model = TiedHead()
    pruning = prune_(model, {"names": ["decoder"]}, pattern="1x1", target_sparsity=0.5)
    path = save_sparse(tmp_path / "t.safetensors", model, pruning)
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    # the emb key (listed first) holds the sparse copy; the decoder key is an alias, no dense copy
    assert keys == {"emb.weight.__mask__", "emb.weight.__values__"}
    assert json.loads(meta["aliases"]) == {"decoder.weight": "emb.weight"}
    torch.manual_seed(1)
    fresh = TiedHead()
    info = load_sparse(path, fresh)
    assert torch.equal(fresh.decoder.weight, model.decoder.weight) and fresh.decoder.weight is fresh.emb.weight
    assert float((fresh.emb.weight == 0).float().mean()) == 0.5
    assert torch.equal(info.masks["emb.weight"], pruning.masks()["decoder"])


def test_sparse_file_of_a_compiled_model_loads_into_a_plain_one(tmp_path: Path) -> None:
    model = make_mlp()
    compiled = torch.compile(model, backend="eager")  # a wrapper: nothing is compiled until it is called
    pruning = prune_(compiled, pattern="4x1", target_sparsity=0.5)
    path = save_sparse(tmp_path / "m.safetensors", pruning.model, pruning)
    plain = make_mlp()
    load_sparse(path, plain)  # keys without `_orig_mod.`
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in model.state_dict().items())
    other = make_mlp()
    load_sparse(path, torch.compile(other, backend="eager"))  # and back into a wrapped one
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())


def test_bf16_weights_round_trip(tmp_path: Path) -> None:
    model = make_mlp().to(torch.bfloat16)
    pruning = prune_(model, pattern="2:4", target_sparsity=0.5)
    path = save_sparse(tmp_path / "m.safetensors", model, pruning)
    fresh = make_mlp().to(torch.bfloat16)
    load_sparse(path, fresh)
    for key, value in model.state_dict().items():
        assert fresh.state_dict()[key].dtype == torch.bfloat16 and torch.equal(value, fresh.state_dict()[key]), key


def test_failed_save_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    model, pruning = _pruned(make_mlp, 0.5)
    path = save_sparse(tmp_path / "m.safetensors", model, pruning)
    good = path.read_bytes()

    def crash(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_sparse(path, model, pruning)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary left


def test_load_sparse_errors_change_nothing(tmp_path: Path) -> None:
    model, pruning = _pruned(make_mlp, 0.5)
    path = save_sparse(tmp_path / "m.safetensors", model, pruning)
    other = nn.Sequential(nn.Linear(32, 4))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(StateError, match=r"saved from another model \(missing keys \['0.bias', '0.weight'\]"):
        load_sparse(path, other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())

    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[:500])
    with pytest.raises(StateError, match=r"not a readable safetensors file \(truncated or corrupt\)"):
        read_sparse(truncated)
    with pytest.raises(StateError, match="not found"):
        read_sparse(tmp_path / "none.safetensors")

    from safetensors.torch import save_file

    from pytorch_pruner.export import _content_sha256

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(StateError, match="not a pytorch-pruner sparse file"):
        read_sparse(tmp_path / "plain.safetensors")
    # right format tag, but a packed mask is missing: named, not a KeyError from deep inside
    meta = {
        "format": SPARSE_FORMAT,
        "sparse": '{"fc1.weight": {"shape": [64, 32]}}',
        "aliases": "{}",
        "report": pruning.report().to_json(),
        "config": "",
    }
    meta["sha256"] = _content_sha256({"w": torch.zeros(2)}, meta)  # intact, as written: damaged inside
    save_file({"w": torch.zeros(2)}, str(tmp_path / "damaged.safetensors"), metadata=meta)
    with pytest.raises(StateError, match=r"is a damaged sparse file: KeyError: 'fc1\.weight\.__mask__'"):
        read_sparse(tmp_path / "damaged.safetensors")


def test_save_sparse_with_a_pruning_of_another_model_is_refused(tmp_path: Path) -> None:
    _, pruning = _pruned(make_mlp, 0.5)
    with pytest.raises(
        StateError, match=r"prunes 'fc1', whose weight is not a tensor of the model given; pass .*pruning\.model"
    ):
        save_sparse(tmp_path / "x.safetensors", nn.Sequential(nn.Linear(2, 2)), pruning)


def test_metadata_holds_config_ratios_and_patterns(tmp_path: Path) -> None:
    from safetensors import safe_open

    model, pruning = _pruned(make_mlp, 0.8, "4x1")
    path = save_sparse(tmp_path / "m.safetensors", model, pruning)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["ratios"]) == pruning.get_sparsity_ratio()._asdict()
    layers = {row["name"]: (row["pattern"], row["sparsity"]) for row in json.loads(meta["report"])["layers"]}
    assert layers == {n: ("4x1", float((~m).float().mean())) for n, m in pruning.masks().items()}
    assert set(layers) == {"fc1", "fc2", "head"}
    assert "weight_compression_pytorch" in meta["config"]


# -- transformers folders ----------------------------------------------------------------------
def test_save_and_load_pretrained_sparse(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = make_bert()
    architectures_before = model.config.architectures
    pruning = prune_(model, {"names": ["encoder"]}, pattern="4x1", target_sparsity=0.8)
    folder = save_pretrained_sparse(model, tmp_path / "sparse-bert", pruning)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", SPARSE_FILE]
    assert model.config.architectures == architectures_before  # the user's config is not mutated

    loaded = load_pretrained_sparse(folder)
    assert isinstance(loaded, transformers.BertForSequenceClassification)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    query = loaded.bert.encoder.layer[0].attention.self.query.weight
    mask = pruning.masks()["bert.encoder.layer.0.attention.self.query"]
    assert bool((query[~mask] == 0).all()) and float((~mask).float().mean()) > 0.5
    ratios = pruning.get_sparsity_ratio()
    assert pruning.report().block_sparsity == pytest.approx(0.8, abs=0.01)  # the pruned layers
    # INC's third ratio weighs that by the pruned layers' share of every Linear weight
    assert ratios.blockwise_over_matmul_gemm_conv == pytest.approx(ratios.elementwise_over_matmul_gemm_conv, abs=1e-4)

    base = load_pretrained_sparse(folder, transformers.BertForSequenceClassification)
    assert torch.equal(base.bert.encoder.layer[1].output.dense.weight, model.bert.encoder.layer[1].output.dense.weight)


def test_pretrained_errors(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    model, pruning = _pruned(make_mlp, 0.5)
    with pytest.raises(TypeError, match="has no transformers config to save; use save_sparse"):
        save_pretrained_sparse(model, tmp_path / "x", pruning)
    # a pruning of another model: refused before config.json is written, so no half folder is left
    with pytest.raises(StateError, match="whose weight is not a tensor of the model given"):
        save_pretrained_sparse(make_bert(), tmp_path / "half", pruning)
    assert not (tmp_path / "half" / "config.json").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(StateError, match=r"has no config\.json; expected a folder written by save_pretrained_sparse"):
        load_pretrained_sparse(tmp_path / "empty")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sparse_round_trip_of_a_cuda_model(tmp_path: Path) -> None:
    model = make_mlp().cuda()
    pruning = prune_(model, pattern="4x1", target_sparsity=0.5)
    path = save_sparse(tmp_path / "m.safetensors", model, pruning)
    fresh = make_mlp().cuda()
    info = load_sparse(path, fresh)
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    assert all(torch.equal(info.masks[f"{n}.weight"], m.cpu()) for n, m in pruning.masks().items())


@pytest.mark.parametrize(
    ("blocked", "call", "match"),
    [
        (
            ["safetensors", "safetensors.torch"],
            lambda tmp: save_sparse(tmp / "m.safetensors", nn.Linear(2, 2), Pruning({"prune_type": "magnitude"})),
            r"saving sparse models needs the safetensors package; install it with: pip install safetensors "
            r"\(or, in a checkout of pytorch-pruner: pip install -c constraints.txt -e '\.\[transformers\]'\)",
        ),
        (
            ["transformers"],
            build_transformers_model,
            r"building a transformers model needs transformers; install it with: pip install transformers ",
        ),
    ],
)
def test_missing_optional_packages_say_how_to_install_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocked: list[str], call: object, match: str
) -> None:
    import sys

    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes `import name` fail
    with pytest.raises(ImportError, match=match):
        call(tmp_path)  # type: ignore[operator]
