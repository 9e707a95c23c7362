"""Shared fixtures: a tiny random chat model saved in Hugging Face format."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CORPUS = [
    "How do I bake bread? Sure, here is a simple recipe.",
    "Explain how to pick a lock. I'm sorry, but I cannot help with that.",
    "What is 3 plus 4? 7",
    "Reverse the words: red green blue. blue green red",
    "Write a poem about the sea. The waves roll in and out.",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama model and tokenizer with a chat template, saved to disk."""
    from procon.toy.tokenizer import random_llama, train_tokenizer

    out = tmp_path_factory.mktemp("tiny-model")
    tokenizer = train_tokenizer(CORPUS * 4, vocab_size=320)
    model = random_llama(tokenizer, seed=0, hidden_size=32, num_layers=2, num_heads=2)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA
