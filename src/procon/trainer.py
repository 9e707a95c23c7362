"""The ProCon loss and a transformers Trainer that adds it to the language-modelling loss.

L = CE + alpha * mean over samples of sum over positions l and response tokens t of |z - z0|,
with z = r_l . x_{l,t} from the model being tuned and z0 the same projection recorded once
with the initial model (adapter disabled). r_l stays fixed at the initial model's direction.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments

from procon.chat import IGNORE_INDEX, ChatCollator
from procon.residual import backbone, capture_residual, parse_layer_set

logger = logging.getLogger(__name__)

METHODS = ("vanilla", "procon", "procon_wu", "procon_wu_safe")
# alpha used when the config leaves it unset. The ProCon paper (arXiv 2509.06795) uses 0.1-0.2 as
# a constant weight (ProCon^s) and 1-2 for the warm-up epochs only.
DEFAULT_ALPHA = {"vanilla": 0.0, "procon": 0.1, "procon_wu": 1.0, "procon_wu_safe": 1.0}


@dataclass
class ProConConfig(TrainingArguments):
    """TrainingArguments plus the ProCon constraint settings."""

    procon_method: str = field(default="procon_wu_safe", metadata={
        "help": "vanilla (no constraint), procon (constant alpha), procon_wu (alpha for the first "
                "procon_warmup_epochs epochs, then 0) or procon_wu_safe (procon_wu plus safety samples "
                "mixed into the training data by the caller)"})
    procon_alpha: float | None = field(default=None, metadata={
        "help": "weight of the ProCon term; unset means 0.1 for procon and 1.0 for the warm-up methods"})
    procon_warmup_epochs: int = field(default=1, metadata={
        "help": "epochs with the constraint on for procon_wu and procon_wu_safe"})
    procon_layers: str = field(default="paper+output", metadata={
        "help": "residual positions to anchor: paper (every block input), paper+output (also the last "
                "block's output), last (last block input only), or comma-separated position indices"})

    def __post_init__(self):
        super().__post_init__()
        if self.procon_method not in METHODS:
            raise ValueError(f"procon_method: unknown method {self.procon_method!r}; expected one of {', '.join(METHODS)}")
        if self.procon_alpha is None:
            self.procon_alpha = DEFAULT_ALPHA[self.procon_method]
        if not math.isfinite(self.procon_alpha) or self.procon_alpha < 0:
            raise ValueError(f"procon_alpha: {self.procon_alpha} is invalid; expected a finite value >= 0")
        if self.procon_warmup_epochs < 0:
            raise ValueError(f"procon_warmup_epochs: {self.procon_warmup_epochs} is invalid; expected >= 0")
        parse_layer_set(self.procon_layers)
        # The trainer needs the sample_index column that the collator passes through.
        self.remove_unused_columns = False


def alpha_for_epoch(method: str, alpha: float, warmup_epochs: int, epoch: int) -> float:
    """Constraint weight during the 0-based `epoch`."""
    if method == "vanilla":
        return 0.0
    if method == "procon":
        return alpha
    return alpha if epoch < warmup_epochs else 0.0


def response_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose input token is a response token (labels are unshifted, as in transformers)."""
    return labels != IGNORE_INDEX


