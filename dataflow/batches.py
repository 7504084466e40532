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
        # Columns convert in parallel; one column would only pay the thread pool's hand-offs.
        return batch.to_pandas(use_threads=batch.num_columns > 1)
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
            s = pc.sum(col).as_py()   # booleans count their trues (no cast: 7x faster per shard)
            sums[name] = s if s is not None else 0
    return sums


# ---------------------------------------------------------------------------------------------
# blocks between stages
#
# A block is what one stage hands the next: an Arrow table, or a dict of numpy arrays (what a
# numpy or torch stage returns). A dict of arrays crosses the object store as out-of-band
# buffers (pickle 5), so N-d arrays (decoded images, embeddings) arrive zero-copy, read-only,
# with no per-row Python objects. Only the sink turns an N-d column into Arrow: a fixed-shape
# tensor column (`arrow.fixed_shape_tensor`), which Parquet keeps and reads back as such.

Block = Any  # pa.Table | dict[str, np.ndarray]


def as_block(output: Any, name: str = "prediction") -> Block:
    """A stage's output as a block: dicts of arrays and tensors stay arrays (no copy), the rest
    becomes an Arrow table."""
    if isinstance(output, dict):
        cols = {str(k): _as_array(v) for k, v in output.items()}
        if all(isinstance(v, np.ndarray) for v in cols.values()):
            _same_length(cols)
            return cols
        return pa.table({k: v if not isinstance(v, np.ndarray) or v.ndim == 1 else tensor_column(v)
                         for k, v in cols.items()})
    if isinstance(output, np.ndarray) or type(output).__module__.split(".")[0] == "torch":
        return {name: _as_array(output)}
    return _as_table(output, name)


def _as_array(v: Any) -> Any:
    if type(v).__module__.split(".")[0] == "torch":
        return v.detach().cpu().numpy()
    if isinstance(v, list):
        return np.asarray(v)
    return v


def _same_length(cols: dict) -> None:
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise PredictError(f"the batch returned has columns of different lengths: {lengths}")


def block_rows(block: Block) -> int:
    if isinstance(block, dict):
        return len(next(iter(block.values()))) if block else 0
    return block.num_rows


def block_bytes(block: Block | None) -> int:
    """Bytes the block's buffers hold (Arrow's nbytes; a dict's arrays' nbytes)."""
    if block is None:
        return 0
    if isinstance(block, dict):
        return sum(getattr(v, "nbytes", 0) for v in block.values())
    return block.nbytes


def slice_block(block: Block, start: int, stop: int) -> Block:
    if isinstance(block, dict):
        return {k: v[start:stop] for k, v in block.items()}
    return block.slice(start, stop - start)


def take_rows(block: Block, rows: list[int]) -> pa.Table:
    """Rows of a block, as an Arrow table (for the quarantine)."""
    idx = np.asarray(rows, dtype=np.int64)
    if isinstance(block, dict):
        return block_table({k: v[idx] for k, v in block.items()})
    return block.take(pa.array(idx))


def concat_blocks(blocks: list[Block]) -> Block:
    if not blocks:
        return pa.table({})
    if len(blocks) == 1:
        return blocks[0]
    if all(isinstance(b, dict) for b in blocks) and len({tuple(b) for b in blocks}) == 1:
        return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    tables = [block_table(b) for b in blocks]
    return pa.concat_tables(tables, promote_options="permissive")


def tensor_column(arr: np.ndarray) -> pa.Array:
    """An N-d array (N rows of shape ...) as an Arrow fixed-shape tensor column."""
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arr))


def block_table(block: Block) -> pa.Table:
    """A block as an Arrow table (what a sink writes): N-d columns become fixed-shape tensors."""
    if not isinstance(block, dict):
        return block
    cols = {}
    for k, v in block.items():
        if isinstance(v, np.ndarray) and v.ndim > 1:
            cols[k] = tensor_column(v)
        else:
            cols[k] = v
    return pa.table(cols)


def block_format(block: Block, fmt: str) -> Any:
    """A block in a stage's batch format (pandas, pyarrow, numpy, torch)."""
    if isinstance(block, dict):
        if fmt == "numpy":
            return block
        if fmt == "torch":
            import torch

            # torch warns on read-only memory (the store's) and may write through views: copy.
            return {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in block.items()}
        table = block_table(block)
        return to_format(table, fmt)
    if fmt == "numpy":
        return {name: _tensor_or_numpy(block.column(i), name) for i, name in enumerate(block.schema.names)}
    if fmt == "torch":
        import torch

        arrays = block_format(block, "numpy")
        return {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in arrays.items()}
    return to_format(block, fmt)


def _tensor_or_numpy(col: Any, name: str) -> np.ndarray:
    if isinstance(col.type, pa.FixedShapeTensorType):
        chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
        arrays = [c.to_numpy_ndarray() for c in chunks]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return _to_numpy(col, name)
