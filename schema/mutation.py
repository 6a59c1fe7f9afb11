"""Declaring a mutation: its payload, the refusals that become the payload's typed errors.

    class RevokeApiKeyPayload(Payload):
        api_key: ApiKey | None = strawberry.field(description="The key, revoked.")


    @mutation(
        refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID),
        errors="Why the key was not revoked",
        subject="id",
        description="Revoke an API key …",
    )
    async def revoke_api_key(info: Info, id: …, reason: ReasonArg) -> RevokeApiKeyPayload:
        row = await key_resolvers.revoke(info.context, global_id=str(id), reason=reason)
        return RevokeApiKeyPayload(api_key=ApiKey.from_model(row))

publishes the root field `revokeApiKey` and `RevokeApiKeyPayload` (the function's return type),
whose `errors` are `RevokeApiKeyError`s with a `RevokeApiKeyErrorCode` of the codes it `refuses`.
The function raises the domain's errors: one whose code is among them becomes the payload's
errors, any other (FORBIDDEN, UNAUTHENTICATED, a bug) stays a top-level error. A refusal leaves
the payload's other fields null, so a success must give them all. Every mutation needs a key
with the WRITE scope: a READ-only key is refused (FORBIDDEN) before the function runs.
"""

import functools
import inspect
import types
from collections.abc import Awaitable, Callable
from dataclasses import MISSING, dataclass
from enum import StrEnum
from typing import Annotated, ClassVar, ParamSpec, Protocol, Self, TypeVar, cast

import strawberry
from strawberry.types.base import StrawberryOptional, get_object_definition
from strawberry.types.field import StrawberryField
from typing_extensions import dataclass_transform

from app.errors import ErrorCode, PortalError, ValidationFailed
from resolvers.context import Context
from schema.described import object_type, subclass

ReasonArg = Annotated[str, strawberry.argument(description="Why; kept in the audit log.")]

# How a refusal reads in a payload: a malformed id answers like an unknown one (so that
# existence does not leak), and a refused argument is INVALID whichever check refused it.
_PAYLOAD_CODE = {
    ErrorCode.INVALID_ID: ErrorCode.NOT_FOUND,
    ErrorCode.INVALID_ARGUMENT: ErrorCode.INVALID,
}
# The input a refusal naming none is about: the mutation's subject (the id it acts on) when that
# is unknown or in a state that forbids the change; the version a change was based on when
# another came first.
_ABOUT_SUBJECT = {ErrorCode.NOT_FOUND, ErrorCode.INVALID_STATE, ErrorCode.GATE_FAILED}
_ABOUT = {ErrorCode.VERSION_CONFLICT: "expectedVersion"}


@dataclass(kw_only=True)
class MutationError:
    """One reason a mutation was refused; published as `<Mutation>Error`."""

    code: StrEnum
    message: str
    field: str | None


@dataclass_transform(kw_only_default=True, field_specifiers=(strawberry.field, StrawberryField))
class Payload:
    """A mutation's result, published by `@mutation` with its `errors` (empty on success).
    A refused change leaves every other field null; one that cannot be null needs a default."""

    errors: list[MutationError]
    codes: ClassVar[type[StrEnum]]
    # The fields a refusal leaves null: the nullable ones without a default.
    nulls: ClassVar[tuple[str, ...]]

    @classmethod
    def refused(cls, exc: PortalError, *, subject: str | None) -> Self | None:
        """The payload saying why `exc` refused the change; None when its code is not one of
        the payload's (it is then not the payload's to report)."""
        code = _PAYLOAD_CODE.get(exc.code, exc.code)
        if code.name not in cls.codes.__members__:
            return None
        if isinstance(exc, ValidationFailed):
            problems: list[tuple[str | None, str]] = list(exc.problems)
        else:
            about = subject if code in _ABOUT_SUBJECT else _ABOUT.get(code)
            problems = [(exc.field or about, exc.message)]
        payload = cls(**dict.fromkeys(cls.nulls))
        payload.errors = [
            MutationError(code=cls.codes[code.name], message=message, field=field)
            for field, message in problems
        ]
        return payload


