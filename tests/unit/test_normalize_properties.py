"""Mutated processor payloads always give valid records or dead letters, never a crash."""

import copy
import json
import re
from xml.etree.ElementTree import Element, tostring

import pytest
from defusedxml.ElementTree import fromstring
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.enums import Processor
from app.processors.normalize.dispatch import (
    normalize_items,
    normalize_payload,
    normalize_stored,
    record_to_json,
)
from app.processors.normalize.records import (
    ISO_CURRENCIES,
    CanonicalRecord,
    NormalizeError,
    RejectedRecord,
)
from tests.support.normalize import PROCESSOR_FIXTURES

JSON_FIXTURES: list[tuple[Processor, object]] = [
    (Processor(path.parent.name), json.loads(path.read_bytes()))
    for path in sorted(PROCESSOR_FIXTURES.glob("*/*.json"))
]
XML_FIXTURES: list[bytes] = [
    path.read_bytes() for path in sorted(PROCESSOR_FIXTURES.glob("*/*.xml"))
]
ALL_BODIES: list[tuple[Processor, bytes]] = [
    (Processor(path.parent.name), path.read_bytes())
    for path in sorted(PROCESSOR_FIXTURES.glob("*/*.*"))
]

PROPERTY_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

Path_ = tuple[str | int, ...]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
    | st.sampled_from(
        ["", "failed", "succeeded", "true", "usd", "2001", "4111111111111111", "a\x00", "\ud800"]
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)


