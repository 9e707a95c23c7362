"""Training runs: the YAML run config, model loading and the ProCon-constrained LoRA pipeline.

    procon train --config configs/toy_attack.yaml --method procon_wu_safe --out runs/x
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from procon.chat import IGNORE_INDEX, ChatCollator, encode_example, require_chat_template
from procon.data import load_pairs, load_prompts
from procon.errors import InputError
from procon.io import atomic_write_text, check_output_dir, sha256_file, staged_dir
from procon.residual import parse_layer_set

logger = logging.getLogger(__name__)

TOY_SOURCE = "toy"  # a data source name that means "take this split from the built-in toy world"


@dataclass
class DataSource:
    path: str
    prompt_field: str | None = None
    response_field: str | None = None
    limit: int | None = None


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainingSettings:
    learning_rate: float = 2e-4
    epochs: float = 10
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    seed: int = 0
    logging_steps: int = 10
    save_every_epoch: bool = True
    report_to: list[str] = field(default_factory=list)
    gradient_checkpointing: bool = False
    bf16: bool = False


@dataclass
class RunConfig:
    """Everything one `procon train` run needs; the YAML file mirrors these fields."""

    model: str = ""
    output_dir: str = "runs/train"
    method: str = "procon_wu_safe"
    alpha: float | None = None
    warmup_epochs: int = 1
    layers: str = "paper+output"
    directions: str | None = None
    direction_harmful: str | None = None
    direction_harmless: str | None = None
    train_data: list[DataSource] = field(default_factory=list)
    safety_data: str | None = None
    safety_samples: int = 1000
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    def validate(self, source: str = "config") -> None:
        from procon.trainer import METHODS

        if isinstance(self.layers, (list, int)) and not isinstance(self.layers, bool):
            items = self.layers if isinstance(self.layers, list) else [self.layers]
            self.layers = ",".join(str(p) for p in items)
        _check_types(self, source)
        for item in self.train_data:
            _check_types(item, f"{source}: train_data entry {item.path}")
        _check_types(self.lora, f"{source}: lora")
        _check_types(self.training, f"{source}: training")
        if not self.model:
            raise InputError(f"{source}: field 'model' is missing; expected a model directory or hub id")
        if self.method not in METHODS:
            raise InputError(f"{source}: field 'method' is {self.method!r}; expected one of {', '.join(METHODS)}")
        if not self.train_data:
            raise InputError(f"{source}: field 'train_data' is empty; expected at least one data file")
        if self.method == "procon_wu_safe" and not self.safety_data:
            raise InputError(f"{source}: method procon_wu_safe needs field 'safety_data' "
                             "(a file of harmful instruction -> refusal pairs, or 'toy')")
        if self.method != "vanilla" and not self.directions and not (self.direction_harmful and self.direction_harmless):
            raise InputError(f"{source}: method {self.method} needs field 'directions' or both "
                             "'direction_harmful' and 'direction_harmless'")
        try:
            parse_layer_set(str(self.layers))
        except ValueError as exc:
            raise InputError(f"{source}: {exc}") from None
        if self.safety_samples < 0:
            raise InputError(f"{source}: field 'safety_samples' is {self.safety_samples}; expected >= 0")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise InputError(f"{source}: field 'alpha' is {self.alpha}; expected a finite number >= 0")
        if self.warmup_epochs < 0:
            raise InputError(f"{source}: field 'warmup_epochs' is {self.warmup_epochs}; expected >= 0")
        positive = {"training.epochs": self.training.epochs, "training.learning_rate": self.training.learning_rate,
                    "training.batch_size": self.training.batch_size,
                    "training.gradient_accumulation_steps": self.training.gradient_accumulation_steps,
                    "training.max_length": self.training.max_length,
                    "training.logging_steps": self.training.logging_steps, "lora.r": self.lora.r,
                    "lora.alpha": self.lora.alpha}
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"{source}: field '{name}' is {value}; expected a finite number > 0")
        if not 0 <= self.lora.dropout < 1:
            raise InputError(f"{source}: field 'lora.dropout' is {self.lora.dropout}; expected 0 <= dropout < 1")
        if self.method == "procon_wu_safe" and self.safety_samples == 0:
            raise InputError(f"{source}: method procon_wu_safe needs safety_samples > 0 "
                             "(with 0 it is procon_wu)")


_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "list[str]": (list,)}


def _check_types(obj, where: str) -> None:
    """Raise InputError naming the field when a value from YAML or --set has the wrong type."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        annotation = str(f.type).replace(" | None", "")
        expected = _TYPES.get(annotation)
        if expected is None or (value is None and "None" in str(f.type)):
            continue
        if annotation == "float" and isinstance(value, str):
            # YAML 1.1 reads "2e-4" (no decimal point) as a string.
            try:
                value = float(value)
                setattr(obj, f.name, value)
            except ValueError:
                pass
        wrong_bool = isinstance(value, bool) and bool not in expected
        if wrong_bool or not isinstance(value, expected):
            raise InputError(f"{where}: field '{f.name}' is {value!r}; expected {annotation}")
        if annotation == "list[str]" and not all(isinstance(v, str) for v in value):
            raise InputError(f"{where}: field '{f.name}' is {value!r}; expected a list of strings")


