"""Tests for text and Markdown tables and the heatmap PNG writer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from procon.report import format_markdown_table, format_table, plot_heatmap

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

ROWS = [
    {"method": "base", "asr": 0.0512, "n": 520, "note": "reference"},
    {"method": "lora", "asr": 0.43, "n": 520, "note": None},
    {"method": "procon-long-name", "asr": float("nan"), "n": 8},
]


# Plain-text table

def test_table_layout():
    lines = format_table(ROWS).splitlines()
    assert len(lines) == 5
    assert lines[0].split() == ["method", "asr", "n", "note"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["base", "0.051", "520", "reference"]
    assert lines[3].split() == ["lora", "0.430", "520", "n/a"]
    assert lines[4].split() == ["procon-long-name", "n/a", "8", "n/a"]


def test_table_columns_align():
    lines = format_table(ROWS).splitlines()
    # Text columns start at the same offset and numeric columns end at the same offset.
    note_start = lines[0].index("note")
    assert lines[2].index("reference") == note_start
    assert lines[3].index("n/a", note_start - 1) == note_start
    asr_end = lines[0].index("asr") + len("asr")
    assert lines[2].index("0.051") + len("0.051") == asr_end
    assert lines[3].index("0.430") + len("0.430") == asr_end
    widths = [len(dashes) for dashes in lines[1].split("  ")]
    assert widths == [len("procon-long-name"), len("0.051"), len("520"), len("reference")]


def test_table_selected_columns_and_format():
    text = format_table(ROWS, columns=["asr", "method"], float_format="{:.1%}")
    lines = text.splitlines()
    assert lines[0].split() == ["asr", "method"]
    assert lines[2].split() == ["5.1%", "base"]
    assert "note" not in text


def test_table_missing_values():
    text = format_table([{"a": None, "b": float("nan"), "c": np.float32("nan")}, {"a": 1}])
    lines = text.splitlines()
    assert lines[2].split() == ["n/a", "n/a", "n/a"]
    assert lines[3].split() == ["1", "n/a", "n/a"]


def test_table_value_types():
    text = format_table([{"flag": True, "count": np.int64(3), "score": np.float64(0.5), "text": "two\nlines"}])
    assert text.splitlines()[2].split() == ["True", "3", "0.500", "two", "lines"]


def test_table_empty_inputs():
    assert format_table([]) == ""
    assert format_table([], columns=["a", "bb"]).splitlines() == ["a  bb", "-  --"]


# Markdown table

def test_markdown_shape():
    lines = format_markdown_table(ROWS).splitlines()
    assert len(lines) == 5
    for line in lines:
        assert line.startswith("| ")
        assert line.endswith(" |")
        assert line.count("|") == 5
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == ["method", "asr", "n", "note"]
    separators = [cell.strip() for cell in lines[1].strip("|").split("|")]
    assert separators[0].strip("-") == ""
    assert separators[1].endswith(":")
    assert separators[2].endswith(":")
    assert not separators[3].endswith(":")
    assert [cell.strip() for cell in lines[3].strip("|").split("|")] == ["lora", "0.430", "520", "n/a"]


def test_markdown_rows_equal_width():
    lines = format_markdown_table(ROWS).splitlines()
    assert len({len(line) for line in lines}) == 1


def test_markdown_escapes_pipe():
    text = format_markdown_table([{"name": "a|b", "value": 1.0}])
    assert "a\\|b" in text
    assert text.splitlines()[2].count(" | ") == 1


def test_markdown_empty_rows():
    assert format_markdown_table([]) == ""
    assert format_markdown_table([], columns=["x"]).splitlines() == ["| x   |", "| --- |"]


# Heatmap

def read_png(path):
    import matplotlib.image

    return matplotlib.image.imread(path, format="png")


def test_heatmap_writes_png(tmp_path):
    matrix = np.linspace(0.2, 1.0, 2 * 12).reshape(2, 12)
    path = tmp_path / "plots" / "cosine.png"
    plot_heatmap(matrix, ["lora", "procon"], list(range(12)), path, title="Refusal direction drift")

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = read_png(path)
    height, width = pixels.shape[:2]
    assert width > height  # 12 layer columns and 2 rows give a wide figure.
    assert [entry.name for entry in path.parent.iterdir()] == ["cosine.png"]


def test_heatmap_tall_grid_is_taller(tmp_path):
    path = tmp_path / "tall.png"
    plot_heatmap(np.zeros((30, 2)), [f"step {i}" for i in range(30)], ["0", "1"], path, title="tall", vmin=-1.0)
    height, width = read_png(path).shape[:2]
    assert height > width


def test_heatmap_nan_cell(tmp_path):
    matrix = [[1.0, float("nan"), 0.5], [0.9, 0.8, float("nan")]]
    path = tmp_path / "nan.png"
    plot_heatmap(matrix, ["a", "b"], ["0", "1", "2"], path, title="with gaps", vmin=0.0)
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_heatmap_all_nan(tmp_path):
    path = tmp_path / "all-nan.png"
    plot_heatmap([[math.nan, math.nan]], ["a"], ["0", "1"], path, title="empty", vmax=None)
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_heatmap_large_grid_unannotated(tmp_path):
    path = tmp_path / "large.png"
    matrix = np.random.default_rng(0).uniform(-1, 1, size=(8, 40))
    plot_heatmap(matrix, list(range(8)), list(range(40)), path, title="large", vmin=-1.0)
    assert read_png(path).shape[1] > read_png(path).shape[0]


def test_heatmap_replaces_existing_file(tmp_path):
    path = tmp_path / "map.png"
    path.write_bytes(b"old")
    plot_heatmap([[0.5]], ["a"], ["0"], path, title="one cell")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_heatmap_rejects_bad_shapes(tmp_path):
    path = tmp_path / "bad.png"
    with pytest.raises(ValueError, match="2-D"):
        plot_heatmap([1.0, 2.0], ["a"], ["0", "1"], path, title="1-D")
    with pytest.raises(ValueError, match="row labels"):
        plot_heatmap([[1.0, 2.0]], ["a", "b"], ["0", "1"], path, title="rows")
    with pytest.raises(ValueError, match="column labels"):
        plot_heatmap([[1.0, 2.0]], ["a"], ["0"], path, title="columns")
    with pytest.raises(ValueError, match="vmin"):
        plot_heatmap([[1.0, 2.0]], ["a"], ["0", "1"], path, title="range", vmin=2.0, vmax=1.0)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_outputs_readable_like_plain_files(tmp_path):
    import os
    import stat

    from procon.io import atomic_write_text, staged_dir

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        plot_heatmap([[0.5]], ["r"], [0], tmp_path / "h.png", title="t")
        with staged_dir(tmp_path / "d") as stage:
            (stage / "f").write_text("y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "h.png").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
