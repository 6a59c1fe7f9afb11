"""Webhook delivery against inward addresses and DNS rebinding: vetted after resolution, sent
to the vetted address only (over real loopback sockets, with TLS verified against the name),
refused deliveries failed unsent, and no secret in the logs."""

import asyncio
import datetime as dt
import io
import ipaddress
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlmodel import col, select

from app.clock import FixedClock
from app.crypto import CredentialBox
from app.db import Database
from app.models.merchant import Merchant
from app.models.webhook_endpoint import WebhookDelivery, WebhookEndpoint
from app.services.retry.pinning import Resolver, delivery_client, pin
from app.services.webhook_endpoint import create_endpoint
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.urls import IPAddress, UrlForbidden, UrlPolicy
from app.workflows.webhook_delivery import (
    SIGNATURE_HEADER,
    deliver_due,
    sign,
    verify,
)
from tests.support.factories import make_merchant
from tests.support.logs import json_logs
from tests.support.webhooks import PUBLIC, queue_delivery, table_resolver

SECRET = "whsec_" + "q" * 32
# Loopback allowed, as in the demo: the receivers below listen on 127.0.0.1.
LOOPBACK = UrlPolicy(require_https=False, allow_loopback=True)
STRICT = UrlPolicy(require_https=False)


def _box(settings: Settings) -> CredentialBox:
    return CredentialBox(settings.secret_key.get_secret_value())


async def _endpoint(
    db: Database, settings: Settings, clock: FixedClock, url: str, policy: UrlPolicy
) -> tuple[Merchant, uuid.UUID]:
    merchant = await make_merchant(db, f"Hooks {uuid.uuid4().hex[:6]}", now=clock.now())
    async with db.uow(SYSTEM_SCOPE) as uow:
        endpoint = await create_endpoint(
            uow,
            principal=system_principal(),
            merchant_id=merchant.id,
            url=url,
            secret=SECRET,
            box=_box(settings),
            policy=policy,
            now=clock.now(),
        )
        await uow.commit()
    return merchant, endpoint.id


async def _delivery(db: Database, delivery_id: uuid.UUID) -> WebhookDelivery:
    async with db.session(SYSTEM_SCOPE) as s:
        found = await s.execute(
            select(WebhookDelivery).where(col(WebhookDelivery.id) == delivery_id)
        )
        return found.scalar_one()


