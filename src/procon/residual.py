"""Capture of the residual stream at chosen positions of a decoder-only transformer.

Positions are numbered 0..L for a model with L decoder blocks: position l < L is the
residual stream at the start of block l (its input hidden states), and position L is the
output of the last block, before the final norm. Hooks read only the chosen positions,
so no other layer's hidden states are kept alive.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

LAYER_SETS = ("paper", "paper+output", "last")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the decoder blocks of a causal LM, looking through PEFT wrappers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", base)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    # Fallback for architectures that name the block list differently: the one ModuleList whose
    # length equals the configured depth.
    depth = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    for module in base.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(f"cannot find the decoder blocks of {type(base).__name__}")


def backbone(model: nn.Module) -> nn.Module:
    """Return the decoder stack without the language-modelling head, looking through PEFT wrappers.

    Reading residual states needs no logits, and the head's [batch, seq, vocab] product is a
    large part of a small model's forward pass. Falls back to the whole model.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(base, "base_model_prefix", "")
    inner = getattr(base, prefix, None) if prefix else None
    return inner if isinstance(inner, nn.Module) and inner is not base else base


def num_positions(model: nn.Module) -> int:
    """Number of residual positions: one per block input plus the last block's output."""
    return len(decoder_layers(model)) + 1


def parse_layer_set(text: str) -> str | list[int]:
    """Read a layer-set setting: a name from LAYER_SETS or comma-separated positions like '1,2,4'."""
    text = text.strip()
    if text in LAYER_SETS:
        return text
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"layers: {text!r} is invalid; expected one of {', '.join(LAYER_SETS)} "
                         "or comma-separated position indices such as '1,2,4'")
    return [int(part) for part in parts]


def resolve_positions(layer_set: str | Sequence[int], n_positions: int) -> list[int]:
    """Map a layer-set name or an explicit list of positions to sorted position indices.

    `paper` anchors the input of every block, `paper+output` also anchors the last block's
    output, and `last` anchors only the input of the last block (the paper's last-layer
    ablation).
    """
    n_blocks = n_positions - 1
    if isinstance(layer_set, str):
        if layer_set == "paper":
            return list(range(n_blocks))
        if layer_set == "paper+output":
            return list(range(n_positions))
        if layer_set == "last":
            return [n_blocks - 1]
        raise ValueError(f"layers: unknown layer set {layer_set!r}; expected one of {', '.join(LAYER_SETS)} "
                         "or a list of positions")
    positions = sorted(set(int(p) for p in layer_set))
    bad = [p for p in positions if not 0 <= p < n_positions]
    if not positions or bad:
        raise ValueError(f"layers: positions {bad or '[]'} out of range; expected 0..{n_positions - 1} "
                         f"({n_blocks} block inputs, then the last block's output)")
    return positions


@contextlib.contextmanager
def capture_residual(model: nn.Module, positions: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the hidden states [batch, seq, hidden] at `positions` during forward passes.

    The yielded dict is filled on every forward pass and keyed by position. The tensors keep
    their autograd graph, so a loss can be built from them.
    """
    layers = decoder_layers(model)
    n_blocks = len(layers)
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def pre_hook(position):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[position] = hidden
        return hook

    def output_hook(module, args, output):
        captured[n_blocks] = output[0] if isinstance(output, tuple) else output

    try:
        for position in positions:
            if position < n_blocks:
                handles.append(layers[position].register_forward_pre_hook(pre_hook(position), with_kwargs=True))
            else:
                handles.append(layers[n_blocks - 1].register_forward_hook(output_hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
