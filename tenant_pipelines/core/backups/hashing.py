"""Content hashes of a table's values, and files' sha256."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class ContentHasher:
    """A digest of a table's values that does not depend on how the rows were cut into batches
    or files, nor on the Parquet encoding: per column, one hash over the null flags, one over
    the fixed-width values (or the string lengths) and one over the string bytes. Keyed with
    HMAC when the backup is encrypted, so that the cleartext manifest gives no way to confirm a
    guess of the data."""

    def __init__(self, schema: pa.Schema, key: bytes | None) -> None:
        self._names = schema.names
        self._key = hmac.new(key, b"tenant-pipelines content hash", hashlib.sha256).digest() if key else None
        self._streams = [[self._new() for _ in range(3)] for _ in schema]

    def _new(self):
        return hmac.new(self._key, digestmod=hashlib.sha256) if self._key else hashlib.sha256()

    def update(self, batch: pa.RecordBatch) -> None:
        for streams, array in zip(self._streams, batch.columns):
            _hash_array(array, streams)

    def hexdigest(self) -> str:
        outer = self._new()
        for name, streams in zip(self._names, self._streams):
            outer.update(name.encode() + b"\0" + b"".join(s.digest() for s in streams))
        return outer.hexdigest()


def _hash_array(array: pa.Array, streams: list) -> None:
    if isinstance(array.type, pa.BaseExtensionType):
        array = array.storage
    n = len(array)
    if n == 0:
        return
    if array.null_count:
        streams[0].update(np.asarray(pc.is_null(array).to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes())
        array = _fill_nulls(array)
    else:
        streams[0].update(b"\0" * n)
    t = array.type
    if pa.types.is_struct(t):
        for i in range(t.num_fields):
            _hash_array(array.field(i), streams)
        return
    if pa.types.is_boolean(t):
        streams[1].update(np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes())
        return
    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        width = np.int64 if (pa.types.is_large_string(t) or pa.types.is_large_binary(t)) else np.int32
        offsets = np.frombuffer(array.buffers()[1], dtype=width)[array.offset: array.offset + n + 1]
        streams[1].update(np.diff(offsets).astype(np.int64).tobytes())
        data = array.buffers()[2]
        if data is not None and offsets[-1] > offsets[0]:
            streams[2].update(memoryview(data)[int(offsets[0]): int(offsets[-1])])
        return
    width = t.byte_width if pa.types.is_fixed_size_binary(t) else t.bit_width // 8
    data = memoryview(array.buffers()[1])
    streams[1].update(data[array.offset * width: (array.offset + n) * width])


def _fill_nulls(array: pa.Array) -> pa.Array:
    t = array.type
    if pa.types.is_struct(t):
        return array  # children are hashed with their own null flags
    if pa.types.is_fixed_size_binary(t):
        zero = pa.scalar(b"\0" * t.byte_width, t)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        zero = pa.scalar("", t)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        zero = pa.scalar(b"", t)
    elif pa.types.is_boolean(t):
        zero = pa.scalar(False)
    elif pa.types.is_decimal(t):
        zero = pa.scalar(0, pa.int64()).cast(t)
    elif pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t) or pa.types.is_duration(t):
        zero = pa.scalar(0, pa.int64()).cast(t)
    else:
        zero = pa.scalar(0, t)
    return pc.fill_null(array, zero)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
