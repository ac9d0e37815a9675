"""Making and writing a matplotlib figure the same way for every plot tcl_fast makes.

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure``,
rendered by Agg when saved), not through ``pyplot``: a library call must not switch
the caller's backend (``matplotlib.use``) or leave figures in pyplot's registry, and
``pyplot``'s import, which resolves a backend, took 0.5 s of every training or
evaluation process that writes a plot.
"""
from __future__ import annotations

import os


def new_axes(figsize: tuple[float, float] = (5.5, 4)):
    """A fresh figure of ``figsize`` inches and its one axes: ``(fig, ax)``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def save_figure(fig, path: str) -> str:
    """Lay ``fig`` out, write it to ``path`` (creating its folder) at 120 dpi and
    return ``path``. The figure belongs to no pyplot manager, so nothing is left
    open when the caller drops it."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
