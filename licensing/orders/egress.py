"""Outbound HTTP that reaches public addresses only: the webhook SSRF guard.

Registration refuses URLs that name an internal address literally, but a host
name can resolve to one (``hooks.example.com → 10.0.0.5`` or the cloud metadata
service ``169.254.169.254``), now or after a DNS change made later (rebinding).
So the dispatcher's connections go through `PublicOnlyBackend`: at connect
time it resolves the host itself, refuses the connection when *any* address is
not globally routable, and dials the address it vetted, so the name cannot
change between the check and the connection. TLS still verifies the
certificate and sends SNI for the host name of the URL.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import httpx

#: host, port → the addresses the host resolves to.
Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to for TCP, in resolver order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(address: str) -> bool:
    """True for a globally routable unicast address (IPv4-mapped IPv6 judged as IPv4)."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class PublicOnlyBackend(httpcore.SyncBackend):
    """An httpcore network backend that connects only to vetted public addresses."""

    def __init__(self, resolver: Resolver = resolve) -> None:
        self._resolve = resolver

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        address = self.vetted_address(host, port)
        return super().connect_tcp(
            address,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    def vetted_address(self, host: str, port: int) -> str:
        """The address to dial for `host`, or `httpcore.ConnectError` if any is internal."""
        try:
            addresses = self._resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        internal = [a for a in addresses if not is_public(a)]
        if internal or not addresses:
            shown = internal[0] if internal else "nothing"
            raise httpcore.ConnectError(f"{host} resolves to {shown}: not a public address")
        return addresses[0]


def public_only_client(
    *, resolver: Resolver = resolve, headers: dict[str, str] | None = None
) -> httpx.Client:
    """An httpx client whose every connection goes through `PublicOnlyBackend`.

    Proxy settings from the environment are ignored (``trust_env=False``): a
    proxy would resolve names itself, past the guard.
    """
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(  # the one pool option httpx does not expose
        ssl_context=httpx.create_ssl_context(trust_env=False),
        network_backend=PublicOnlyBackend(resolver),
    )
    return httpx.Client(transport=transport, headers=headers, trust_env=False)
