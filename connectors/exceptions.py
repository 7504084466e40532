"""The errors `connectors` raises: one root, four kinds, stdlib only.

    ConnectorError
    ├── SourceError    the input is not what was asked for: missing path or bucket, no Parquet
    │                  files under a prefix, a corrupt or truncated file
    ├── SchemaError    columns: a requested column is missing, files disagree on their schema,
    │                  a batch does not match the part it is written into
    ├── SinkError      the destination refuses the write: not empty in mode "error", a part
    │                  written twice, a manifest of another format
    └── StorageError   talking to the store failed: denied credentials, endpoint down, throttled
                       past the retry budget, any other foreign I/O error

Foreign errors (botocore, pyarrow, OSError) are wrapped at the boundary with the URI and the
cause, and chained with ``raise ... from exc`` so the original stays in ``__cause__``.
Messages never contain credentials.
"""

from __future__ import annotations

__all__ = ["ConnectorError", "SchemaError", "SinkError", "SourceError", "StorageError"]


class ConnectorError(Exception):
    """Root of every error raised by `connectors`."""


class SourceError(ConnectorError):
    """A Parquet source cannot be planned or read as asked."""


class SchemaError(ConnectorError, ValueError):
    """Columns or schemas do not match what was requested or already written."""


class SinkError(ConnectorError):
    """A sink cannot write or commit a part."""


class StorageError(ConnectorError, OSError):
    """The storage backend (local disk, S3, ...) failed or refused a request."""