def _build(cls, values: Any, where: str):
    """Build dataclass `cls` from a mapping, rejecting unknown keys with their full name."""
    if not isinstance(values, dict):
        raise InputError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {"path": ""} if cls is DataSource else {}
    for key, value in values.items():
        if key not in known:
            raise InputError(f"{where}: unknown field '{key}'; expected one of {', '.join(known)}")
        if key == "lora":
            value = _build(LoraSettings, value, f"{where}.lora")
        elif key == "training":
            value = _build(TrainingSettings, value, f"{where}.training")
        elif key == "train_data":
            items = value if isinstance(value, list) else [value]
            value = [_build(DataSource, {"path": v} if isinstance(v, str) else v, f"{where}.train_data[{i}]")
                     for i, v in enumerate(items)]
            missing = [i for i, v in enumerate(value) if not v.path]
            if missing:
                raise InputError(f"{where}: train_data[{missing[0]}] has no 'path'; expected a data file")
        kwargs[key] = value
    return cls(**kwargs)


def read_yaml_mapping(path: str) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping; raise InputError naming the file and line otherwise."""
    config_path = Path(path)
    if not config_path.is_file():
        raise InputError(f"{path}: config file not found" + (" (it is a directory)" if config_path.is_dir() else ""))
    try:
        values = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: byte {exc.start}: not valid UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        raise InputError(f"{path}: {line}invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected a mapping of fields at the top level")
    return values


def load_run_config(path: str | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config and apply dotted-key overrides such as {'training.epochs': 3}."""
    values: dict[str, Any] = {}
    source = path or "command line"
    if path:
        values = read_yaml_mapping(path)
    for dotted, value in (overrides or {}).items():
        _apply_override(values, dotted, value)
    if overrides:
        source = f"{source} with command-line overrides" if path else source
    config = _build(RunConfig, values, source)
    config.validate(source)
    return config


def _apply_override(values: dict, dotted: str, value: Any) -> None:
    """Set `values[a][b]...` for the key 'a.b...'; a numeric part indexes a list such as train_data."""
    target: Any = values
    keys = dotted.split(".")
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(target, list):
            if not key.isdigit() or int(key) >= len(target):
                raise InputError(f"--set {dotted}: index {key!r} is out of range; the list has {len(target)} items")
            index = int(key)
            if last:
                target[index] = value
            else:
                if isinstance(target[index], str):  # a bare path in train_data
                    target[index] = {"path": target[index]}
                target = target[index]
        elif isinstance(target, dict):
            if last:
                target[key] = value
            else:
                target = target.setdefault(key, {})
        else:
            raise InputError(f"--set {dotted}: '{keys[depth - 1]}' is not a mapping or list")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `key.sub=value` with the value read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise InputError(f"--set {text}: expected KEY=VALUE, for example training.epochs=3")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:
        raise InputError(f"--set {text}: the value is not valid YAML; quote strings, e.g. 'key=\"[x\"'") from None


