"""Result tables for the terminal and Markdown, and layer-wise heatmaps as PNG files."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Sequence

from procon.io import atomic_write

MISSING = "n/a"
ANNOTATION_MAX_CELLS = 200


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isnan(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _format_cell(value: Any, float_format: str) -> str:
    if _is_missing(value):
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return float_format.format(float(value))
    # Line breaks inside a cell would break the row apart.
    return " ".join(str(value).splitlines())


def _resolve_columns(rows: Sequence[dict], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _table_cells(rows: Sequence[dict], columns: list[str], float_format: str) -> tuple[list[list[str]], list[bool]]:
    """Format every cell and flag the columns to right-align.

    A column is right-aligned when all of its values that are present are numbers. Keys
    absent from a row are shown as missing.
    """
    cells = [[_format_cell(row.get(column), float_format) for column in columns] for row in rows]
    numeric = []
    for column in columns:
        present = [row.get(column) for row in rows if not _is_missing(row.get(column))]
        numeric.append(bool(present) and all(_is_number(value) for value in present))
    return cells, numeric


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, float_format: str = "{:.3f}") -> str:
    """Format `rows` as a plain-text table with a header line and a dashed separator.

    `columns` defaults to every key in the order it first appears. Numbers are
    right-aligned and text is left-aligned. Floats use `float_format`, and None, NaN or a
    missing key is shown as "n/a". Returns "" when there are no columns.
    """
    columns = _resolve_columns(rows, columns)
    if not columns:
        return ""
    cells, numeric = _table_cells(rows, columns, float_format)
    widths = [max([len(column), *(len(line[index]) for line in cells)]) for index, column in enumerate(columns)]

    def render(values: Sequence[str]) -> str:
        parts = []
        for value, width, right in zip(values, widths, numeric):
            parts.append(value.rjust(width) if right else value.ljust(width))
        return "  ".join(parts).rstrip()

    lines = [render(columns), "  ".join("-" * width for width in widths)]
    lines.extend(render(line) for line in cells)
    return "\n".join(lines)


def format_markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None,
                          float_format: str = "{:.3f}") -> str:
    """Format `rows` as a GitHub-flavoured Markdown table.

    Cells follow the rules of `format_table`, and numeric columns get a right-aligned
    separator ("---:"). A "|" inside a cell is escaped. Returns "" when there are no
    columns.
    """
    columns = _resolve_columns(rows, columns)
    if not columns:
        return ""
    cells, numeric = _table_cells(rows, columns, float_format)
    header = [column.replace("|", "\\|") for column in columns]
    body = [[value.replace("|", "\\|") for value in line] for line in cells]
    widths = [max([3, len(name), *(len(line[index]) for line in body)]) for index, name in enumerate(header)]

    def render(values: Sequence[str]) -> str:
        parts = []
        for value, width, right in zip(values, widths, numeric):
            parts.append(value.rjust(width) if right else value.ljust(width))
        return "| " + " | ".join(parts) + " |"

    separator = []
    for width, right in zip(widths, numeric):
        separator.append("-" * (width - 1) + ":" if right else "-" * width)
    lines = [render(header), "| " + " | ".join(separator) + " |"]
    lines.extend(render(line) for line in body)
    return "\n".join(lines)


def plot_heatmap(matrix, row_labels: Sequence[Any], col_labels: Sequence[Any], path: str | os.PathLike,
                 title: str, value_label: str = "cos(r_base, r_tuned)", vmin: float | None = None,
                 vmax: float | None = 1.0, xlabel: str = "layer", ylabel: str = "") -> None:
    """Draw `matrix` as a heatmap and save it as a PNG file at `path`.

    Rows are checkpoints or methods and columns are layers. Cells are annotated with
    their value to 2 decimals when the grid has at most 200 cells. NaN and infinite cells
    are drawn light grey without a label. `vmin` or `vmax` set to None takes the finite minimum
    or maximum of the data. The figure is drawn with the Agg backend without pyplot, so
    it needs no display and leaves the global matplotlib state alone. The file is
    written under a temporary name in the same directory and then renamed.
    """
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = np.asarray(matrix, dtype=float)
    if data.ndim != 2:
        raise ValueError(f"heatmap matrix must be 2-D, got shape {data.shape}")
    n_rows, n_cols = data.shape
    if n_rows == 0 or n_cols == 0:
        raise ValueError(f"heatmap matrix is empty (shape {data.shape})")
    if len(row_labels) != n_rows:
        raise ValueError(f"expected {n_rows} row labels (one per matrix row), got {len(row_labels)}")
    if len(col_labels) != n_cols:
        raise ValueError(f"expected {n_cols} column labels (one per matrix column), got {len(col_labels)}")

    finite = data[np.isfinite(data)]
    if vmin is None:
        vmin = float(finite.min()) if finite.size else 0.0
    if vmax is None:
        vmax = float(finite.max()) if finite.size else 1.0
    if vmin > vmax:
        raise ValueError(f"vmin {vmin} is greater than vmax {vmax}")

    colormap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    masked = np.ma.masked_invalid(data)

    # About 0.6 inch per column and 0.45 inch per row, plus room for labels and colorbar.
    width = max(5.0, 0.6 * n_cols + 2.5)
    height = max(3.0, 0.45 * n_rows + 1.8)
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(masked, cmap=colormap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axes)
    colorbar.set_label(value_label)

    axes.set_title(title)
    axes.set_xticks(range(n_cols), [str(label) for label in col_labels])
    axes.set_yticks(range(n_rows), [str(label) for label in row_labels])
    if xlabel:
        axes.set_xlabel(xlabel)
    if ylabel:
        axes.set_ylabel(ylabel)
    if n_cols > 16:
        axes.tick_params(axis="x", labelrotation=90)

    if data.size <= ANNOTATION_MAX_CELLS:
        _annotate_cells(axes, data, image)

    _save_png_atomically(figure, Path(path))


def _annotate_cells(axes, data, image) -> None:
    """Write each finite value into its cell, dark on light colours and light on dark."""
    import numpy as np

    for row, col in np.ndindex(data.shape):
        value = data[row, col]
        if not np.isfinite(value):
            continue
        red, green, blue, _ = image.cmap(image.norm(value))
        luminance = 0.299 * red + 0.587 * green + 0.114 * blue
        color = "black" if luminance > 0.5 else "white"
        axes.text(col, row, f"{value:.2f}", ha="center", va="center", color=color, fontsize=8)


def _save_png_atomically(figure, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120), suffix=".png")
