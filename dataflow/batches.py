"""Batch formats: Arrow in, the model's format through, Arrow out.

    pyarrow.RecordBatch ──to_format──► pandas.DataFrame | pyarrow.Table | {col: np.ndarray} | {col: torch.Tensor}
                                                 │ predict
                                                 ▼
    pyarrow.Table ◄──to_table── DataFrame | Series | Table | RecordBatch | dict of arrays | ndarray | Tensor

Conversions avoid copies where Arrow allows (numeric columns without nulls become numpy views).
An unnamed output (a Series, an array, a tensor) becomes the column `predict.output_column`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .exceptions import PredictError


def to_format(batch: pa.RecordBatch | pa.Table, fmt: str) -> Any:
    """The batch in `fmt` (pandas, pyarrow, numpy, torch)."""
    if fmt == "pyarrow":
        return pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    if fmt == "pandas":
        return batch.to_pandas()
    arrays = {name: _to_numpy(batch.column(i), name) for i, name in enumerate(batch.schema.names)}
    if fmt == "numpy":
        return arrays
    if fmt == "torch":
        import torch

        out = {}
        for name, arr in arrays.items():
            if arr.dtype == object or arr.dtype.kind in "USM":
                raise PredictError(f"batch_format torch: column {name!r} has type "
                                   f"{batch.schema.field(name).type}, which has no tensor form; "
                                   f"drop it from source.columns or use batch_format numpy/pandas")
            if not arr.flags.writeable:
                arr = arr.copy()  # torch warns on read-only memory and may write through views
            out[name] = torch.from_numpy(arr)
        return out
    raise ValueError(f"unknown batch format {fmt!r}")


def _to_numpy(col: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col.to_numpy(zero_copy_only=False)


def to_table(output: Any, num_rows: int, output_column: str = "prediction") -> pa.Table:
    """Arrow table from whatever predict returned; checks it has one row per input row."""
    table = _as_table(output, output_column)
    if table.num_rows != num_rows:
        raise PredictError(f"predict returned {table.num_rows} rows for a batch of {num_rows}; "
                           f"it must return one row per input row")
    return table


def _as_table(output: Any, name: str) -> pa.Table:
    if isinstance(output, pa.Table):
        return output
    if isinstance(output, pa.RecordBatch):
        return pa.Table.from_batches([output])
    mod = type(output).__module__.split(".")[0]
    if mod == "pandas":
        import pandas as pd

        if isinstance(output, pd.Series):
            return pa.table({output.name if isinstance(output.name, str) else name: pa.array(output)})
        if isinstance(output, pd.DataFrame):
            return pa.Table.from_pandas(output, preserve_index=False)
    if mod == "torch":
        return pa.table({name: _column(output)})
    if isinstance(output, np.ndarray):
        if output.ndim == 2 and output.shape[1] > 1:
            return pa.table({f"{name}_{i}": output[:, i] for i in range(output.shape[1])})
        return pa.table({name: output.reshape(-1) if output.ndim == 2 else output})
    if isinstance(output, dict):
        return pa.table({str(k): _column(v) for k, v in output.items()})
    if isinstance(output, (list, pa.Array, pa.ChunkedArray)):
        return pa.table({name: output})
    raise PredictError(f"predict returned a {type(output).__name__}; expected a DataFrame, "
                       f"Series, Arrow table, dict of columns, numpy array or tensor")


def _column(value: Any) -> Any:
    if type(value).__module__.split(".")[0] == "torch":
        value = value.detach().cpu().numpy()
        if value.ndim == 2 and value.shape[1] == 1:
            value = value.reshape(-1)
    if isinstance(value, np.ndarray) and value.ndim > 1:
        return pa.array(list(value))
    return value


def add_columns(table: pa.Table, batch: pa.RecordBatch | pa.Table, keep: list[str]) -> pa.Table:
    """The predictions with the input columns to keep (an id, say) in front of them."""
    if not keep:
        return table
    clash = [c for c in keep if c in table.column_names]
    if clash:
        raise PredictError(f"predict.keep_columns {clash} clash with the model's output columns "
                           f"{table.column_names}; rename the output or keep other columns")
    columns = [batch.column(batch.schema.get_field_index(c)) for c in keep]
    return pa.Table.from_arrays(columns + list(table.columns), names=list(keep) + table.column_names)


def column_sums(table: pa.Table) -> dict[str, float]:
    """Sum of every numeric or boolean output column (for the per-shard report line)."""
    import pyarrow.compute as pc

    sums: dict[str, float] = {}
    for name, col in zip(table.column_names, table.columns):
        t = col.type
        if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t):
            s = pc.sum(col.cast(pa.int64()) if pa.types.is_boolean(t) else col).as_py()
            sums[name] = s if s is not None else 0
    return sums
