"""Webhook URL checks over tables of URLs and addresses: what is refused, and why."""

import ipaddress

import pytest

from app.urls import (
    IPAddress,
    Target,
    UrlForbidden,
    UrlMalformed,
    UrlPolicy,
    address_problem,
    check_url,
    parse_ipv4,
    pick_address,
)

PRODUCTION = UrlPolicy(require_https=True)
DEVELOPMENT = UrlPolicy(require_https=False)
LOOPBACK_ALLOWED = UrlPolicy(require_https=False, allow_loopback=True)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("169.254.0.1", "link-local"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("100.127.255.255", "shared (carrier-grade NAT)"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 (checked, never bound)
        ("0.1.2.3", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("198.18.0.1", "reserved"),
        ("192.0.0.8", "reserved"),
        ("192.0.2.1", "documentation"),
        ("203.0.113.9", "documentation"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "private"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("100::1", "reserved"),
        ("4000::1", "reserved"),
        ("::ffff:127.0.0.1", "loopback (IPv4-mapped 127.0.0.1)"),
        ("::ffff:7f00:1", "loopback (IPv4-mapped 127.0.0.1)"),
        ("::ffff:169.254.169.254", "link-local (IPv4-mapped 169.254.169.254)"),
        ("::ffff:10.0.0.1", "private (IPv4-mapped 10.0.0.1)"),
        ("::ffff:0.0.0.0", "unspecified (IPv4-mapped 0.0.0.0)"),
        ("::127.0.0.1", "reserved (IPv4-compatible 127.0.0.1)"),
        ("::8.8.8.8", "reserved (IPv4-compatible 8.8.8.8)"),
        ("64:ff9b::7f00:1", "loopback (NAT64 127.0.0.1)"),
        ("64:ff9b::a9fe:a9fe", "link-local (NAT64 169.254.169.254)"),
        ("2002:7f00:1::1", "loopback (6to4 127.0.0.1)"),
        ("2002:c0a8:101::1", "private (6to4 192.168.1.1)"),
        ("fe80::1%eth0", "scoped (zone identifier)"),
    ],
)
def test_inward_addresses_are_refused_with_their_reason(address: str, reason: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "93.184.216.34",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_allowing_loopback_allows_loopback_only(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address), allow_loopback=True) is None
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    ["10.0.0.1", "169.254.169.254", "0.0.0.0", "::", "fe80::1"],  # noqa: S104 (never bound)
)
def test_allowing_loopback_still_refuses_the_rest(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address), allow_loopback=True) is not None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0xA9.0xFE.0xA9.0xFE", "169.254.169.254"),
        ("3232235777", "192.168.1.1"),
        ("0", "0.0.0.0"),  # noqa: S104 (checked, never bound)
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_ipv4_spellings_are_read_as_resolvers_read_them(host: str, address: str) -> None:
    assert parse_ipv4(host) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize("host", ["256.0.0.1", "1.2.3.4.5", "4294967296", "08.0.0.1", "1..2"])