def procon_term(hidden: dict[int, torch.Tensor], directions: torch.Tensor, positions: list[int],
                mask: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Sum over positions and response tokens of |r_l . x_{l,t} - z0|, averaged over the batch.

    `hidden[p]` is [batch, seq, hidden]; `directions` is [all positions, hidden]; `anchors`
    is [response tokens in the batch, len(positions)] in the row-major order of `mask`.
    """
    device = hidden[positions[0]].device
    r = directions[positions].to(device=device, dtype=torch.float32)
    mask = mask.to(device)
    # Project every token first and keep the response tokens after: a [tokens, P, hidden] copy
    # of the states is never built. Autocast is off so that the dot products run in float32.
    with torch.autocast(device_type=device.type, enabled=False):
        z = torch.stack([torch.matmul(hidden[p].float(), r[i])[mask] for i, p in enumerate(positions)], dim=1)
        return (z - anchors.to(device)).abs().sum() / mask.shape[0]


@dataclass
class Anchors:
    """Initial projections z0 of every training sample, flattened over response tokens.

    values[offsets[i]:offsets[i + 1]] are sample i's response tokens in order, one column per
    anchored position.
    """

    values: torch.Tensor   # [total response tokens, positions], float32
    offsets: torch.Tensor  # [samples + 1], int64
    positions: list[int]

    def gather(self, sample_index: torch.Tensor) -> torch.Tensor:
        parts = [self.values[self.offsets[i]:self.offsets[i + 1]] for i in sample_index.tolist()]
        return torch.cat(parts, dim=0)

    def save(self, path: Path) -> None:
        save_file({"values": self.values.contiguous(), "offsets": self.offsets.contiguous()}, str(path),
                  metadata={"positions": ",".join(map(str, self.positions))})

    @classmethod
    def load(cls, path: Path) -> "Anchors":
        """Open a saved anchors file with `values` memory-mapped: a step reads only its samples' rows.

        The safetensors layout is an 8-byte header length, a JSON header, then raw little-endian data.
        """
        import json
        import struct

        import numpy as np

        with open(path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
        data_start = 8 + header_size

        def mapped(name: str, dtype: str, np_dtype) -> torch.Tensor:
            info = header[name]
            if info["dtype"] != dtype:
                raise ValueError(f"{path}: tensor {name!r} is {info['dtype']}; expected {dtype}")
            begin, end = info["data_offsets"]
            shape = tuple(info["shape"])
            if end == begin:
                return torch.zeros(shape, dtype=torch.float32 if dtype == "F32" else torch.int64)
            # Copy-on-write keeps the file read-only and gives torch a writable array.
            return torch.from_numpy(np.memmap(path, dtype=np_dtype, mode="c", offset=data_start + begin, shape=shape))

        positions = [int(p) for p in header["__metadata__"]["positions"].split(",")]
        offsets = mapped("offsets", "I64", "<i8").clone()
        return cls(values=mapped("values", "F32", "<f4"), offsets=offsets, positions=positions)


def anchors_key(model_id: str, directions: torch.Tensor, positions: list[int], encoded: list[dict]) -> str:
    """Content hash of everything the anchors depend on, for the on-disk cache."""
    digest = hashlib.sha256()
    digest.update(model_id.encode())
    digest.update(directions.float().numpy().tobytes())
    digest.update(repr(positions).encode())
    for example in encoded:
        digest.update(repr((example["input_ids"], example["labels"])).encode())
    return digest.hexdigest()[:24]


@torch.no_grad()
def record_anchors(model, encoded: list[dict], directions: torch.Tensor, positions: list[int],
                   pad_token_id: int, batch_size: int = 16, progress: bool = True) -> Anchors:
    """Project the initial model's response-token states onto r, once per training sample.

    For a PEFT model the adapter is disabled for these passes, so no second copy of the base
    model is needed.
    """
    was_training = model.training
    model.eval()
    collator = ChatCollator(pad_token_id)
    device = next(model.parameters()).device
    per_sample: list[torch.Tensor] = [None] * len(encoded)  # type: ignore[list-item]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    disable = model.disable_adapter() if hasattr(model, "disable_adapter") else _null_context()
    stack = backbone(model)
    with disable, capture_residual(model, positions) as captured:
        for batch in tqdm(batches, desc="anchors", disable=not progress, leave=False):
            features = [{"input_ids": encoded[i]["input_ids"], "labels": encoded[i]["labels"]} for i in batch]
            inputs = collator(features)
            mask = response_mask(inputs["labels"])
            stack(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device),
                  use_cache=False)
            r = directions[positions].to(device=device, dtype=torch.float32)
            for row, index in enumerate(batch):
                states = torch.stack([captured[p][row][mask[row].to(device)] for p in positions], dim=1)
                per_sample[index] = torch.einsum("nph,ph->np", states.float(), r).cpu()
    model.train(was_training)
    lengths = torch.tensor([0] + [len(t) for t in per_sample])
    return Anchors(values=torch.cat(per_sample, dim=0), offsets=lengths.cumsum(0), positions=list(positions))


class _null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _EpochTracker(TrainerCallback):
    def __init__(self, trainer: "ProConTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.current_epoch = int(math.floor((state.epoch or 0.0) + 1e-6))


class ProConTrainer(Trainer):
    """Trainer whose loss adds the ProCon projection constraint to the language-modelling loss.

    Train examples must carry `sample_index`, the row of `anchors` they belong to. The
    collator passes it through and the trainer removes it before the forward pass.
    """

    def __init__(self, *args, directions: torch.Tensor, anchors: Anchors | None, **kwargs):
        super().__init__(*args, **kwargs)
        config: ProConConfig = self.args
        self.directions = directions.float()
        self.anchors = anchors
        self.current_epoch = 0
        self._metrics: dict[str, list[float]] = {"ce_loss": [], "procon_term": [], "procon_alpha": []}
        if config.procon_method != "vanilla" and anchors is None:
            raise ValueError(f"procon_method {config.procon_method!r} needs anchors; record them with record_anchors")
        self.add_callback(_EpochTracker(self))

    def current_alpha(self) -> float:
        config: ProConConfig = self.args
        return alpha_for_epoch(config.procon_method, config.procon_alpha, config.procon_warmup_epochs,
                               self.current_epoch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sample_index = inputs.pop("sample_index", None)
        alpha = self.current_alpha() if model.training else 0.0
        if alpha == 0.0:
            # No hooks when the constraint is off, so plain epochs cost what vanilla tuning costs.
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            self._record(loss, None, alpha)
            return (loss, outputs) if return_outputs else loss

        positions = self.anchors.positions
        with capture_residual(model, positions) as captured:
            ce, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                               num_items_in_batch=num_items_in_batch)
            mask = response_mask(inputs["labels"])
            anchors = self.anchors.gather(sample_index)
            term = procon_term(captured, self.directions, positions, mask, anchors)
        if not torch.isfinite(term):
            raise FloatingPointError(f"ProCon term is {term.item()} at step {self.state.global_step}; "
                                     "lower the learning rate or alpha")
        weighted = alpha * term
        # With token-count normalisation the Trainer does not divide CE by the accumulation
        # steps, so the per-batch ProCon mean is divided here to keep both terms on one scale.
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            weighted = weighted / self.current_gradient_accumulation_steps
        loss = ce + weighted
        self._record(ce, term, alpha)
        return (loss, outputs) if return_outputs else loss

    def _record(self, ce: torch.Tensor, term: torch.Tensor | None, alpha: float) -> None:
        if not torch.isfinite(ce):
            raise FloatingPointError(f"language-modelling loss is {ce.item()} at step {self.state.global_step}; "
                                     "lower the learning rate")
        self._metrics["ce_loss"].append(float(ce.detach()))
        self._metrics["procon_term"].append(float(term.detach()) if term is not None else 0.0)
        self._metrics["procon_alpha"].append(alpha)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Per-step values gathered since the last log are averaged and sent through the
        # Trainer's own logging, so every report_to integration receives them.
        if "loss" in logs:
            for key, values in self._metrics.items():
                if values:
                    logs[key] = sum(values) / len(values)
            for values in self._metrics.values():
                values.clear()
        super().log(logs, start_time)
