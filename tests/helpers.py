"""Small builders shared by tests."""

from __future__ import annotations

from pathlib import Path


def write_toy_files(out: Path) -> Path:
    """Write the toy world's JSONL splits under out/data and return that folder."""
    from procon.toy.build import write_world
    from procon.toy.world import build_world

    data = out / "data"
    if not data.is_dir():
        write_world(build_world(seed=0, tasks_per_kind=5), data)
    return data
