"""Logging and printing shared by the CLI commands: rich on a terminal, plain lines in a log file."""

from __future__ import annotations

import logging

import numpy as np
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

console = Console()

_NOISY = ("adapters", "transformers", "httpx", "urllib3", "filelock")


def configure_logging(verbose: bool = False) -> None:
    """Our INFO lines (stages, epochs, examples/s) on; the libraries' chatter off unless --verbose."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)], force=True)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def matrix_table(marketplaces: list[str], matrix: np.ndarray, title: str = "ROC-AUC R[t][k]") -> Table:
    """Rows: after learning marketplace t; columns: evaluated on marketplace k."""
    table = Table(title=escape(title))
    table.add_column("after \\ on", style="bold")
    for name in marketplaces:
        table.add_column(name, justify="right")
    for t, name in enumerate(marketplaces):
        table.add_row(name, *("" if np.isnan(v) else f"{v:.4f}" for v in matrix[t]))
    return table
