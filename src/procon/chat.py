"""Chat formatting shared by every stage: prompts go through the model's own chat template.

Training examples are tokenized as the templated prompt (with the generation prompt) followed
by the response and the end-of-turn token; only response tokens carry labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from procon.errors import InputError

IGNORE_INDEX = -100


def require_chat_template(tokenizer, model_name: str) -> None:
    """Raise InputError unless the tokenizer has a chat template that renders a user turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"{model_name}: tokenizer has no chat template; expected an aligned chat model "
                         "whose tokenizer_config.json sets chat_template")
    try:
        format_prompt(tokenizer, "test")
    except Exception as exc:  # jinja2 raises several error types for broken templates
        raise InputError(f"{model_name}: the chat template fails on a plain user message "
                         f"({type(exc).__name__}: {exc})") from None


def format_prompt(tokenizer, prompt: str, system_prompt: str | None = None) -> str:
    """Return the chat-templated prompt text, ending where the assistant's reply starts."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, prompt: str, system_prompt: str | None = None) -> list[int]:
    # The template already writes BOS where the model expects it.
    return tokenizer(format_prompt(tokenizer, prompt, system_prompt), add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, prompt: str, response: str, max_length: int,
                   system_prompt: str | None = None) -> dict[str, list[int]]:
    """Tokenize one prompt/response pair with labels on the response and end-of-turn tokens.

    Over-long examples are cut from the right; the prompt is kept whole when it fits so that
    at least one response token keeps its label.
    """
    prompt_ids = encode_prompt(tokenizer, prompt, system_prompt)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


@dataclass
class ChatCollator:
    """Right-pad a list of encoded examples into a batch; extra integer fields become tensors."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        batch: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = width - len(f["input_ids"])
            batch["input_ids"].append(f["input_ids"] + [self.pad_token_id] * pad)
            batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
            batch["labels"].append(f["labels"] + [IGNORE_INDEX] * pad)
        tensors = {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
        for key in features[0]:
            if key not in tensors:
                tensors[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
        return tensors
