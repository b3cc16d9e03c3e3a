"""Metrics to TensorBoard event files (tensorboardX, no TensorFlow) and a JSONL log, and PNG
curves drawn from that log."""

from __future__ import annotations

import json
import math
import os
from typing import Iterable

import jax

from rmr1_jax.figures import save_figure


class MetricsLogger:
    def __init__(self, run_dir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(run_dir, exist_ok=True)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(run_dir, "tb"))
            self._f = open(self.path, "a")

    def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        for k, v in clean.items():
            if math.isfinite(v):
                self._tb.add_scalar(f"{prefix}/{k}", v, step)
        self._f.write(json.dumps({"step": step, "split": prefix, **clean}) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._f.close()


def read_metrics(path: str, split: str | None = None) -> list[dict]:
    out = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if split is None or row.get("split") == split:
                out.append(row)
    return out


def plot_curves(path: str, out_png: str, panels: Iterable[tuple[str, str, str]], title: str = "") -> str:
    """One subplot per (split, metric, label) from a metrics JSONL file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(panels)
    rows = read_metrics(path)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (split, key, label) in zip(axes[0], panels):
        pts = [(r["step"], r[key]) for r in rows if r.get("split") == split and key in r]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_png)
