"""A small columnar table of records (one row per observation): CSV, JSON and pandas export.

Columns are numpy arrays of equal length, so a million alignment records cost a few arrays,
not a million dicts. Integer columns listed in `nullable` use -1 for "not applicable" (a K or
V weight has no head); exports show those as empty (CSV), null (JSON) or <NA> (pandas).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from surgery.errors import SurgeryError
from surgery.files import write_atomic


class Table:
    """Equal-length named columns; rows are records."""

    def __init__(self, columns: Mapping[str, Sequence], nullable: Iterable[str] = ()):
        self.columns = {name: _array(values) for name, values in columns.items()}
        lengths = {name: len(v) for name, v in self.columns.items()}
        if len(set(lengths.values())) > 1:
            raise SurgeryError(f"columns differ in length: {lengths}")
        self.nullable = tuple(n for n in nullable if n in self.columns)

    # ---- access ----------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(f"no column {name!r}; columns: {', '.join(self.columns)}") from None

    def __iter__(self):
        return iter(self.rows())

    def row(self, i: int) -> dict:
        return {name: self._value(name, col[i]) for name, col in self.columns.items()}

    def rows(self) -> list[dict]:
        """Every row as a dict of plain Python values (None where not applicable)."""
        return [self.row(i) for i in range(len(self))]

    def _value(self, name, v):
        if isinstance(v, np.generic):
            v = v.item()
        if name in self.nullable and v == -1:
            return None
        if isinstance(v, float) and math.isnan(v):
            return None
        return v

    # ---- selection -------------------------------------------------------------------------------
    def take(self, index) -> "Table":
        """Rows at the given integer positions or boolean mask, in that order."""
        index = np.asarray(index)
        return Table({n: c[index] for n, c in self.columns.items()}, self.nullable)

    def where(self, **equal) -> "Table":
        """Rows whose columns equal the given values (`t.where(weight="K", block=1)`)."""
        mask = np.ones(len(self), dtype=bool)
        for name, value in equal.items():
            mask &= self[name] == value
        return self.take(mask)

    def sort(self, *by: str, descending: Sequence[bool] | bool = False) -> "Table":
        """Rows sorted by the given columns (first is the primary key); stable."""
        if isinstance(descending, bool):
            descending = [descending] * len(by)
        order = np.arange(len(self))
        for name, desc in reversed(list(zip(by, descending))):
            keys = self[name][order]
            if desc:
                # Reverse a stable ascending sort of reversed keys: still stable on ties.
                step = np.argsort(keys[::-1], kind="stable")[::-1]
                step = len(keys) - 1 - step
            else:
                step = np.argsort(keys, kind="stable")
            order = order[step]
        return self.take(order)

    def head(self, n: int = 10) -> "Table":
        return self.take(np.arange(min(n, len(self))))

    @staticmethod
    def concat(tables: Sequence["Table"]) -> "Table":
        tables = [t for t in tables if t.columns]
        if not tables:
            return Table({})
        names = tables[0].names
        for t in tables[1:]:
            if t.names != names:
                raise SurgeryError(f"tables have different columns: {names} vs {t.names}")
        return Table({n: np.concatenate([t[n] for t in tables]) for n in names}, tables[0].nullable)

    # ---- export ------------------------------------------------------------------------------------
    def to_csv(self, path: str | Path | None = None) -> str:
        """CSV text (and written to path if given); floats keep full precision."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.names)
        for r in self.rows():
            w.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in r.values()])
        text = buf.getvalue()
        if path is not None:
            write_atomic(path, text)  # a reader never sees half a table
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        """A JSON list of row objects (and written to path if given)."""
        text = json.dumps(self.rows(), indent=None, allow_nan=False)
        if path is not None:
            write_atomic(path, text)  # a reader never sees half a table
        return text

    def to_pandas(self):
        """A pandas DataFrame (pandas is optional: imported only here)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas needs pandas: pip install pandas") from None
        df = pd.DataFrame({n: c for n, c in self.columns.items()})
        for n in self.nullable:
            df[n] = df[n].astype("Int64").mask(df[n] == -1)
        return df

    def __repr__(self) -> str:
        return f"Table({len(self)} rows: {', '.join(self.names)})\n{self.format(10)}"

    def format(self, n: int = 10, columns: Sequence[str] | None = None) -> str:
        """The first n rows as aligned text."""
        columns = list(columns or self.names)
        cells = [columns] + [[_cell(r[c]) for c in columns] for r in self.head(n).rows()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        lines = ["  ".join(s.rjust(w) for s, w in zip(row, widths)) for row in cells]
        if len(self) > n:
            lines.append(f"... {len(self) - n} more rows")
        return "\n".join(lines)


def _array(values) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values
    values = list(values)
    if values and all(isinstance(v, str) for v in values):
        return np.array(values, dtype=object)
    return np.asarray(values) if values else np.array([], dtype=object)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if (abs(v) < 1e-3 and v != 0) else f"{v:.3f}"
    return str(v)
