"""Spooling a streamed request body to a private file, never holding it in memory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import anyio
from litestar import Request

from inventory.errors import PayloadTooLarge


async def spool_body(request: Request[Any, Any, Any], folder: Path, limit: int) -> Path:
    """Write the body to a 0600 file in `folder`; refuse (and delete it) past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix="upload-")  # mode 0600
    os.close(fd)
    path = Path(name)
    try:
        async with await anyio.open_file(path, "wb") as out:
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise _too_large(limit)
                await out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the design exceeds the upload limit of {limit} bytes", code="design-too-large"
    )
