import pytest

pytest.importorskip("sklearn")


def test_demo_prunes_a_real_model_on_real_data_and_keeps_accuracy(capsys) -> None:
    from pytorch_pruner.demo import run

    result = run(dense_epochs=4, prune_epochs=5, target=0.8)
    assert result["dense_accuracy"] > 0.9  # real digits, a CNN learns them in a few epochs
    # hidden Linear layers at 0.8 (global), the convolutions at 0.4 each; 4x1 blocks
    linear, conv = 1024 * 256 + 256 * 128, 32 * 9 + 64 * 32 * 9
    expected = (0.8 * linear + 0.4 * conv) / (linear + conv)
    assert result["pruned_layer_sparsity"] == pytest.approx(expected, abs=0.005)
    assert result["sparse_accuracy"] > result["dense_accuracy"] - 0.05
    out = capsys.readouterr().out
    assert "fc1" in out and "conv2" in out and "test accuracy" in out


def test_demo_without_scikit_learn_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from pytorch_pruner.demo import load_digits_tensors

    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes `import name` fail
    with pytest.raises(SystemExit, match=r"the demo needs scikit-learn; install it with: pip install scikit-learn "):
        load_digits_tensors()
