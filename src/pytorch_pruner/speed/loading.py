"""Loading a slimmed transformers model whose layers have different sizes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import bert, decoder  # noqa: F401  (they register the families' slimmers)
from .families import SLIMMERS
from .parts import SlimmingError

__all__ = ["load_slimmed"]


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(path / f).items()}
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise SlimmingError(
        f"{path}: no model.safetensors(.index.json) or pytorch_model.bin; was it saved with save_pretrained?"
    )


def load_slimmed(model_class: Any, path: str | os.PathLike[str], **config_kwargs: Any) -> nn.Module:
    """Load a model saved with ``save_pretrained`` after :func:`~pytorch_pruner.speed.slim_`, per-layer
    sizes included (a model slimmed to the same sizes in every layer also loads with ``from_pretrained``).

    Args:
        model_class: the transformers class to build: a model class (``LlamaForCausalLM``) or an auto
            class (``AutoModelForCausalLM``, which reads the kind from config.json).
        path: the folder ``save_pretrained`` wrote.
        config_kwargs: passed to the config's ``from_pretrained``.

    Returns:
        The model in eval mode, with the saved weights.

    Raises:
        SlimmingError: no weights in *path*, no slimmer for its model type, or the weights do not fit
            the recorded sizes.
    """
    path = Path(path)
    if getattr(model_class, "config_class", None) is not None:
        config = model_class.config_class.from_pretrained(path, **config_kwargs)
        model = model_class(config)
    else:  # an auto class: the config names the model type
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, **config_kwargs)
        model = model_class.from_config(config)
    kind = getattr(config, "model_type", None)
    if isinstance(kind, str) and kind in SLIMMERS:
        try:
            SLIMMERS.get(kind)().resize(model, config)
        except SlimmingError as err:
            raise SlimmingError(f"{path}: {err}") from None
    state = _read_weights(path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise SlimmingError(
            f"{path}: the saved weights do not fit the sizes its config.json records ({err}); config.json and "
            "the weights must come from the same save_pretrained of the slimmed model"
        ) from None
    if result.unexpected_keys:
        raise SlimmingError(f"{path}: unexpected weights {result.unexpected_keys}; is {model_class.__name__} right?")
    model.tie_weights()
    # weights left out of the file are fine only when tied to one that was loaded
    params = model.state_dict(keep_vars=True)
    loaded = {params[k].data_ptr() for k in state if k in params}
    missing = [k for k in result.missing_keys if params[k].data_ptr() not in loaded]
    if missing:
        raise SlimmingError(
            f"{path}: weights missing from the file: {missing}; save the slimmed model again with save_pretrained"
        )
    return model.eval()
