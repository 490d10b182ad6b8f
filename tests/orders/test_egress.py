"""The webhook SSRF guard: only globally routable addresses are dialled."""

from __future__ import annotations

import re

import httpcore
import pytest

from licensing.orders.egress import PublicOnlyBackend, is_public, resolve


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.5", False),
        ("172.16.3.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata service
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:93.184.216.34", True),
    ],
)
def test_only_global_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(address) is public


def _resolver(table: dict[str, list[str]]):
    def lookup(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("Name or service not known")
        return table[host]

    return lookup


def test_a_host_with_any_internal_address_is_refused() -> None:
    backend = PublicOnlyBackend(
        _resolver(
            {
                "hooks.example": ["93.184.216.34"],
                "rebound.example": ["10.0.0.5"],
                "mixed.example": ["93.184.216.34", "169.254.169.254"],
                "empty.example": [],
            }
        )
    )
    assert backend.vetted_address("hooks.example", 443) == "93.184.216.34"
    for host, shown in [
        ("rebound.example", "10.0.0.5"),
        ("mixed.example", "169.254.169.254"),
        ("empty.example", "nothing"),
    ]:
        with pytest.raises(httpcore.ConnectError, match=re.escape(f"{host} resolves to {shown}")):
            backend.vetted_address(host, 443)
    with pytest.raises(httpcore.ConnectError, match=re.escape("cannot resolve nowhere.example")):
        backend.vetted_address("nowhere.example", 443)


def test_the_system_resolver_sees_localhost_as_loopback() -> None:
    assert resolve("localhost", 80) and not any(is_public(a) for a in resolve("localhost", 80))
