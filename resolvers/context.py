"""The typed per-request context: who is asking, the database, loaders, clock and settings."""

from dataclasses import dataclass, field
from typing import Any

from app.clock import Clock
from app.db import Database
from app.errors import Unauthenticated
from app.settings import Settings
from app.tenancy import Principal
from resolvers.loaders import Loaders


@dataclass
class Context:
    """Built by the HTTP view for each request (and by tests around `schema.execute`)."""

    db: Database
    principal: Principal | None
    clock: Clock
    settings: Settings
    redis: Any = None
    request_id: str | None = None
    _loaders: Loaders | None = field(default=None, init=False, repr=False)

    def require_principal(self) -> Principal:
        if self.principal is None:
            raise Unauthenticated("send a valid API key as 'Authorization: Bearer <token>'")
        return self.principal

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            self._loaders = Loaders(self.db, self.require_principal().scope)
        return self._loaders
