"""Writing a matplotlib figure the same way for every plot tcl_fast makes."""
from __future__ import annotations

import os


def save_figure(fig, path: str) -> str:
    """Lay ``fig`` out, write it to ``path`` (creating its folder) at 120 dpi,
    close it so long runs don't accumulate figures, and return ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
