"""Where the portal may send requests: pure checks of webhook URLs and of the addresses behind them.

Anything a merchant points the portal at is input an attacker controls. A URL is checked twice:
`check_url` when it is stored (no I/O: its spelling, scheme and, for an address literal, the
address), and `pick_address` at each delivery, over every address its host resolves to then (a
name may point inward later). The caller connects to the address `pick_address` returns, never
to the name again, so a DNS answer that changes between the check and the connection cannot
get through.

Refused destinations: loopback (unless the policy allows it: the demo and tests), private
(RFC 1918, IPv6 unique-local and site-local), shared (100.64/10), link-local (169.254/16, with
cloud metadata at 169.254.169.254; fe80::/10), multicast, unspecified, broadcast, reserved and
documentation ranges, IPv6 outside global unicast, and IPv6 forms that carry one of those IPv4
addresses (mapped, compatible, NAT64, 6to4). Also refused: IPv4 addresses spelt other than in
dotted decimal (`2130706433`, `0x7f.1`, `0177.0.0.1`: resolvers read them as addresses, and
nobody needs them), special-use names (`localhost`, `.local`, `.internal`, …), names of one
label (resolved through search domains, i.e. inward), and credentials in the URL (they would
be logged and audited with it).
"""

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 500
_MALFORMED = f"must be an http(s) URL of at most {MAX_URL_LENGTH} characters"
# Printable ASCII without space or backslash: parsers disagree about the rest (WHATWG reads a
# backslash as a slash, urlsplit does not), and a checker and a sender that disagree on the
# host are how filters are bypassed. International names are written in punycode (xn--).
_URL_CHARS = re.compile(r"^[!-\[\]-~]+$")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_DECIMAL = re.compile(r"^[0-9]+$")
_HEX = re.compile(r"^0[xX][0-9a-fA-F]*$")
_OCTAL = re.compile(r"^0[0-7]+$")

