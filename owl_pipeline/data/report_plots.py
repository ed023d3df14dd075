"""Histograms of the filter scores, all rows vs kept rows, as one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_filter_histograms(panels: dict[str, np.ndarray], keep: np.ndarray, path: str | Path) -> Path:
    """One histogram per panel (name -> a value per row, NaN where missing), all rows beside kept rows."""
    figure, axes = plt.subplots(2, 3, figsize=(12, 6))
    for axis, (name, values) in zip(axes.ravel(), panels.items()):
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
