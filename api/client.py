"""A small HTTP client for the CLI's client-side commands (PARTVAULT_URL, PARTVAULT_TOKEN)."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inventory.db import utcnow
from licensing.tokens import make_proof

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
            raise _api_error(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def save(self, path: str, destination: Path, **kwargs: Any) -> int:
        """GET `path` into `destination`, streamed; the file appears only once complete
        (a temporary file next to it, renamed). The number of bytes written."""
        with self.http.stream("GET", path, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                raise _api_error(response)
            fd, partial = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
                os.replace(partial, destination)
            except BaseException:
                Path(partial).unlink(missing_ok=True)
                raise
        return destination.stat().st_size


def _api_error(response: httpx.Response) -> ApiError:
    try:
        problem = response.json()
    except ValueError:
        problem = {"detail": response.text[:200]}
    return ApiError(response.status_code, problem)


class Bureau:
    """A print bureau's side of the API: every request carries a fresh DPoP proof
    signed with the facility's Ed25519 key, for the URL it is sent to."""

    def __init__(
        self,
        client: Client,
        url: str,
        token: str,
        pop_key: Ed25519PrivateKey,
        *,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client, self.url, self.token, self.pop_key = client, url.rstrip("/"), token, pop_key
        self.pause = pause

    def proof(self, method: str, path: str) -> dict[str, str]:
        htu = self.url + path
        proof = make_proof(self.pop_key, htm=method, htu=htu, access_token=self.token, now=utcnow())
        return {"DPoP": proof}

    def redeem(self, jti: str, licence: str, *, retries: int) -> Any:
        """Redeem one print, safe to retry: one Idempotency-Key for the print and a
        fresh proof per attempt, so an answer lost on the way (a dropped
        connection, a 5xx) is asked for again and never counts a second print.
        A refusal (4xx) is final and raised as `ApiError`."""
        path = f"/v1/licences/{jti}/redeem"
        key = f"redeem-{uuid.uuid4()}"
        attempt = 0
        while True:
            headers = self.proof("POST", path) | {"Idempotency-Key": key}
            try:
                return self.client.json("POST", path, json={"licence": licence}, headers=headers)
            except httpx.TransportError:
                if attempt == retries:
                    raise
            except ApiError as exc:
                if exc.status < 500 or attempt == retries:
                    raise
            self.pause(min(0.5 * 2**attempt, 10.0))
            attempt += 1

    def download(self, serial: str, folder: Path) -> Path:
        """The print job's design (3MF Secure Content, only this facility can open it)
        saved as ``<serial>.3mf`` in `folder`; one of the job's limited fetches."""
        path = f"/v1/jobs/{serial}/design"
        destination = folder / f"{serial}.3mf"
        self.client.save(path, destination, headers=self.proof("GET", path))
        return destination


def file_chunks(path: Path, progress: Any = None) -> Iterator[bytes]:
    """Stream a file in 1 MiB chunks, advancing a progress callback."""
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            if progress is not None:
                progress(len(chunk))
            yield chunk
