"""The adapter for each processor kind."""

from collections.abc import Mapping
from typing import Any

import httpx

from app.enums import Processor
from app.processors.adyen import AdyenAdapter
from app.processors.base import BillingRefs, ConnectionInfo, ProcessorAdapter
from app.processors.braintree import BraintreeAdapter
from app.processors.checkout import CheckoutAdapter
from app.processors.stripe import StripeAdapter

REQUIRED_CREDENTIALS: dict[Processor, frozenset[str]] = {
    Processor.STRIPE: frozenset({"api_key"}),
    Processor.BRAINTREE: frozenset({"public_key", "private_key"}),
    Processor.ADYEN: frozenset({"api_key", "hmac_key_hex"}),
    Processor.CHECKOUT: frozenset({"api_key"}),
}


def adapter_for(info: ConnectionInfo, client: httpx.AsyncClient) -> ProcessorAdapter:
    match info.kind:
        case Processor.STRIPE:
            return StripeAdapter(info, client)
        case Processor.BRAINTREE:
            return BraintreeAdapter(info, client)
        case Processor.ADYEN:
            return AdyenAdapter(info, client)
        case Processor.CHECKOUT:
            return CheckoutAdapter(info, client)


# The shopper an Adyen credential check asks about: nobody's, so the answer lists no card.
CREDENTIAL_CHECK_SHOPPER = "portal-credential-check"


async def check_credentials(
    info: ConnectionInfo, client: httpx.AsyncClient, cursor: Mapping[str, Any]
) -> None:
    """One authenticated read of the account with `info`'s credentials, its answer discarded:
    the page polling would read next (from `cursor`) for processors with a list API, the
    stored cards of a shopper no one has for Adyen (whose only read API that is). Raises the
    adapter's `ProcessorError`s: permanent with status 401/403 when the processor refuses the
    credentials (or the account reference), transient when it cannot be reached."""
    adapter = adapter_for(info, client)
    if info.kind is Processor.ADYEN:
        await adapter.billing_state(BillingRefs(customer_ref=CREDENTIAL_CHECK_SHOPPER))
    else:
        await adapter.list_page(cursor)