def _codes(name: str, codes: tuple[ErrorCode, ...], module: str) -> type[StrEnum]:
    def members(namespace: dict[str, object]) -> None:
        namespace["__module__"] = module
        for code in codes:
            namespace[code.name] = code.value

    return cast(type[StrEnum], types.new_class(name, (StrEnum,), exec_body=members))


def _publish(
    payload: type[Payload], codes: tuple[ErrorCode, ...], *, errors: str, why: str, fault: str
) -> None:
    """`payload` as `<Mutation>Payload`, its errors `<Mutation>Error`s of `<Mutation>ErrorCode`."""
    name = payload.__name__.removesuffix("Payload")
    mutation_name = name[0].lower() + name[1:]
    payload.codes = _codes(f"{name}ErrorCode", codes, payload.__module__)
    strawberry.enum(payload.codes, description=f"Why {mutation_name} {why}.")
    error = object_type(
        subclass(MutationError, f"{name}Error", payload.__module__),
        f"An error of {mutation_name}.",
        {
            "code": (payload.codes, strawberry.field(description="What went wrong.")),
            "message": (str, strawberry.field(description="A human-readable explanation.")),
            "field": (
                str | None,
                strawberry.field(description=f"The {fault} at fault, if one is."),
            ),
        },
    )
    errors_field = strawberry.field(
        default_factory=list, description=f"{errors}; empty on success."
    )
    object_type(
        payload,
        f"The result of {mutation_name}.",
        {"errors": (types.GenericAlias(list, (error,)), errors_field)},
    )
    unset = [
        f
        for f in get_object_definition(payload, strict=True).fields
        if f.default is MISSING and f.default_factory is MISSING
    ]
    required = [f.python_name for f in unset if not isinstance(f.type, StrawberryOptional)]
    if required:
        raise TypeError(f"{payload.__name__}: give {required} a default for refusals")
    payload.nulls = tuple(f.python_name for f in unset)


Params = ParamSpec("Params")
P = TypeVar("P", bound=Payload)


class Declare(Protocol):
    """What `@mutation(...)` applies to the function it decorates."""

    def __call__(self, change: Callable[Params, Awaitable[P]], /) -> P: ...


def mutation(
    *,
    refuses: tuple[ErrorCode, ...],
    description: str,
    subject: str | None = None,
    errors: str = "Why the change was refused",
    why: str = "refused",
    payload: type[Payload] | None = None,
) -> Declare:
    """The root mutation field running the function it decorates, returning its payload: the
    function's return type, or `payload` where that cannot name it.

    A refusal whose code it `refuses` becomes the payload's errors (described as "<errors>;
    empty on success."; the enum of codes says "Why <mutation> <why>."); one about the changed
    object (unknown, or in a state that forbids the change) names `subject`, the argument or
    input field holding its id. An error's `field` is described as an input field when the
    mutation takes `input`, else as an argument. Each payload class serves one mutation."""

    def declare(change: Callable[Params, Awaitable[P]]) -> P:
        signature = inspect.signature(change)
        returns = payload or signature.return_annotation
        if not (isinstance(returns, type) and issubclass(returns, Payload)):
            raise TypeError(f"{change.__name__}: return its Payload type, or pass `payload`")
        result = cast(type[P], returns)
        fault = "input field" if "input" in signature.parameters else "argument"
        _publish(result, refuses, errors=errors, why=why, fault=fault)

        @functools.wraps(change)
        async def run(*args: Params.args, **kwargs: Params.kwargs) -> P:
            info = kwargs.get("info", args[0] if args else None)
            if not isinstance(info, strawberry.Info) or not isinstance(info.context, Context):
                raise TypeError(f"{change.__name__}: a mutation takes `info` first")
            info.context.require_write()
            try:
                return await change(*args, **kwargs)
            except PortalError as exc:
                refused = result.refused(exc, subject=subject)
                if refused is None:
                    raise
                return refused

        return strawberry.mutation(resolver=run, description=description, graphql_type=result)

    return declare