def test_numbers_that_are_no_address_are_not_read_as_one(host: str) -> None:
    assert parse_ipv4(host) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1/hook", "127.0.0.1 is loopback"),
        ("http://127.0.0.1:8080/hook", "127.0.0.1 is loopback"),
        ("http://2130706433/", "127.0.0.1 is loopback"),
        ("http://0x7f.1/", "127.0.0.1 is loopback"),
        ("http://0177.0.0.1/", "127.0.0.1 is loopback"),
        ("http://127.1/", "127.0.0.1 is loopback"),
        ("http://[::1]/", "::1 is loopback"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped 127.0.0.1"),
        ("http://[::ffff:a9fe:a9fe]/latest/meta-data", "link-local (IPv4-mapped"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is link-local"),
        ("http://10.0.0.5/", "10.0.0.5 is private"),
        ("http://192.168.0.1/", "is private"),
        ("http://172.20.1.1/", "is private"),
        ("http://100.64.1.1/", "shared"),
        ("http://0.0.0.0:8000/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://[fd00::1]/", "private"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fe80::1%25eth0]/", "zone identifier"),
        ("http://224.0.0.251/", "multicast"),
        ("http://255.255.255.255/", "broadcast"),
        ("http://240.1.2.3/", "reserved"),
        ("http://localhost/", "loopback name"),
        ("http://LOCALHOST:8000/", "loopback name"),
        ("http://localhost./", "loopback name"),
        ("http://api.localhost/", "loopback name"),
        ("http://printer.local/", "special-use"),
        ("http://metadata.google.internal/computeMetadata/v1/", "special-use"),
        ("http://router.home.arpa/", "special-use"),
        ("http://intranet/", "fully qualified"),
        ("http://0x08080808/", "dotted decimal (8.8.8.8)"),
        ("http://8.8.8.8./", "dotted decimal (8.8.8.8)"),
        ("https://user:pw@merchant.example/", "credentials"),
        ("https://merchant.example@127.0.0.1/", "credentials"),
    ],
)
def test_inward_urls_are_forbidden(url: str, message: str) -> None:
    with pytest.raises(UrlForbidden, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_url(url, DEVELOPMENT)


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "ftp://merchant.example/hooks",
        "https://" + "a" * 500 + ".example",
        "https:///path",
        "https://merchant.example:0/",
        "https://merchant.example:99999/",
        "https://merchant.example\\@127.0.0.1/",
        "https://merchant.example /hooks",
        "https://merchant.example/\n",
        "https://bücher.example/",
        "https://-bad-.example/",
        "https://256.0.0.1/",
        "https://1.2.3.4.5/",
        "https://[::1/",
        # Percent-encoded hosts: a decoding sender would read 127.0.0.1 and localhost.
        "http://%31%32%37.0.0.1/",
        "http://loc%61lhost/",
    ],
)
def test_malformed_urls_are_malformed(url: str) -> None:
    with pytest.raises(UrlMalformed):
        check_url(url, DEVELOPMENT)


def test_production_requires_https() -> None:
    with pytest.raises(UrlForbidden, match="https"):
        check_url("http://merchant.example/hooks", PRODUCTION)
    assert check_url("http://merchant.example/hooks", DEVELOPMENT).port == 80


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("https://merchant.example/hooks", Target("https", "merchant.example", 443, None)),
        (
            "https://Hooks.Merchant.Example:8443/x?y=1",
            Target("https", "hooks.merchant.example", 8443, None),
        ),
        ("https://xn--bcher-kva.example/", Target("https", "xn--bcher-kva.example", 443, None)),
        ("https://merchant.example./", Target("https", "merchant.example.", 443, None)),
        (
            "https://93.184.216.34/h",
            Target("https", "93.184.216.34", 443, ipaddress.IPv4Address("93.184.216.34")),
        ),
        (
            "https://[2606:4700::1]/h",
            Target("https", "2606:4700::1", 443, ipaddress.IPv6Address("2606:4700::1")),
        ),
    ],
)
def test_public_urls_are_allowed(url: str, target: Target) -> None:
    assert check_url(url, PRODUCTION) == target


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000/hook", "http://localhost:9000/hook", "http://[::1]:9000/"]
)
def test_loopback_urls_when_allowed(url: str) -> None:
    assert check_url(url, LOOPBACK_ALLOWED).port == 9000
    with pytest.raises(UrlForbidden):
        check_url(url, DEVELOPMENT)


def _ips(*addresses: str) -> list[IPAddress]:
    return [ipaddress.ip_address(a) for a in addresses]


def test_pick_address_refuses_when_any_resolved_address_is_inward() -> None:
    assert (
        pick_address(_ips("93.184.216.34", "2606:4700::1"), DEVELOPMENT) == _ips("93.184.216.34")[0]
    )
    for mixed in (
        _ips("93.184.216.34", "10.0.0.1"),
        _ips("169.254.169.254"),
        _ips("2606:4700::1", "::ffff:127.0.0.1"),
        _ips("127.0.0.1", "::1"),
    ):
        with pytest.raises(UrlForbidden, match="resolves to an address") as refused:
            pick_address(mixed, DEVELOPMENT)
        # The merchant sees the reason: it must not reveal where the name points inside.
        assert not any(str(ip) in str(refused.value) for ip in mixed)
    assert pick_address(_ips("127.0.0.1", "::1"), LOOPBACK_ALLOWED) == _ips("127.0.0.1")[0]
    with pytest.raises(UrlForbidden):
        pick_address(_ips("127.0.0.1", "10.0.0.1"), LOOPBACK_ALLOWED)
