"""File-like readers over S3 the store hands to boto3 and to format readers.

``RangeReader`` lets ONNX and config parsers seek inside an object without downloading it whole;
``CountingReader`` streams an upload forward-only and counts what went through.
"""

from __future__ import annotations

import io
from typing import BinaryIO


class CountingReader:
    """Forward-only (no ``seek``: boto3 then reads it in order) and counts the bytes read."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw, self.size = raw, 0

    def read(self, amount: int = -1) -> bytes:
        data = self._raw.read(amount)
        self.size += len(data)
        return data


class RangeReader(io.RawIOBase):
    """A read-only, seekable view of one S3 object, each read one ``Range`` GET."""

    def __init__(self, client, bucket: str, key: str, size: int) -> None:
        self.client, self.bucket, self.key, self.size, self.position = client, bucket, key, size, 0
        self.name = key  # what error messages call the object (e.g. "model.onnx")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        if self.position >= self.size or len(buffer) == 0:
            return 0
        end = min(self.position + len(buffer), self.size) - 1
        data = self.client.get_object(
            Bucket=self.bucket, Key=self.key, Range=f"bytes={self.position}-{end}"
        )["Body"].read()
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)
