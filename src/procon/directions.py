"""Refusal directions: difference in means of the residual stream at the final prompt token.

    procon direction --model M --harmful FILE --harmless FILE --out DIR

For each residual position l (see `procon.residual`), r_l = normalize(mean over harmful
prompts of x_l - mean over harmless prompts of x_l), where x_l is taken at the last token of
the chat-templated prompt, that is the token right before the assistant's reply.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from procon.chat import format_prompt
from procon.errors import InputError
from procon.residual import backbone, capture_residual, num_positions

logger = logging.getLogger(__name__)

DIRECTIONS_FILE = "directions.safetensors"
METADATA_FILE = "directions.json"
CONVENTION = ("rows 0..L-1: residual stream at the input of decoder block l; row L: output of the "
              "last block before the final norm; token: last token of the chat-templated prompt "
              "(generation prompt included); r = normalize(mean(harmful) - mean(harmless))")
# A difference of means shorter than this is treated as no direction at all. Position 0 (the
# embeddings) hits it whenever every prompt ends with the same template token.
DEGENERATE_NORM = 1e-6


@dataclass
class Directions:
    """Per-position unit refusal directions [positions, hidden] with their provenance."""

    vectors: torch.Tensor
    metadata: dict = field(default_factory=dict)

    @property
    def n_positions(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.vectors.shape[1])

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({"directions": self.vectors.contiguous().float()}, str(out_dir / DIRECTIONS_FILE),
                  metadata={"convention": CONVENTION})
        (out_dir / METADATA_FILE).write_text(json.dumps(json_safe(self.metadata), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Directions":
        path = Path(path)
        tensor_path = path / DIRECTIONS_FILE if path.is_dir() else path
        if not tensor_path.is_file():
            raise InputError(f"{tensor_path}: directions file not found; run `procon direction` first")
        try:
            tensors = load_file(str(tensor_path))
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise InputError(f"{tensor_path}: cannot read directions ({exc})") from None
        if "directions" not in tensors:
            raise InputError(f"{tensor_path}: no tensor named 'directions' (found {', '.join(tensors) or 'none'})")
        vectors = tensors["directions"].float()
        if vectors.ndim != 2:
            raise InputError(f"{tensor_path}: directions have shape {list(vectors.shape)}; expected [positions, hidden]")
        if not torch.isfinite(vectors).all():
            raise InputError(f"{tensor_path}: directions contain NaN or inf; extract them again")
        metadata_path = tensor_path.parent / METADATA_FILE
        metadata = {}
        if metadata_path.is_file():
            try:
                metadata = json.loads(metadata_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"{metadata_path}: invalid JSON ({exc})") from None
            if not isinstance(metadata, dict):
                raise InputError(f"{metadata_path}: expected a JSON object")
        return cls(vectors=vectors, metadata=metadata)

    def check_model(self, model, source: str) -> None:
        """Raise InputError unless these directions fit the model's depth and width."""
        expected_positions = num_positions(model)
        hidden = model.config.hidden_size
        if self.n_positions != expected_positions or self.hidden_size != hidden:
            raise InputError(
                f"{source}: directions have shape [{self.n_positions}, {self.hidden_size}] but the model "
                f"needs [{expected_positions}, {hidden}] (block inputs plus the last block's output); "
                "extract them again from this model")


