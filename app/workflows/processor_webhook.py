"""Receiving processor webhooks: verify, land raw, and leave normalization to a job."""

import json
import uuid
from datetime import datetime

from sqlmodel import col, select

from app.crypto import CredentialBox
from app.db import Database
from app.enums import ConnectionStatus, Processor
from app.errors import ErrorCode, InvalidArgument, NotFound, PortalError
from app.models.ingestion import ProcessorConnection
from app.processors import adyen
from app.processors.base import RawItem
from app.services.ingestion import land
from app.tenancy import SYSTEM_SCOPE


class InvalidSignature(PortalError):
    """A webhook whose HMAC does not verify: nothing of it is stored."""

    code = ErrorCode.UNAUTHENTICATED


async def receive_adyen(
    db: Database, connection_id: uuid.UUID, body: bytes, *, box: CredentialBox, now: datetime
) -> list[uuid.UUID]:
    """Verify every item of an Adyen batch, then land them all; returns the new raw ids.
    One bad signature rejects the whole batch (Adyen re-sends it), so nothing half-lands."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        connection = (
            await uow.session.execute(
                select(ProcessorConnection).where(col(ProcessorConnection.id) == connection_id)
            )
        ).scalar_one_or_none()
        if connection is None or connection.kind is not Processor.ADYEN:
            raise NotFound("no Adyen connection with this id")
        if connection.status is ConnectionStatus.PAUSED:
            raise NotFound("this connection is paused")
        if connection.status is ConnectionStatus.DISCONNECTED:
            raise NotFound("this connection is disconnected")
        try:
            items = adyen.notification_items(json.loads(body))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"malformed notification batch: {exc}") from exc
        key = str(box.open(connection.credentials_encrypted)["hmac_key_hex"])
        if not all(adyen.verify(item, key) for item in items):
            raise InvalidSignature("HMAC signature does not verify")
        raw = [
            RawItem.from_json(item, str(item.get("pspReference") or "") or None) for item in items
        ]
        ids, _ = await land(uow, connection, raw, now=now)
        await uow.commit()
    return ids
