"""Which ``jwks_uri`` keysvc may fetch, and which addresses it may connect to.

A ``jwks_uri`` is chosen by whoever registers a client, so fetching it must
not become a way to reach keysvc's own network: loopback, private,
link-local, multicast, reserved and unspecified addresses are refused, in
IPv4 and IPv6, including IPv4 addresses carried inside IPv6 ones (mapped and
6to4). ``KEYSVC_REMOTE_ALLOW`` names host names or CIDRs that are exempt.

The guard is pure: it checks URIs and addresses it is given. The fetcher
calls it for every address its resolver hands out, so the address checked is
the address connected to.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from keysvc.errors import InvalidJwksUri

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URI_LENGTH = 2048
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


@dataclass(frozen=True, slots=True)
class Target:
    """A checked ``jwks_uri``: where to connect, and how to name it in a log."""

    uri: str
    scheme: str
    host: str
    port: int
    literal: IPAddress | None

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def where(self) -> str:
        """The URI without its query: what a log line may show."""
        return f"{self.scheme}://{self.host}:{self.port}"


class AddressGuard:
    """The policy for remote JWKS addresses, from the allow-list in settings."""

    def __init__(self, allow: tuple[str, ...], *, allow_http: bool) -> None:
        self.allow_http = allow_http
        networks: list[IPNetwork] = []
        hosts = set()
        for entry in allow:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(_normal_host(entry))
        self._hosts = frozenset(hosts)
        self._networks = tuple(networks)

    def target(self, uri: str) -> Target:
        """Check a URI's form and scheme; an IP literal is checked here too."""
        if len(uri) > MAX_URI_LENGTH:
            raise InvalidJwksUri(f"jwks_uri must not exceed {MAX_URI_LENGTH} chars")
        try:
            parts = urlsplit(uri)
            port = parts.port
        except ValueError as exc:
            raise InvalidJwksUri("jwks_uri is not a valid URL") from exc

        scheme = parts.scheme.lower()
        if scheme not in ("https", "http"):
            raise InvalidJwksUri("jwks_uri must be an https URL")
        if scheme == "http" and not self.allow_http:
            raise InvalidJwksUri(
                "jwks_uri must use https (KEYSVC_REMOTE_ALLOW_HTTP is off)"
            )
        host = _host(parts)
        literal = _literal(host)
        if literal is not None:
            self.check_address(host, literal)

        default_port = 443 if scheme == "https" else 80
        return Target(uri, scheme, host, port or default_port, literal)

    def check_address(self, host: str, address: IPAddress | str) -> None:
        """Refuse an address of ``host`` that the guard does not let through."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if _normal_host(host) in self._hosts or self._allowed(ip):
            return

        reason = refusal(ip)
        if reason is not None:
            raise InvalidJwksUri(
                f"jwks_uri host {host} has a {reason} address ({ip}), "
                "which KEYSVC_REMOTE_ALLOW does not name"
            )

    def _allowed(self, ip: IPAddress) -> bool:
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)

        return any(c in net for c in candidates for net in self._networks)


def refusal(ip: IPAddress) -> str | None:
    """Why an address is not a public unicast one, or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address inside an IPv6 one reaches that IPv4 host.
        if ip.ipv4_mapped is not None:
            return refusal(ip.ipv4_mapped)
        if ip.sixtofour is not None and refusal(ip.sixtofour) is not None:
            return "6to4-wrapped " + str(refusal(ip.sixtofour))

    for reason, flag in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-public", not ip.is_global),
    ):
        if flag:
            return reason

    return None


def _host(parts: SplitResult) -> str:
    if parts.username is not None or parts.password is not None:
        raise InvalidJwksUri("jwks_uri must not carry credentials")
    host = parts.hostname
    if not host:
        raise InvalidJwksUri("jwks_uri must be an absolute URL with a host")
    if parts.fragment:
        raise InvalidJwksUri("jwks_uri must not have a fragment")

    return host


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass

    # Legacy numeric forms (2130706433, 127.1, 0x7f.1) name an address too,
    # one that a resolver may or may not agree on: refuse them outright.
    if all(_NUMERIC_LABEL.fullmatch(label) for label in host.split(".")):
        raise InvalidJwksUri("jwks_uri host must be a name or a canonical IP")

    return None


def _normal_host(host: str) -> str:
    return host.strip().rstrip(".").lower()