def json_safe(value):
    """Replace NaN and inf by None, because JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def difference_in_means(harmful: np.ndarray | torch.Tensor, harmless: np.ndarray | torch.Tensor
                        ) -> tuple[torch.Tensor, list[int]]:
    """Return unit directions [positions, hidden] and the positions with no direction.

    Inputs are final-token activations [prompts, positions, hidden]. A position whose mean
    difference is shorter than DEGENERATE_NORM gets a zero vector, so it adds nothing to the
    ProCon term and has no defined drift.
    """
    harmful = torch.as_tensor(harmful, dtype=torch.float64)
    harmless = torch.as_tensor(harmless, dtype=torch.float64)
    diff = harmful.mean(dim=0) - harmless.mean(dim=0)
    norms = diff.norm(dim=-1, keepdim=True)
    degenerate = (norms.squeeze(-1) < DEGENERATE_NORM).nonzero().flatten().tolist()
    unit = torch.where(norms < DEGENERATE_NORM, torch.zeros_like(diff), diff / norms.clamp_min(DEGENERATE_NORM))
    return unit.float(), degenerate


@torch.inference_mode()
def final_token_activations(model, tokenizer, prompts: list[str], batch_size: int = 32,
                            system_prompt: str | None = None, progress: bool = True) -> torch.Tensor:
    """Return residual activations [prompts, positions, hidden] at each prompt's last token.

    Prompts are batched by length with right padding, so each row's last real token is read
    at its own index and no position ids shift.
    """
    model.eval()
    # One batched tokenizer call; the template still renders each prompt on its own.
    texts = [format_prompt(tokenizer, p, system_prompt) for p in prompts]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    positions = list(range(num_positions(model)))
    device = next(model.parameters()).device
    out = torch.empty(len(prompts), len(positions), model.config.hidden_size)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    stack = backbone(model)
    with capture_residual(model, positions) as captured:
        for batch in tqdm(batches, desc="activations", disable=not progress, leave=False):
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids[row, :len(encoded[index])] = torch.tensor(encoded[index])
                mask[row, :len(encoded[index])] = 1
            stack(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            last = mask.sum(dim=1) - 1
            rows = torch.arange(len(batch))
            for p in positions:
                out[batch, p] = captured[p][rows, last.to(captured[p].device)].float().cpu()
    return out


def separation(harmful: torch.Tensor, harmless: torch.Tensor, holdout_fraction: float = 0.2,
               seed: int = 0) -> list[dict]:
    """Measure per position how well r separates the two sets on prompts it was not fit on.

    Directions and the midpoint threshold come from the training part of each set. Accuracy is
    the share of held-out prompts on the right side of the threshold.
    """
    harmful, harmless = harmful.float(), harmless.float()
    generator = torch.Generator().manual_seed(seed)

    def split(x):
        perm = torch.randperm(len(x), generator=generator)
        n_test = max(1, int(len(x) * holdout_fraction)) if len(x) > 1 else 0
        return x[perm[n_test:]], x[perm[:n_test]]
    harmful_fit, harmful_test = split(harmful)
    harmless_fit, harmless_test = split(harmless)
    directions, _ = difference_in_means(harmful_fit, harmless_fit)
    rows = []
    for p in range(directions.shape[0]):
        r = directions[p]
        fit_h, fit_b = harmful_fit[:, p] @ r, harmless_fit[:, p] @ r
        threshold = (fit_h.mean() + fit_b.mean()) / 2
        test_h, test_b = harmful_test[:, p] @ r, harmless_test[:, p] @ r
        correct = int((test_h > threshold).sum()) + int((test_b <= threshold).sum())
        total = len(test_h) + len(test_b)
        # A zero direction puts every prompt on one side; its "accuracy" would be the class share.
        defined = total > 0 and bool(r.abs().sum() > 0)
        rows.append({"position": p, "heldout_accuracy": correct / total if defined else float("nan"),
                     "mean_gap": float(fit_h.mean() - fit_b.mean())})
    return rows


def extract_directions(model, tokenizer, harmful: list[str], harmless: list[str], batch_size: int = 32,
                       system_prompt: str | None = None, progress: bool = True) -> tuple[Directions, list[dict]]:
    """Extract refusal directions and the per-position separation report."""
    if batch_size < 1:
        raise InputError(f"batch size {batch_size} is invalid; expected >= 1")
    harmful_acts = final_token_activations(model, tokenizer, harmful, batch_size, system_prompt, progress)
    harmless_acts = final_token_activations(model, tokenizer, harmless, batch_size, system_prompt, progress)
    vectors, degenerate = difference_in_means(harmful_acts, harmless_acts)
    report = separation(harmful_acts, harmless_acts)
    metadata = {
        "n_positions": int(vectors.shape[0]),
        "n_blocks": int(vectors.shape[0]) - 1,
        "hidden_size": int(vectors.shape[1]),
        "convention": CONVENTION,
        "token_position": "last token of the chat-templated prompt",
        "degenerate_positions": degenerate,
        "counts": {"harmful": len(harmful), "harmless": len(harmless)},
        "separation": report,
    }
    if degenerate:
        logger.debug("positions %s have no direction (harmful and harmless means coincide)", degenerate)
    return Directions(vectors=vectors, metadata=metadata), report


def cosine_per_position(base: torch.Tensor, tuned: torch.Tensor) -> list[float]:
    """cos(r_base, r_tuned) per position; NaN where either direction is zero."""
    values = []
    for a, b in zip(base.double(), tuned.double()):
        denominator = a.norm() * b.norm()
        values.append(float(a @ b / denominator) if denominator > 0 else float("nan"))
    return values
