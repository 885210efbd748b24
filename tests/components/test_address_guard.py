import pickle

import pytest

from components.data.ingest.address_guard import AddressGuard, BlockedAddress, blocked_reason

REFUSED = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "::1": "loopback",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "fd12:3456::1": "private",
    "169.254.1.1": "link-local",
    "fe80::1": "link-local",
    "fe80::1%eth0": "link-local",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "100.64.0.1": "shared address space",
    "240.0.0.1": "private",  # Python counts 240/4 as private as well as reserved
    "fec0::1": "site-local",
    "::ffff:127.0.0.1": "IPv6 form of 127.0.0.1, which is loopback",
    "::ffff:10.0.0.1": "IPv6 form of 10.0.0.1, which is private",
    "2002:a00:1::1": "IPv6 form of 10.0.0.1",  # 6to4
    "169.254.169.254": "cloud metadata",
    "fd00:ec2::254": "cloud metadata",
    "100.100.100.200": "cloud metadata",
    "168.63.129.16": "cloud metadata",
    "192.0.0.192": "cloud metadata",
    "::ffff:169.254.169.254": "cloud metadata",
    "not-an-ip": "not an IP address",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("ip, reason", REFUSED.items())
def test_non_public_addresses_are_refused_with_a_reason(ip, reason):
    assert reason in blocked_reason(ip)
    with pytest.raises(BlockedAddress) as caught:
        AddressGuard().check(ip)
    assert ip in str(caught.value) and reason in str(caught.value)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_pass(ip):
    assert blocked_reason(ip) is None
    AddressGuard().check(ip)


def test_the_allow_list_names_addresses_and_networks():
    guard = AddressGuard(("127.0.0.1", "10.0.0.0/8", "169.254.169.254"))
    for ip in ["127.0.0.1", "10.200.3.4", "169.254.169.254", "8.8.8.8"]:
        guard.check(ip)
    for ip in ["127.0.0.2", "192.168.0.1", "::1", "169.254.170.2"]:
        with pytest.raises(BlockedAddress):
            guard.check(ip)


def test_the_allow_list_takes_ipv6_networks():
    guard = AddressGuard(("::1", "fd00::/8"))
    guard.check("::1")
    guard.check("fd12::5")
    with pytest.raises(BlockedAddress):
        guard.check("127.0.0.1")


def test_a_bad_allow_list_entry_is_named():
    with pytest.raises(ValueError, match="'localhost'"):
        AddressGuard(("localhost",))
    with pytest.raises(TypeError):
        AddressGuard("127.0.0.1")


def test_the_guard_pickles_and_takes_lists():
    guard = pickle.loads(pickle.dumps(AddressGuard(["10.0.0.0/8"])))
    assert guard.allowed == ("10.0.0.0/8",)
    guard.check("10.1.1.1")
    with pytest.raises(BlockedAddress):
        guard.check("127.0.0.1")
