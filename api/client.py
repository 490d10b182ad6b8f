"""A small HTTP client for the CLI's client-side commands (PARTVAULT_URL, PARTVAULT_TOKEN)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

CHUNK = 1024 * 1024


class ApiError(Exception):
    """A problem+json answer from the server."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('code', '')}: {problem.get('detail', '')}")
        self.status = status
        self.problem = problem


class Client:
    def __init__(self, url: str, token: str | None, *, timeout: float = 600) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text[:200]}
            raise ApiError(response.status_code, problem)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()


def file_chunks(path: Path, progress: Any = None) -> Iterator[bytes]:
    """Stream a file in 1 MiB chunks, advancing a progress callback."""
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            if progress is not None:
                progress(len(chunk))
            yield chunk
