"""The adapter for each processor kind."""

import httpx

from app.enums import Processor
from app.processors.adyen import AdyenAdapter
from app.processors.base import ConnectionInfo, ProcessorAdapter
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