# Names that never mean a public host (RFC 6761, RFC 6762, RFC 8375, ICANN's .internal), and
# the suffixes under them. `localhost` is loopback; the others resolve on the local network.
_LOOPBACK_NAMES = ("localhost",)
_SPECIAL_USE_SUFFIXES = ("local", "internal", "localdomain", "home.arpa", "invalid")


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# First match names the reason. Loopback is its own reason: the only one a policy may allow.
LOOPBACK = "loopback"
_V4_RANGES: tuple[tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]], ...] = (
    ("unspecified", _nets("0.0.0.0/8")),
    (LOOPBACK, _nets("127.0.0.0/8")),
    ("private", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    ("shared (carrier-grade NAT)", _nets("100.64.0.0/10")),
    ("link-local", _nets("169.254.0.0/16")),
    ("documentation", _nets("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")),
    ("reserved", _nets("192.0.0.0/24", "192.88.99.0/24", "198.18.0.0/15")),
    ("multicast", _nets("224.0.0.0/4")),
    ("broadcast", _nets("255.255.255.255/32")),
    ("reserved", _nets("240.0.0.0/4")),
)
_V6_RANGES: tuple[tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]], ...] = (
    ("unspecified", _nets("::/128")),
    (LOOPBACK, _nets("::1/128")),
    ("private", _nets("fc00::/7", "fec0::/10", "64:ff9b:1::/48")),
    ("link-local", _nets("fe80::/10")),
    ("multicast", _nets("ff00::/8")),
    ("documentation", _nets("2001:db8::/32", "3fff::/20")),
    ("reserved", _nets("100::/64", "2001::/23")),
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UrlMalformed(ValueError):
    """Not an http(s) URL the portal can read: a client error in the input's shape."""


class UrlForbidden(ValueError):
    """A readable URL whose destination the portal must not send requests to."""


@dataclass(frozen=True)
class UrlPolicy:
    """What a deployment allows: https only (production), loopback (demo and tests only)."""

    require_https: bool
    allow_loopback: bool = False


@dataclass(frozen=True)
class Target:
    """A checked URL: the host as requests name it, its port, and its address if it is one."""

    scheme: str
    host: str
    port: int
    address: IPAddress | None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 form stands for, with the form's name, if it carries one."""
    if ip in _V4_MAPPED:
        return "IPv4-mapped", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    # ::/96 but not :: or ::1 (deprecated IPv4-compatible form).
    if ip in _V4_COMPATIBLE and int(ip) > 1:
        return "IPv4-compatible", ipaddress.IPv4Address(int(ip))
    return None


def address_problem(ip: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why requests must not go to `ip` (a short reason), or None when they may."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "scoped (zone identifier)"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            form, v4 = embedded
            if ip in _V4_COMPATIBLE:
                # Deprecated, and unroutable: refused whatever it carries.
                return f"reserved ({form} {v4})"
            problem = address_problem(v4, allow_loopback=allow_loopback)
            return None if problem is None else f"{problem} ({form} {v4})"
        ranges = _V6_RANGES
    else:
        ranges = _V4_RANGES
    for reason, networks in ranges:
        if any(ip in net for net in networks):
            return None if reason == LOOPBACK and allow_loopback else reason
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _V6_GLOBAL_UNICAST:
        return "reserved"
    # The standard library's registry as a last net, for ranges added after this table.
    if not ip.is_global:
        return "not globally routable"
    return None


def _ipv4_number(part: str) -> int | None:
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        # A leading zero means octal (`08` is no number at all, not eight).
        return int(part[1:], 8) if _OCTAL.fullmatch(part) else None
    if _DECIMAL.fullmatch(part):
        return int(part)
    return None


def _ends_in_number(host: str) -> bool:
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()
    last = labels[-1]
    return bool(_DECIMAL.fullmatch(last) or _HEX.fullmatch(last))


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address a host ending in a number stands for, read as browsers and `inet_aton` do
    (1 to 4 parts, each decimal, 0x-hex or 0-octal, the last filling the remaining bytes);
    None when it is not one."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if not 1 <= len(parts) <= 4:
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    *head, last = values
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(values)):
        return None
    value = last
    for index, n in enumerate(head):
        value += n * 256 ** (3 - index)
    return ipaddress.IPv4Address(value)


def _name_problem(name: str, policy: UrlPolicy) -> str | None:
    """Why a host name (lowercase, no trailing dot) is refused, or None."""
    if name in _LOOPBACK_NAMES or name.endswith(tuple(f".{n}" for n in _LOOPBACK_NAMES)):
        return None if policy.allow_loopback else "a loopback name"
    if name in _SPECIAL_USE_SUFFIXES or name.endswith(
        tuple(f".{s}" for s in _SPECIAL_USE_SUFFIXES)
    ):
        return "a special-use name that never means a public host"
    if "." not in name:
        return "not a fully qualified domain name"
    return None


def check_url(url: str, policy: UrlPolicy) -> Target:
    """The URL's target when requests may be sent to it under `policy`; raises `UrlMalformed`
    for what is not an http(s) URL, `UrlForbidden` for a destination the portal must not reach.

    Names are checked by spelling only here: what they resolve to is checked at each request
    (`pick_address`)."""
    if len(url) > MAX_URL_LENGTH or not _URL_CHARS.fullmatch(url):
        raise UrlMalformed(_MALFORMED)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlMalformed(_MALFORMED) from exc
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in {"http", "https"} or not host or port == 0:
        raise UrlMalformed(_MALFORMED)
    if parts.username is not None or parts.password is not None:
        raise UrlForbidden("must not carry credentials (user:password@)")
    if scheme == "http" and policy.require_https:
        raise UrlForbidden("must use https")
    port = port or (443 if scheme == "https" else 80)
    if ":" in host:
        if "%" in host:
            raise UrlForbidden("must not carry an IPv6 zone identifier")
        try:
            v6 = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise UrlMalformed(_MALFORMED) from exc
        _refuse_address(v6, policy)
        return Target(scheme=scheme, host=host, port=port, address=v6)
    if _ends_in_number(host):
        v4 = parse_ipv4(host)
        if v4 is None:
            raise UrlMalformed("the host ends in a number but is not an IPv4 address")
        _refuse_address(v4, policy)
        if str(v4) != host:
            raise UrlForbidden(f"IPv4 addresses must be written in dotted decimal ({v4})")
        return Target(scheme=scheme, host=host, port=port, address=v4)
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise UrlMalformed("the host is not a valid domain name (use punycode for non-ASCII)")
    problem = _name_problem(name, policy)
    if problem is not None:
        raise UrlForbidden(f"the host {name} is {problem}")
    return Target(scheme=scheme, host=host, port=port, address=None)


def _refuse_address(ip: IPAddress, policy: UrlPolicy) -> None:
    problem = address_problem(ip, allow_loopback=policy.allow_loopback)
    if problem is not None:
        raise UrlForbidden(f"the address {ip} is {problem}")


def pick_address(addresses: list[IPAddress], policy: UrlPolicy) -> IPAddress:
    """The address to connect to, from everything a name resolved to: refused (`UrlForbidden`)
    when ANY of them is refused, since which one a client would use is not ours to predict.

    The reason does not name the address: it is shown to the merchant, and a name resolving
    inward would otherwise reveal the portal's internal DNS."""
    if not addresses:
        raise ValueError("no addresses to pick from")
    for ip in addresses:
        if address_problem(ip, allow_loopback=policy.allow_loopback) is not None:
            raise UrlForbidden("the host resolves to an address the portal must not reach")
    return addresses[0]
