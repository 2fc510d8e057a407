"""The owner of a per-IP budget: an IPv4 address, an IPv6 /64, never a port."""

from __future__ import annotations

import pytest

from gatewayd.peer_address import budget_address, peer_host
from gatewayd.public.abuse import ip_key


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("203.0.113.5", "203.0.113.5"),
        ("203.0.113.5:40000", "203.0.113.5"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[::1]", "::1"),
    ],
)
def test_peer_host_drops_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


@pytest.mark.parametrize(
    ("peer", "owner"),
    [
        ("203.0.113.5", "203.0.113.5"),
        ("203.0.113.5:40000", "203.0.113.5"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::1]:443", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),  # one spelling per network
        ("::1", "::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:203.0.113.5", "203.0.113.5"),  # IPv4-mapped: the IPv4 client itself
        ("[::ffff:203.0.113.5]:443", "203.0.113.5"),
    ],
)
def test_budget_address(peer: str, owner: str) -> None:
    assert budget_address(peer) == owner


def test_neighbouring_64s_are_different_owners() -> None:
    assert budget_address("2001:db8:1:2::1") != budget_address("2001:db8:1:3::1")
    # An IPv4-mapped address is not confused with the IPv6 /64 it is written in.
    assert budget_address("::ffff:203.0.113.5") != budget_address("::ffff:203.0.113.6")


def test_a_peer_that_is_no_ip_is_a_stable_bounded_digest() -> None:
    unix = "/run/gatewayd/" + "x" * 500
    assert budget_address(unix) == budget_address(unix)
    assert budget_address(unix).startswith("?") and len(budget_address(unix)) == 33
    assert budget_address("not-an-ip") != budget_address("not-an-ip2")


def test_the_public_login_budget_uses_the_same_owner() -> None:
    for peer in ("203.0.113.5", "2001:db8:1:2::7", "::ffff:203.0.113.5", "not-an-ip"):
        assert ip_key(peer) == "pub:ip:" + budget_address(peer)