class Recorder:
    """A mock transport that records what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return httpx.Response(204)


async def _deliver(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    policy: UrlPolicy,
    resolve: Resolver,
    http: httpx.AsyncClient | None = None,
) -> tuple[dict[str, int], Recorder]:
    recorder = Recorder()
    client = http or httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    async with client:
        counts = await deliver_due(
            db, http=client, box=_box(settings), clock=clock, policy=policy, resolve=resolve
        )
    return counts, recorder


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.7"],
        ["169.254.169.254"],
        ["127.0.0.1"],
        [PUBLIC, "192.168.1.20"],
        ["2606:4700::1", "::ffff:127.0.0.1"],
        ["fd00::5"],
    ],
)
async def test_a_name_resolving_inward_is_refused_and_never_sent(
    db: Database, settings: Settings, clock: FixedClock, addresses: list[str]
) -> None:
    merchant, endpoint_id = await _endpoint(
        db, settings, clock, "https://merchant.test/hooks", STRICT
    )
    delivery_id = await queue_delivery(
        db, merchant, endpoint_id, clock, event_type="payment.recovered"
    )
    counts, recorder = await _deliver(
        db, settings, clock, STRICT, table_resolver({"merchant.test": addresses})
    )
    assert recorder.sent == []
    assert counts == {"delivered": 0, "retrying": 0, "failed": 0, "refused": 1}
    row = await _delivery(db, delivery_id)
    # Failed at once, not retried: the same name would only be probed inward again.
    assert (row.status, row.attempts, row.last_status_code) == ("failed", 1, None)
    assert row.last_error == ("not sent: the host resolves to an address the portal must not reach")
    # The reason the merchant sees names no address of the portal's network.
    assert not any(a in row.last_error for a in addresses)


async def test_an_inward_url_stored_before_the_checks_is_refused_without_resolving(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Old endpoint", now=clock.now())
    async with db.uow(SYSTEM_SCOPE) as uow:
        endpoint = WebhookEndpoint(
            merchant_id=merchant.id,
            url="http://169.254.169.254/latest/meta-data/iam/",
            secret_encrypted=_box(settings).seal({"secret": SECRET}),
            created_at=clock.now(),
        )
        uow.session.add(endpoint)
        await uow.commit()
    delivery_id = await queue_delivery(
        db, merchant, endpoint.id, clock, event_type="payment.failed"
    )

    async def no_dns(host: str, port: int) -> list[IPAddress]:
        raise AssertionError("an address literal needs no resolving")

    counts, recorder = await _deliver(db, settings, clock, LOOPBACK, no_dns)
    assert (counts["refused"], recorder.sent) == (1, [])
    row = await _delivery(db, delivery_id)
    assert row.status == "failed"
    assert row.last_error == "not sent: the address 169.254.169.254 is link-local"


async def test_a_failed_lookup_is_retried_like_any_transient_failure(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, endpoint_id = await _endpoint(
        db, settings, clock, "https://gone.merchant.test/hooks", STRICT
    )
    delivery_id = await queue_delivery(
        db, merchant, endpoint_id, clock, event_type="payment.recovered"
    )
    counts, recorder = await _deliver(db, settings, clock, STRICT, table_resolver({}))
    assert (counts["retrying"], recorder.sent) == (1, [])
    row = await _delivery(db, delivery_id)
    assert (row.status, row.last_error) == ("pending", "DNS lookup failed (gaierror)")
    assert row.next_attempt_at == clock.now() + dt.timedelta(seconds=30)


async def test_the_request_goes_to_the_vetted_address_whatever_dns_says_next(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    """DNS rebinding: the name answers a public address to the check, loopback afterwards.
    The request is aimed at the checked address, so a second lookup is never made."""
    answers = [[PUBLIC], ["127.0.0.1"]]
    lookups: list[str] = []

    async def rebinding(host: str, port: int) -> list[IPAddress]:
        lookups.append(host)
        return [ipaddress.ip_address(a) for a in answers[len(lookups) - 1]]

    merchant, endpoint_id = await _endpoint(
        db, settings, clock, "https://merchant.test:8443/hooks?v=2", STRICT
    )
    await queue_delivery(db, merchant, endpoint_id, clock, event_type="payment.recovered")
    counts, recorder = await _deliver(db, settings, clock, STRICT, rebinding)
    assert counts["delivered"] == 1
    [request] = recorder.sent
    assert lookups == ["merchant.test"]
    assert str(request.url) == f"https://{PUBLIC}:8443/hooks?v=2"
    assert request.headers["host"] == "merchant.test:8443"
    # TLS names the host (SNI) and checks the certificate against it, not the address.
    assert request.extensions["sni_hostname"] == "merchant.test"
    now = int(clock.now().timestamp())
    assert verify(SECRET, request.headers[SIGNATURE_HEADER], request.content, now=now)
    # The next delivery looks again, gets loopback, and is refused.
    await queue_delivery(db, merchant, endpoint_id, clock, event_type="payment.failed")
    counts, recorder = await _deliver(db, settings, clock, STRICT, rebinding)
    assert (counts["refused"], recorder.sent) == (1, [])


async def test_pin_keeps_address_literals_and_ipv6() -> None:
    pinned = await pin("https://[2606:4700::1]/h", STRICT, table_resolver({}))
    assert str(pinned.url) == "https://[2606:4700::1]/h"
    assert pinned.extensions == {}
    v6 = await pin(
        "http://merchant.test/h", STRICT, table_resolver({"merchant.test": ["2606:4700::1"]})
    )
    assert (str(v6.url), v6.headers) == ("http://[2606:4700::1]/h", {"Host": "merchant.test"})
    with pytest.raises(UrlForbidden):
        await pin("http://merchant.test/h", STRICT, table_resolver({"merchant.test": ["::1"]}))
    # International names travel as punycode, in the lookup, the Host header and SNI alike.
    idn = await pin(
        "https://xn--bcher-kva.example/h",
        STRICT,
        table_resolver({"xn--bcher-kva.example": [PUBLIC]}),
    )
    assert idn.headers == {"Host": "xn--bcher-kva.example"}
    assert idn.extensions == {"sni_hostname": "xn--bcher-kva.example"}


@dataclass
class Receiver:
    """An HTTP(S) server on 127.0.0.1 that records each request's head, body and SNI name."""

    port: int = 0
    requests: list[tuple[list[str], bytes]] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            length = next(
                int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:")
            )
            self.requests.append((head, await reader.readexactly(length)))
            writer.write(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # a client that refused our certificate hangs up
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    found.port = server.sockets[0].getsockname()[1]
    async with server:
        yield found


async def test_pinned_http_over_a_real_loopback_socket(
    db: Database, settings: Settings, clock: FixedClock, receiver: Receiver
) -> None:
    """`hooks.receiver.test` does not exist: only the pinned address can have been reached."""
    url = f"http://hooks.receiver.test:{receiver.port}/in"
    merchant, endpoint_id = await _endpoint(db, settings, clock, url, LOOPBACK)
    await queue_delivery(db, merchant, endpoint_id, clock, event_type="payment.recovered")
    resolve = table_resolver({"hooks.receiver.test": ["127.0.0.1"]})
    counts, _ = await _deliver(db, settings, clock, LOOPBACK, resolve, delivery_client())
    assert counts["delivered"] == 1
    [(head, body)] = receiver.requests
    assert head[0] == "POST /in HTTP/1.1"
    assert f"Host: hooks.receiver.test:{receiver.port}" in head
    signature = next(h.split(": ", 1)[1] for h in head if h.startswith("Portal-Signature:"))
    assert verify(SECRET, signature, body, now=int(clock.now().timestamp()))


def _certificates(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A CA and a certificate it signs for `name`: the receiver's and the sender's TLS."""
    now = dt.datetime.now(dt.UTC)

    def build(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("Test CA", ca_key, "Test CA", ca_key, ca=True)
    leaf = build(name, leaf_key, "Test CA", ca_key, ca=False)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    return server, client


@pytest.mark.parametrize(
    ("certified", "delivered"), [("hooks.receiver.test", True), ("other.test", False)]
)
async def test_pinned_https_verifies_the_certificate_against_the_name(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    tmp_path: Path,
    certified: str,
    delivered: bool,
) -> None:
    server_tls, client_tls = _certificates(tmp_path, certified)
    found = Receiver()
    server_tls.sni_callback = lambda _sock, name, _ctx: found.sni.append(name)
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    async with server:
        url = f"https://hooks.receiver.test:{port}/in"
        merchant, endpoint_id = await _endpoint(db, settings, clock, url, LOOPBACK)
        delivery_id = await queue_delivery(
            db, merchant, endpoint_id, clock, event_type="payment.recovered"
        )
        resolve = table_resolver({"hooks.receiver.test": ["127.0.0.1"]})
        counts, _ = await _deliver(
            db, settings, clock, LOOPBACK, resolve, delivery_client(verify=client_tls)
        )
    # The TLS client named the host, though it connected to 127.0.0.1.
    assert found.sni == ["hooks.receiver.test"]
    row = await _delivery(db, delivery_id)
    if delivered:
        assert counts["delivered"] == 1
        [(head, _)] = found.requests
        assert f"Host: hooks.receiver.test:{port}" in head
    else:
        # A certificate for another name fails verification: nothing is sent, retried later.
        assert (counts["retrying"], found.requests) == (1, [])
        assert row.last_error == "ConnectError"


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    with json_logs("DEBUG") as stream:
        yield stream


async def test_no_secret_reaches_the_logs_of_delivery(
    db: Database, settings: Settings, clock: FixedClock, captured_logs: io.StringIO
) -> None:
    query_token = "qtok_" + "z" * 24
    url = f"https://merchant.test/hooks?token={query_token}"
    merchant, endpoint_id = await _endpoint(db, settings, clock, url, STRICT)
    await queue_delivery(db, merchant, endpoint_id, clock, event_type="payment.recovered")
    counts, recorder = await _deliver(
        db, settings, clock, STRICT, table_resolver({"merchant.test": [PUBLIC]})
    )
    assert counts["delivered"] == 1
    signature = recorder.sent[0].headers[SIGNATURE_HEADER]
    await queue_delivery(db, merchant, endpoint_id, clock, event_type="payment.failed")
    counts, _ = await _deliver(
        db, settings, clock, STRICT, table_resolver({"merchant.test": ["10.9.8.7"]})
    )
    assert counts["refused"] == 1
    logged = captured_logs.getvalue()
    # Both paths logged (httpx's request line, the refusal), so the absence below means something.
    assert f"https://{PUBLIC}" in logged
    assert "/hooks" not in logged  # receivers put tokens in paths too
    assert "refused" in logged
    for secret in (SECRET, query_token, signature.split("v1=")[1]):
        assert secret not in logged


def test_the_readme_receiver_snippet_verifies_what_the_portal_signs() -> None:
    """The README's verification code, run as a receiver would run it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    [snippet] = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    scope: dict[str, Any] = {}
    exec(snippet, scope)  # noqa: S102 (our own README's code, under test)
    receiver_verify = scope["verify"]
    body = b'{"id":"evt_1","type":"payment.recovered"}'
    now = int(time.time())
    both = sign(["new-" + "n" * 32, "old-" + "o" * 32], now, body)
    assert receiver_verify("new-" + "n" * 32, both, body)
    assert receiver_verify("old-" + "o" * 32, both, body)
    assert not receiver_verify("other-" + "x" * 32, both, body)
    assert not receiver_verify("new-" + "n" * 32, both, body + b" ")
    stale = sign(["new-" + "n" * 32], now - 301, body)
    assert not receiver_verify("new-" + "n" * 32, stale, body)


async def test_a_delivery_that_breaks_does_not_lose_the_rest_of_its_batch(
    db: Database, settings: Settings, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    broken_merchant, broken = await _endpoint(
        db, settings, clock, "https://broken.merchant.test/hooks", STRICT
    )
    merchant, working = await _endpoint(db, settings, clock, "https://merchant.test/hooks", STRICT)
    broken_id = await queue_delivery(
        db, broken_merchant, broken, clock, event_type="payment.recovered"
    )
    working_id = await queue_delivery(db, merchant, working, clock, event_type="payment.recovered")
    table = table_resolver({"merchant.test": [PUBLIC]})

    async def resolve(host: str, port: int) -> list[IPAddress]:
        if host.startswith("broken."):
            raise RuntimeError("a resolver bug")
        return await table(host, port)

    counts, recorder = await _deliver(db, settings, clock, STRICT, resolve)
    assert (counts["delivered"], counts["retrying"], len(recorder.sent)) == (1, 1, 1)
    assert (await _delivery(db, working_id)).status == "delivered"
    row = await _delivery(db, broken_id)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "not sent: internal error")
    assert "could not be prepared" in caplog.text
