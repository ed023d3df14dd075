"""Histograms of the filter scores, all rows vs kept rows, as one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from owl_pipeline.data.filters import word_counts  # noqa: E402


def _values(table: pa.Table, name: str) -> np.ndarray:
    if name == "caption words":
        return word_counts(table["caption"]).astype(float)
    if name == "min side":
        return np.minimum(table["width"].to_numpy(zero_copy_only=False), table["height"].to_numpy(
            zero_copy_only=False)).astype(float)
    return pc.fill_null(pc.cast(table[name], pa.float64()), np.nan).to_numpy(zero_copy_only=False)


def plot_filter_histograms(table: pa.Table, keep: np.ndarray, path: str | Path) -> Path:
    panels = ["similarity", "nsfw", "watermark", "caption words", "min side", "image_bytes"]
    figure, axes = plt.subplots(2, 3, figsize=(12, 6))
    for axis, name in zip(axes.ravel(), panels):
        values = _values(table, name) if name in table.column_names or " " in name else np.array([])
        finite = np.isfinite(values)
        if finite.any():
            bins = np.histogram_bin_edges(values[finite], bins=30)
            axis.hist(values[finite], bins=bins, color="lightgray", label="all rows")
            axis.hist(values[finite & keep], bins=bins, color="tab:blue", label="kept")
        axis.set_title(name)
    axes[0, 0].legend()
    figure.suptitle(f"filter scores: {int(keep.sum())} of {len(keep)} rows kept")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
