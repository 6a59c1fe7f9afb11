"""Who is asking and which merchants they may see: the scope every database session carries."""

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from app.enums import ApiKeyScope, Role
from app.errors import Forbidden


@dataclass(frozen=True, slots=True)
class Scope:
    """The merchants a session may read or change; `None` means every merchant."""

    merchant_ids: frozenset[UUID] | None

    @property
    def unrestricted(self) -> bool:
        return self.merchant_ids is None

    def can_see(self, merchant_id: UUID) -> bool:
        return self.merchant_ids is None or merchant_id in self.merchant_ids


SYSTEM_SCOPE = Scope(merchant_ids=None)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: an API key with its role and scope, or the system itself."""

    key_id: UUID | None
    name: str
    role: Role
    scope: Scope
    # What the key may do: READ alone refuses every mutation (`require_write`).
    scopes: frozenset[ApiKeyScope] = field(default=frozenset(ApiKeyScope))
    # When the key stops authenticating; a cached principal is not trusted past it.
    expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def require_write(self) -> None:
        """Refuse (`Forbidden`) a change by a key without the WRITE scope."""
        if ApiKeyScope.WRITE not in self.scopes:
            raise Forbidden("this key is read-only: a mutation needs the WRITE scope")

    @property
    def actor_label(self) -> str:
        """How the caller appears in the audit log (never the token)."""
        return f"api_key:{self.name}" if self.key_id else self.name

    def may_configure(self, merchant_id: UUID) -> bool:
        """Support may change any merchant's configuration; a merchant key only its own."""
        if self.role is Role.SUPPORT:
            return True
        return self.role is Role.MERCHANT and self.scope.can_see(merchant_id)

    def require_configure(
        self, merchant_id: UUID, what: str = "the merchant's configuration"
    ) -> None:
        """Refuse (`Forbidden`) unless this caller may change `what` of the merchant."""
        if not self.may_configure(merchant_id):
            raise Forbidden(f"this key may not change {what}")

    def may_integrate(self, merchant_id: UUID) -> bool:
        """Who may set up and manage a merchant's integrations (webhook endpoints, processor
        connections): whoever may configure it, and a partner key for a merchant it is
        granted."""
        if self.may_configure(merchant_id):
            return True
        return self.role is Role.PARTNER and self.scope.can_see(merchant_id)

    def require_integrate(
        self, merchant_id: UUID, what: str = "the merchant's integrations"
    ) -> None:
        """Refuse (`Forbidden`) unless this caller may manage `what` of the merchant."""
        if not self.may_integrate(merchant_id):
            raise Forbidden(f"this key may not change {what}")

    def require_support(self, action: str) -> None:
        """Refuse (`Forbidden`) unless this caller is support: `action` says what it may not do."""
        if self.role is not Role.SUPPORT:
            raise Forbidden(f"only support may {action}")


def system_principal(name: str = "system") -> Principal:
    """The portal acting on its own behalf (jobs, CLI): sees every merchant."""
    return Principal(key_id=None, name=name, role=Role.SUPPORT, scope=SYSTEM_SCOPE)
