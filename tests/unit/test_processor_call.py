"""`call`: which answers it raises, and the HTTP status its errors carry."""

import httpx
import pytest

from app.enums import Processor
from app.processors.base import (
    PermanentProcessorError,
    ProcessorError,
    TransientProcessorError,
    call,
)


def _client(status: int, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, text="no")

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def _call(client: httpx.AsyncClient) -> httpx.Response:
    async with client:
        return await call(
            client,
            "POST",
            "http://processor.test/v1/charges",
            processor=Processor.STRIPE,
            max_attempts=1,
        )


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, PermanentProcessorError),
        (401, PermanentProcessorError),
        (403, PermanentProcessorError),
        (409, PermanentProcessorError),
        (429, TransientProcessorError),
        (503, TransientProcessorError),
    ],
)
async def test_an_error_answer_carries_its_status(status: int, kind: type[ProcessorError]) -> None:
    with pytest.raises(kind) as raised:
        await _call(_client(status))
    assert raised.value.status == status


async def test_a_5xx_the_processor_says_not_to_retry_is_permanent_with_its_status() -> None:
    with pytest.raises(PermanentProcessorError) as raised:
        await _call(_client(500, {"stripe-should-retry": "false"}))
    assert raised.value.status == 500


async def test_a_business_answer_is_returned() -> None:
    assert (await _call(_client(402))).status_code == 402


async def test_no_answer_has_no_status() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TransientProcessorError) as raised:
        await _call(httpx.AsyncClient(transport=httpx.MockTransport(handle)))
    assert raised.value.status is None
