"""The columns of every table in a run directory.

Each table has its key columns (what a row is about) and, for summary tables, the summary
columns of :data:`nndist.stats.SUMMARY_COLUMNS`. The writer orders rows by these keys; the reader
checks that a table has them; ``docs/CONTRACTS.md`` lists them (checked by a test).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..stats.summary import SUMMARY_COLUMNS
from ..stats.weightstats import COMPARE_COLUMNS
from .layout import COMPARE, GRADIENTS, MONITOR, REPRODUCE

__all__ = ["HISTOGRAM_COLUMNS", "SUMMARY_COLUMNS", "TABLES", "TableSpec", "columns", "spec"]

#: One row per non-empty bin of a summary's histogram, on the fixed global edges.
HISTOGRAM_COLUMNS: tuple[str, ...] = ("table", "init", "seed", "layer", "param", "input", "stage", "left", "right", "count")


@dataclass(frozen=True)
class TableSpec:
    """A table's columns.

    Attributes:
        keys: the columns that say what a row is about, in order.
        values: the other fixed columns (``SUMMARY_COLUMNS`` for summary tables).
        order: the key that orders rows first (``stage``, ``step``, ``epoch``) before the run order.
    """

    keys: tuple[str, ...]
    values: tuple[str, ...]
    order: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return self.keys + self.values


#: Every table of every kind of run: ``TABLES[kind][name]``. A kind's tables are its own (a
#: monitor's ``weights`` table is not a reproduce run's).
TABLES: dict[str, dict[str, TableSpec]] = {
    REPRODUCE: {
        "loss": TableSpec(("init", "seed", "epoch", "step"), ("loss",), order="step"),
        "accuracy": TableSpec(("init", "seed", "epoch", "split"), ("accuracy", "loss"), order="epoch"),
        "weights": TableSpec(("init", "seed", "layer", "param", "stage"), SUMMARY_COLUMNS, order="stage"),
        "features": TableSpec(("init", "seed", "layer", "input", "stage"), SUMMARY_COLUMNS, order="stage"),
        "histograms": TableSpec(HISTOGRAM_COLUMNS[:7], HISTOGRAM_COLUMNS[7:], order="stage"),
        "shifts": TableSpec(("table", "init", "seed", "layer", "param", "input"), ("wasserstein", "ks")),
    },
    GRADIENTS: {
        "gradients": TableSpec(("layer", "channel", "stat"), SUMMARY_COLUMNS),
    },
    COMPARE: {
        # a, b: the labels of the pair's sources (manifest "sources"); status: what the row holds
        # (nndist.stats.weightstats.COMPARE_STATUSES); rows ranked most changed first.
        "compare": TableSpec(("a", "b", "tensor"), COMPARE_COLUMNS[1:] + ("status",)),
        # The histogram of every summarised tensor of every source, on the fixed global edges.
        "histograms": TableSpec(("source", "tensor"), HISTOGRAM_COLUMNS[7:]),
    },
}

# --- provisional: the tables of a monitor run, as the monitor is being written (to be reconciled
# with nndist.Monitor). Whole-tensor rows have a null channel.
TABLES[MONITOR] = {
    "weights": TableSpec(("step", "layer", "param", "channel"), SUMMARY_COLUMNS, order="step"),
    "grads": TableSpec(("step", "layer", "param", "channel"), SUMMARY_COLUMNS, order="step"),
    "features": TableSpec(("step", "layer", "param", "channel"), SUMMARY_COLUMNS, order="step"),
    "histograms": TableSpec(("table", "step", "layer", "param", "channel"), HISTOGRAM_COLUMNS[7:], order="step"),
}


def spec(kind: str, name: str) -> TableSpec:
    """The :class:`TableSpec` of table ``name`` of a ``kind`` of run."""
    return TABLES[kind][name]


def columns(kind: str, name: str) -> list[str]:
    """All fixed columns of table ``name`` of a ``kind`` of run, in order."""
    return list(TABLES[kind][name].columns)