def iter_paths(node: object, prefix: Path_ = ()) -> list[Path_]:
    found: list[Path_] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((*prefix, key))
            found.extend(iter_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.append((*prefix, index))
            found.extend(iter_paths(value, (*prefix, index)))
    return found


def parent_of(doc: object, path: Path_) -> object:
    node = doc
    for step in path[:-1]:
        node = node[step]  # type: ignore[index]
    return node


@st.composite
def mutated_json(draw: st.DrawFn) -> tuple[Processor, object]:
    processor, original = draw(st.sampled_from(JSON_FIXTURES))
    doc = copy.deepcopy(original)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = iter_paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = parent_of(doc, path)
        key = path[-1]
        assert isinstance(parent, dict | list)
        current = parent[key]  # type: ignore[index]
        kind = draw(st.sampled_from(["drop", "replace", "wrap_list", "wrap_obj", "stringify"]))
        if kind == "drop":
            del parent[key]  # type: ignore[arg-type]
            continue
        if kind == "replace":
            new: object = draw(json_values)
        elif kind == "wrap_list":
            new = [current]
        elif kind == "wrap_obj":
            new = {draw(st.sampled_from(["data", "object", "value", "x"])): current}
        else:
            new = json.dumps(current)
        parent[key] = new  # type: ignore[index]
    return processor, doc


def check(results: object) -> None:
    """What every caller of normalize_payload may rely on."""
    assert isinstance(results, list)
    for result in results:
        if isinstance(result, RejectedRecord):
            assert isinstance(result.reason, str)
            assert result.reason
            # Bad data is fine; a normalizer bug (an unexpected exception) is not.
            assert not result.reason.startswith("internal error"), result.reason
            assert isinstance(result.payload_excerpt, str)
            assert len(result.payload_excerpt) <= 610
            continue
        assert isinstance(result, CanonicalRecord)
        assert isinstance(result.amount_minor, int)
        assert not isinstance(result.amount_minor, bool)
        assert result.amount_minor >= 0
        assert result.currency in ISO_CURRENCIES
        assert result.status in ("failed", "succeeded")
        assert (result.status == "failed") == (result.decline is not None)
        assert result.attempted_at.utcoffset() is not None
        assert isinstance(result.processor_payment_id, str)
        assert result.processor_payment_id
        card = result.card
        if card is not None:
            assert card.last4 is None or re.fullmatch(r"\d{4}", card.last4)
            assert card.bin is None or re.fullmatch(r"\d{6}|\d{8}", card.bin)
            assert card.country is None or re.fullmatch(r"[A-Z]{2}", card.country)
            assert card.brand is None or card.brand == card.brand.lower()
            assert card.exp_month is None or 1 <= card.exp_month <= 12
        for text in (result.processor_payment_id, result.customer_id, result.invoice_ref):
            assert text is None or ("\x00" not in text and text.encode("utf-8"))
        rendered = record_to_json(result)
        json.dumps(rendered)
        assert str(rendered["attempted_at"]).endswith("Z")


def run_allowing_unreadable(processor: Processor, body: bytes) -> None:
    try:
        results = normalize_payload(processor, body)
    except NormalizeError as exc:
        message = str(exc)
    else:
        check(results)
        return
    assert message
    assert "\n" not in message


PAN_IN_FIXTURES = ("4242424242424242", "5105105105105100")


def check_replay(processor: Processor, body: bytes) -> None:
    """Each record's raw payload is card-number free and replays to the same result."""
    try:
        items = normalize_items(processor, body)
    except NormalizeError:
        return
    for item in items:
        stored = json.dumps(item.raw)
        assert not any(pan in stored for pan in PAN_IN_FIXTURES)
        assert normalize_stored(processor, json.loads(stored)) == [item.result]


@pytest.mark.parametrize(("processor", "body"), ALL_BODIES)
def test_every_fixture_is_valid_unmutated(processor: Processor, body: bytes) -> None:
    check(normalize_payload(processor, body))


@pytest.mark.parametrize(("processor", "body"), ALL_BODIES)
def test_every_fixture_record_replays_from_its_raw_payload(
    processor: Processor, body: bytes
) -> None:
    check_replay(processor, body)


@PROPERTY_SETTINGS
@given(mutated_json())
def test_mutated_json_payloads_give_records_or_dead_letters(case: tuple[Processor, object]) -> None:
    processor, doc = case
    body = json.dumps(doc).encode()
    check(normalize_payload(processor, body))
    check_replay(processor, body)


@PROPERTY_SETTINGS
@given(st.sampled_from(ALL_BODIES), st.data())
def test_truncated_bodies_parse_or_raise_normalize_error(
    case: tuple[Processor, bytes], data: st.DataObject
) -> None:
    processor, body = case
    cut = data.draw(st.integers(min_value=0, max_value=len(body)))
    run_allowing_unreadable(processor, body[:cut])


@PROPERTY_SETTINGS
@given(st.sampled_from(list(Processor)), st.binary(max_size=200))
def test_garbage_bodies_parse_or_raise_normalize_error(processor: Processor, body: bytes) -> None:
    run_allowing_unreadable(processor, body)


@PROPERTY_SETTINGS
@given(st.sampled_from(list(Processor)), json_values)
def test_any_json_value_gives_records_or_dead_letters(processor: Processor, doc: object) -> None:
    run_allowing_unreadable(processor, json.dumps(doc).encode())


XML_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=20
) | st.sampled_from(["", "USD", "JPY", "1.00", "12.3456", "Yes", "2001", "soft_declined"])


@st.composite
def mutated_xml(draw: st.DrawFn) -> bytes:
    root = fromstring(draw(st.sampled_from(XML_FIXTURES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        pairs: list[tuple[Element, Element]] = [
            (parent, child) for parent in root.iter() for child in parent
        ]
        if not pairs:
            break
        parent, child = draw(st.sampled_from(pairs))
        kind = draw(st.sampled_from(["drop", "text", "rename", "nil", "nest", "duplicate"]))
        if kind == "drop":
            parent.remove(child)
        elif kind == "text":
            child.text = draw(XML_TEXT)
        elif kind == "rename":
            child.tag = draw(st.sampled_from(["transaction", "amount", "id", "credit-card", "x"]))
        elif kind == "nil":
            child.set("nil", "true")
        elif kind == "nest":
            wrapper = Element(draw(st.sampled_from(["transaction", "customer", "wrap"])))
            index = list(parent).index(child)
            parent.remove(child)
            wrapper.append(child)
            parent.insert(index, wrapper)
        else:
            parent.append(copy.deepcopy(child))
    return tostring(root)


@PROPERTY_SETTINGS
@given(mutated_xml())
def test_mutated_braintree_xml_gives_records_or_dead_letters(body: bytes) -> None:
    run_allowing_unreadable(Processor.BRAINTREE, body)
    check_replay(Processor.BRAINTREE, body)
