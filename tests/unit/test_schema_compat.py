"""The contract check: what counts as breaking a client of the SDL."""

from portal.schema_compat import breaking_changes, load_intended

BEFORE = """
enum Processor { STRIPE ADYEN }
input PaymentFilter { processor: Processor, search: String }
type Payment { id: ID!, amount: Int!, note: String }
type Query { payments(first: Int, filter: PaymentFilter): [Payment!]! }
"""


def _after(old: str, new: str) -> list[str]:
    assert old in BEFORE
    return breaking_changes(BEFORE, BEFORE.replace(old, new))


def test_additions_break_nothing() -> None:
    assert _after("note: String }", "note: String, currency: String }") == []
    assert _after("STRIPE ADYEN", "STRIPE ADYEN BRAINTREE") == []
    assert _after("search: String }", "search: String, last4: String }") == []


def test_removed_field_is_breaking() -> None:
    assert _after(", note: String", "") == ["Field Payment.note was removed."]


def test_narrowed_and_required_inputs_are_breaking() -> None:
    assert _after("first: Int,", "first: Int!,") == [
        "Argument Query.payments(first:) has changed type from Int to Int!."
    ]
    assert len(_after("search: String }", "search: String, last4: String! }")) == 1


def test_removed_enum_value_and_changed_output_type_are_breaking() -> None:
    assert _after("STRIPE ADYEN", "STRIPE") == ["Enum value Processor.ADYEN was removed."]
    assert len(_after("amount: Int!", "amount: String!")) == 1


def test_the_intended_list_names_where_the_check_starts() -> None:
    since, intended = load_intended()
    assert len(since) == 40
    assert all(reason.strip() for reason in intended.values())
