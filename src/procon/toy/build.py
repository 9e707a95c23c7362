"""Build the toy aligned chat model: tokenizer, Llama weights and data splits, cached on disk.

    procon toy build --out runs/toy

The build is deterministic for a given seed and settings; a directory whose build_info.json
records the same settings is reused instead of rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments, set_seed

from procon.chat import ChatCollator, encode_example
from procon.data import write_jsonl
from procon.io import atomic_write_json, staged_dir
from procon.toy.tokenizer import random_llama, train_tokenizer
from procon.toy.world import ToyWorld, build_world

logger = logging.getLogger(__name__)

BUILD_VERSION = 1  # bump when the world or the recipe changes, so cached builds are rebuilt


@dataclass
class ToyBuildConfig:
    seed: int = 0
    vocab_size: int = 1024
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    epochs: float = 4.0
    batch_size: int = 32
    learning_rate: float = 2e-3
    max_length: int = 64
    tasks_per_kind: int = 1000


class EncodedDataset(Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def _corpus(world: ToyWorld) -> list[str]:
    texts = []
    for rows in world.splits().values():
        for row in rows:
            texts += [value for value in row.values() if isinstance(value, str)]
    return texts


def write_world(world: ToyWorld, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in world.splits().items():
        write_jsonl(data_dir / f"{name}.jsonl", rows)


def world_digest(world: ToyWorld) -> str:
    """Content hash of every split, so that any change to the generator invalidates the cache."""
    return hashlib.sha256(json.dumps(world.splits(), sort_keys=True).encode()).hexdigest()


def is_current(out: Path, config: ToyBuildConfig) -> bool:
    info_path = out / "build_info.json"
    if not (info_path.is_file() and (out / "model" / "config.json").is_file()):
        return False
    info = json.loads(info_path.read_text())
    world = build_world(seed=config.seed, tasks_per_kind=config.tasks_per_kind)
    return (info.get("version") == BUILD_VERSION and info.get("config") == asdict(config)
            and info.get("world_sha256") == world_digest(world))


def build_toy(out: str | Path, config: ToyBuildConfig | None = None, force: bool = False,
              evaluate: bool = True) -> Path:
    """Build the toy model and data into `out` (model in out/model, data in out/data).

    Returns `out`. An up-to-date build already in `out` is kept unless `force` is set.
    """
    config = config or ToyBuildConfig()
    out = Path(out)
    if not force and is_current(out, config):
        logger.info("toy model in %s is up to date; reusing it", out)
        return out

    start = time.time()
    set_seed(config.seed)
    world = build_world(seed=config.seed, tasks_per_kind=config.tasks_per_kind)
    tokenizer = train_tokenizer(_corpus(world), vocab_size=config.vocab_size)
    model = random_llama(tokenizer, seed=config.seed, hidden_size=config.hidden_size,
                         num_layers=config.num_layers, num_heads=config.num_heads)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("training toy model: %d parameters, %d examples", n_params, len(world.base_train))

    encoded = [encode_example(tokenizer, r["prompt"], r["response"], config.max_length)
               for r in world.base_train]
    with staged_dir(out) as stage:
        args = TrainingArguments(
            output_dir=str(stage / "trainer"),
            per_device_train_batch_size=config.batch_size,
            num_train_epochs=config.epochs,
            learning_rate=config.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            weight_decay=0.01,
            logging_steps=50,
            save_strategy="no",
            report_to=[],
            seed=config.seed,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=EncodedDataset(encoded),
                          data_collator=ChatCollator(tokenizer.pad_token_id))
        trainer.train()
        model.save_pretrained(stage / "model")
        tokenizer.save_pretrained(stage / "model")
        write_world(world, stage / "data")
        info = {"version": BUILD_VERSION, "config": asdict(config), "world_sha256": world_digest(world),
                "parameters": n_params,
                "train_examples": len(world.base_train), "train_seconds": round(time.time() - start, 1)}
        if evaluate:
            from procon.toy.check import check_toy_model

            info["checks"] = check_toy_model(model, tokenizer, world)
        import shutil

        shutil.rmtree(stage / "trainer", ignore_errors=True)
        atomic_write_json(stage / "build_info.json", info)
    return out
