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

__all__ = ["COLUMN_TYPES", "HISTOGRAM_COLUMNS", "SUMMARY_COLUMNS", "TABLES", "TableSpec", "arrow_schema", "columns", "spec"]

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
    MONITOR: {
        "weights": TableSpec(("step", "layer", "param", "channel"), SUMMARY_COLUMNS, order="step"),
        "grads": TableSpec(("step", "layer", "param", "channel"), SUMMARY_COLUMNS, order="step"),
        "features": TableSpec(("step", "layer", "channel"), SUMMARY_COLUMNS, order="step"),
        "gradients": TableSpec(("step", "layer", "channel", "stat"), SUMMARY_COLUMNS, order="step"),
        "histograms": TableSpec(("table", "step", "layer", "param"), ("left", "right", "count"), order="step"),
    },
    COMPARE: {
        # a, b: the labels of the pair's sources (manifest "sources"); status: what the row holds
        # (nndist.stats.weightstats.COMPARE_STATUSES); rows ranked most changed first.
        "compare": TableSpec(("a", "b", "tensor"), COMPARE_COLUMNS[1:] + ("status",)),
        # The histogram of every summarised tensor of every source, on the fixed global edges.
        "histograms": TableSpec(("source", "tensor"), HISTOGRAM_COLUMNS[7:]),
    },
}

#: Column types of the tables written in parts (a monitor's), so that every part has the same
#: schema whatever its values (a part whose ``channel`` is all null is still int64). Columns not
#: named here are float64.
COLUMN_TYPES: dict[str, str] = {
    "step": "int64", "channel": "int64", "n": "int64", "nonfinite": "int64", "count": "int64",
    "layer": "string", "param": "string", "table": "string", "stat": "string",
}


def spec(kind: str, name: str) -> TableSpec:
    """The :class:`TableSpec` of table ``name`` of a ``kind`` of run."""
    return TABLES[kind][name]


def arrow_schema(kind: str, name: str):  # -> pyarrow.Schema (pyarrow imported on use)
    """The pyarrow schema of table ``name`` of a ``kind`` of run, from :data:`COLUMN_TYPES`."""
    import pyarrow as pa

    return pa.schema([(c, getattr(pa, COLUMN_TYPES.get(c, "float64"))()) for c in TABLES[kind][name].columns])


def columns(kind: str, name: str) -> list[str]:
    """All fixed columns of table ``name`` of a ``kind`` of run, in order."""
    return list(TABLES[kind][name].columns)
