"""Webhook test helpers: a resolver answering from a table, so no test ever asks real DNS."""

import ipaddress
import socket

from app.services.retry.pinning import Resolver
from app.urls import IPAddress

# A public address (example.com's) for hosts whose requests a mock transport answers: the
# checks allow it, and nothing is ever sent to it.
PUBLIC = "93.184.216.34"


def table_resolver(table: dict[str, list[str]]) -> Resolver:
    """Resolve from `table`; a host not in it fails as an unknown name does."""

    async def resolve(host: str, port: int) -> list[IPAddress]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the test's table")
        return [ipaddress.ip_address(a) for a in table[host]]

    return resolve
