"""An upload where it waits: in the file werkzeug spooled it to, on disk (under /tmp, which SPOOL_MB sizes), not in
the worker's memory.

A request reads its upload's bytes twice: once to read the header, before its plan exists (one request at a time,
``Service.prepare``), and once it runs, inside its reservation (``Plan.host_bytes`` counts them). In between, in the
queue, it holds a file descriptor and no bytes: QUEUE_SIZE requests with uploads of MAX_UPLOAD_BYTES each take
nothing of the worker's memory budget.
"""
from __future__ import annotations

import os
import weakref
from typing import IO


class SpooledUpload:
    """The bytes of a spooled upload, read whole on each ``read``."""

    def __init__(self, file: IO[bytes]) -> None:
        # A descriptor of its own: the request closes its files once the view returns, before the page's stream
        # runs the image. fileno() writes an upload still in werkzeug's memory (under 500 KB) to its file.
        self._descriptor = os.dup(file.fileno())
        weakref.finalize(self, os.close, self._descriptor)
        self.size = os.fstat(self._descriptor).st_size

    def read(self) -> bytes:
        return os.pread(self._descriptor, self.size, 0)


# What a request's upload is: its bytes (a caller without a queue: the CLI, the benchmarks) or its spool file.
Upload = bytes | SpooledUpload


def upload_size(upload: Upload) -> int:
    return len(upload) if isinstance(upload, bytes) else upload.size


def upload_bytes(upload: Upload) -> bytes:
    """The bytes of ``upload``, read from its file where it waits in one."""
    return upload if isinstance(upload, bytes) else upload.read()
