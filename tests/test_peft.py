"""LoRA on a pruned tiny Llama: merging keeps the zeros (pytorch_pruner.integrations.peft)."""

from __future__ import annotations

import copy

import pytest
import torch

from pytorch_pruner import PruningError

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from pytorch_pruner.integrations.peft import (  # noqa: E402
    lora_masks,
    mask_lora_deltas_,
    merge_and_keep_sparsity,
)

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _pruned_llama() -> torch.nn.Module:
    """A 2-block Llama whose block Linear weights are half zeros (random unstructured masks)."""
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and ".layers." in name:
                m.weight.mul_(torch.rand_like(m.weight) > 0.5)
    return model


def _train_lora(model: torch.nn.Module, masked: bool, steps: int = 8) -> torch.nn.Module:
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    if masked:
        mask_lora_deltas_(peft_model)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 64, (4, 16), generator=gen)
        peft_model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return peft_model


def _zeros(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight == 0 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}


def test_plain_merge_fills_the_zeros_merge_and_keep_sparsity_does_not() -> None:
    before = _zeros(_pruned_llama())
    adapted = [n for n in before if n.rsplit(".", 1)[-1] in TARGETS]
    plain = _train_lora(_pruned_llama(), masked=False).merge_and_unload()
    assert all(int(_zeros(plain)[n].sum()) == 0 for n in adapted)  # the problem: LoRA's delta is dense

    merged, report = merge_and_keep_sparsity(_train_lora(_pruned_llama(), masked=False))
    after = _zeros(merged)
    for name, zeros in before.items():
        assert torch.equal(after[name], zeros), name  # every zero back, no new one
    assert set(report.layers) == set(adapted)
    assert all(z == int(before[n].sum()) for n, (z, _) in report.layers.items())
    assert 0.3 < report.dropped < 0.7  # unmasked training put about half of each delta on pruned weights


def test_masked_lora_merges_into_the_model_it_trained() -> None:
    peft_model = _train_lora(_pruned_llama(), masked=True)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    before = _zeros(_pruned_llama())  # the same seeded zeros the adapters were trained on
    merged, report = merge_and_keep_sparsity(peft_model)
    assert report.dropped == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(_zeros(merged)[n], z) for n, z in before.items())
    base = _pruned_llama()  # ... and the kept weights did change: the adapters trained
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight)


def test_unmasked_adapters_differ_from_the_sparse_merge() -> None:
    peft_model = _train_lora(_pruned_llama(), masked=False)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        adapter_logits = peft_model(input_ids=ids).logits
    merged, _ = merge_and_keep_sparsity(peft_model)
    with torch.no_grad():
        assert not torch.allclose(merged(input_ids=ids).logits, adapter_logits, atol=1e-4)


def test_mask_handle_restores_peft_forward() -> None:
    peft_model = peft.get_peft_model(
        _pruned_llama(), peft.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False)
    )
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        plain = peft_model(input_ids=ids).logits
        handle = mask_lora_deltas_(peft_model)
        masked = peft_model(input_ids=ids).logits
        handle.remove()
        again = peft_model(input_ids=ids).logits
    assert not torch.allclose(plain, masked)
    torch.testing.assert_close(again, plain)


def test_bad_input_is_refused_and_changes_nothing() -> None:
    with pytest.raises(PruningError, match="the model has no LoRA layer"):
        lora_masks(_pruned_llama())
    peft_model = peft.get_peft_model(
        _pruned_llama(), peft.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False)
    )
    masks = lora_masks(peft_model)
    weights = copy.deepcopy({n: p.detach().clone() for n, p in peft_model.named_parameters()})
    name = next(iter(masks))
    with pytest.raises(PruningError, match=f"mask of {name}: expected a bool tensor of shape"):
        merge_and_keep_sparsity(peft_model, {**masks, name: masks[name].float()})
    with pytest.raises(PruningError, match="no mask for the LoRA layers"):
        mask_lora_deltas_(peft_model, {name: masks[name]})
    assert all(torch.equal(p, weights[n]) for n, p in peft_model.named_parameters())  # nothing merged
    dora = peft.get_peft_model(_pruned_llama(), peft.LoraConfig(r=4, target_modules=TARGETS, use_dora=True))
    with pytest.raises(PruningError, match="DoRA"):
        merge_and_keep_sparsity(dora)