def load_model(model_id: str, dtype: torch.dtype = torch.float32):
    """Load a causal LM and its tokenizer with transformers, as any user's checkpoint would be."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_id)
    if path.exists() and not path.is_dir():
        raise InputError(f"{model_id}: is a file; expected a model directory or hub id")
    if not path.exists() and (model_id.count("/") != 1 or model_id.startswith((".", "/"))):
        raise InputError(f"{model_id}: model directory not found")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        require_chat_template(tokenizer, model_id)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype)
    except InputError:
        raise
    except Exception as exc:  # transformers, safetensors and huggingface_hub raise many types here
        where = "" if path.exists() else "not found locally, and loading it as a hub id failed: "
        raise InputError(f"{model_id}: cannot load model ({where}{_first_line(exc)})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_adapter_dir(adapter: str) -> None:
    """Raise InputError unless `adapter` is a local PEFT adapter directory with weights.

    PEFT reads a directory without weights as a hub id and tries the network, so the weights
    are checked here first.
    """
    path = Path(adapter)
    if (path / "adapter" / "adapter_config.json").is_file():
        raise InputError(f"{adapter}: is a training run directory; pass {path / 'adapter'}")
    if not (path / "adapter_config.json").is_file():
        raise InputError(f"{adapter}: adapter_config.json not found; expected a PEFT adapter directory")
    if not any((path / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise InputError(f"{adapter}: adapter_model.safetensors not found; expected a PEFT adapter directory")


def load_adapter(model, adapter: str, adapter_name: str = "default"):
    """Apply a PEFT adapter to `model`, or load it as `adapter_name` into a PeftModel."""
    from peft import PeftModel

    check_adapter_dir(adapter)
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(adapter, adapter_name=adapter_name)
            return model
        return PeftModel.from_pretrained(model, adapter)
    except Exception as exc:  # peft raises JSON, safetensors, size-mismatch and module-match errors
        raise InputError(f"{adapter}: cannot load adapter ({_first_line(exc)})") from None


def toy_split(name: str) -> list[dict]:
    from procon.toy.world import build_world

    return getattr(build_world(), name)


def training_pairs(config: RunConfig) -> tuple[list[dict], list[dict]]:
    """Return (task and attack pairs, safety pairs) as prompt/response rows."""
    pairs: list[dict] = []
    for item in config.train_data:
        rows = load_pairs(item.path, item.prompt_field, item.response_field, limit=item.limit)
        pairs += [{**row, "_source": f"{item.path}: example {number}"} for number, row in enumerate(rows, 1)]
    safety: list[dict] = []
    if config.safety_data and config.safety_samples > 0:
        if config.safety_data == TOY_SOURCE:
            safety = toy_split("safety")
        else:
            safety = load_pairs(config.safety_data)
        safety = [{**row, "_source": f"{config.safety_data}: example {number}"}
                  for number, row in enumerate(safety[:config.safety_samples], 1)]
    return pairs, safety


def resolve_directions(config: RunConfig, model, tokenizer, progress: bool = True):
    from procon.directions import Directions, extract_directions

    if config.directions:
        directions = Directions.load(config.directions)
        source = config.directions
    else:
        harmful = load_prompts(config.direction_harmful)
        harmless = load_prompts(config.direction_harmless)
        directions, _ = extract_directions(model, tokenizer, harmful, harmless, progress=progress)
        source = f"{config.direction_harmful} vs {config.direction_harmless}"
    directions.check_model(model, source)
    return directions


def train(config: RunConfig, progress: bool = True) -> Path:
    """Run one LoRA fine-tuning job and write adapter, resolved config and metrics.

    Output goes to a temporary directory renamed to `config.output_dir` only when training
    finished, so a failed run leaves nothing half-written.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    from procon.directions import Directions
    from procon.residual import num_positions, resolve_positions
    from procon.trainer import Anchors, ProConTrainer, anchors_key, record_anchors

    start = time.time()
    check_output_dir(config.output_dir)
    set_seed(config.training.seed)
    model, tokenizer = load_model(config.model)
    pairs, safety = training_pairs(config)
    rows = pairs + safety
    encoded, skipped = [], []
    for row in rows:
        example = encode_example(tokenizer, row["prompt"], row["response"], config.training.max_length)
        if all(label == IGNORE_INDEX for label in example["labels"]):
            skipped.append(row["_source"])
            continue
        example["sample_index"] = len(encoded)
        encoded.append(example)
    if skipped:
        # Such an example has no response token left to learn from or to anchor.
        logger.warning("skipped %d of %d examples whose prompt fills training.max_length=%d (first: %s)",
                       len(skipped), len(rows), config.training.max_length, skipped[0])
    if not encoded:
        raise InputError(f"{skipped[0]}: every prompt fills training.max_length={config.training.max_length} "
                         "tokens and no response token is left; raise training.max_length")
    logger.info("training data: %d pairs + %d safety samples", len(pairs), len(safety))

    if config.method != "vanilla":
        directions = resolve_directions(config, model, tokenizer, progress)
        norms = directions.vectors.norm(dim=-1)
        if not bool((norms > 0).any()):
            raise InputError("directions: every position has a zero direction (harmful and harmless means "
                             "coincide); extract them from two different prompt sets")
    else:
        directions = Directions(vectors=torch.zeros(num_positions(model), model.config.hidden_size))
    try:
        positions = resolve_positions(parse_layer_set(str(config.layers)), num_positions(model))
    except ValueError as exc:
        raise InputError(str(exc)) from None

    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=list(config.lora.target_modules), task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise InputError(f"lora: {_first_line(exc)}") from None

    out = Path(config.output_dir)
    with staged_dir(out) as stage:
        anchors = None
        if config.method != "vanilla":
            cache_dir = out.parent / ".anchors"
            key = anchors_key(_model_fingerprint(config.model, cache_dir), directions.vectors, positions, encoded)
            cache = cache_dir / f"{key}.safetensors"
            if cache.is_file():
                try:
                    anchors = Anchors.load(cache)
                    logger.info("anchors reused from %s", cache)
                except Exception as exc:  # a corrupt cache entry is recomputed, not fatal
                    logger.warning("anchors cache %s is unreadable (%s); recording them again", cache, exc)
            if anchors is None:
                anchors = record_anchors(model, encoded, directions.vectors, positions, tokenizer.pad_token_id,
                                         batch_size=config.training.batch_size * 2, progress=progress)
                _save_anchors_cache(anchors, cache)

        try:
            args = _trainer_args(config, stage, progress)
            trainer = ProConTrainer(model=model, args=args, train_dataset=encoded,
                                    data_collator=ChatCollator(tokenizer.pad_token_id),
                                    directions=directions.vectors, anchors=anchors)
        except ValueError as exc:  # transformers validates report_to, precision and more here
            raise InputError(f"training: {_first_line(exc)}") from None
        trainer.train()
        model.save_pretrained(stage / "adapter")
        tokenizer.save_pretrained(stage / "adapter")
        resolved = dataclasses.asdict(config)
        resolved["resolved_alpha"] = args.procon_alpha
        resolved["positions"] = positions
        resolved["data"] = {"pairs": len(pairs), "safety_samples": len(safety), "skipped_too_long": len(skipped),
                            "files": {item.path: _file_hash(item.path) for item in config.train_data}}
        atomic_write_text(stage / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        history = "\n".join(json.dumps(entry) for entry in trainer.state.log_history) + "\n"
        atomic_write_text(stage / "metrics.jsonl", history)
        if config.method != "vanilla":
            directions.save(stage / "directions")
        logger.info("training finished in %.1f s", time.time() - start)
    return out


def _trainer_args(config: RunConfig, stage: Path, progress: bool):
    from procon.trainer import ProConConfig

    return ProConConfig(
        output_dir=str(stage / "checkpoints"),
        procon_method=config.method,
        procon_alpha=config.alpha,
        procon_warmup_epochs=config.warmup_epochs,
        procon_layers=config.layers,
        learning_rate=config.training.learning_rate,
        num_train_epochs=config.training.epochs,
        per_device_train_batch_size=config.training.batch_size,
        gradient_accumulation_steps=config.training.gradient_accumulation_steps,
        logging_steps=config.training.logging_steps,
        save_strategy="epoch" if config.training.save_every_epoch else "no",
        save_only_model=True,
        report_to=config.training.report_to,
        seed=config.training.seed,
        activation_checkpointing=config.training.gradient_checkpointing,
        bf16=config.training.bf16,
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
    )


def _model_fingerprint(model_id: str, memo_dir: Path | None = None) -> str:
    """Identify the model weights for the anchors cache by a SHA-256 of each weight file's content.

    Hashing reads every weight file once (seconds for a 7B model); the hash is remembered in
    `memo_dir` under the file's path, size and mtime, so later runs of a grid skip the read.
    A model id that is not a local directory (a hub id) is used as it is.
    """
    path = Path(model_id)
    if not path.is_dir():
        return model_id
    memo_path = memo_dir / "weight-hashes.json" if memo_dir else None
    memo: dict[str, str] = {}
    if memo_path and memo_path.is_file():
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
    hashes = []
    for weight in sorted(path.iterdir()):
        if weight.suffix not in (".safetensors", ".bin") or not weight.is_file():
            continue
        stat = weight.stat()
        key = f"{weight.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in memo:
            memo[key] = sha256_file(str(weight))
        hashes.append(f"{weight.name}:{memo[key]}")
    if memo_path:
        try:
            atomic_write_text(memo_path, json.dumps(memo, indent=1))
        except OSError as exc:
            logger.warning("cannot write %s (%s); weight hashes will be computed again", memo_path, exc)
    return "|".join(hashes) or str(path.resolve())


def _save_anchors_cache(anchors, cache: Path) -> None:
    # The rename makes sure an interrupted save never leaves a truncated cache file.
    from procon.io import atomic_write

    try:
        atomic_write(cache, lambda tmp: anchors.save(Path(tmp)), suffix=".safetensors")
    except OSError as exc:
        logger.warning("cannot write anchors cache %s (%s); continuing without it", cache, exc)


def _file_hash(path: str) -> str | None:
    return sha256_file(path) if Path(path).is_file() else None


def epoch_checkpoints(run_dir: Path) -> list[Path]:
    """Per-epoch adapter checkpoints of a run, in training order."""
    checkpoints = [c for c in (run_dir / "checkpoints").glob("checkpoint-*")
                   if c.name.split("-", 1)[1].isdigit() and (c / "adapter_config.json").is_file()]
    return sorted(checkpoints, key=lambda c: int(c.name.split("-", 1)[1]))

