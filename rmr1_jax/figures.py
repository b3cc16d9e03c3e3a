"""Writing matplotlib figures: training curves and evaluation charts share one atomic save."""

from __future__ import annotations

import os


def save_figure(fig, path: str) -> str:
    """Lay out, write atomically (a temporary file, then rename) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
