"""Query cost from a parsed document: fields, page sizes, lists, fragments, depth."""

import time
from typing import Any

import pytest
from graphql import build_schema, parse

from app.ratelimit import BucketLimits, offer
from resolvers.cost import Cost, PageSizes, operation_cost

SDL = """
type Query {
  viewer: Viewer!
  merchants(first: Int, after: String): MerchantConnection!
  merchant(id: ID!): Merchant
  tags: [String!]!
}
type Viewer { role: String! name: String! }
type MerchantConnection { edges: [MerchantEdge!]! pageInfo: PageInfo! }
type MerchantEdge { cursor: String! node: Merchant! }
type PageInfo { hasNextPage: Boolean! }
type Merchant {
  id: ID!
  name: String!
  payments(first: Int): PaymentConnection!
  owner: Merchant
}
type PaymentConnection { edges: [PaymentEdge!]! }
type PaymentEdge { node: Payment! }
type Payment { id: ID! attempts: [Attempt!]! }
type Attempt { number: Int! }
type Mutation { touch(id: ID!): Merchant }
"""
SCHEMA = build_schema(SDL)
PAGES = PageSizes(default=20, maximum=100)


def cost(query: str, variables: dict[str, Any] | None = None, name: str | None = None) -> Cost:
    return operation_cost(SCHEMA, parse(query), name, variables, PAGES)


def test_plain_fields_and_depth() -> None:
    assert cost("{ viewer { role name } }") == Cost(fields=3, depth=2)
    assert cost("{ viewer { role name } }").total == 5


def test_typename_is_free() -> None:
    assert cost("{ __typename viewer { __typename role } }") == Cost(fields=2, depth=2)
    assert cost("{ __typename }").total == 1  # never free as a whole


def test_connection_multiplies_by_first_once() -> None:
    # merchants 1 + 10 * (edges 1 + node 1 + id 1 + name 1) + pageInfo 1 + hasNextPage 1
    query = "{ merchants(first: 10) { edges { node { id name } } pageInfo { hasNextPage } } }"
    assert cost(query) == Cost(fields=1 + 10 * (4 + 2), depth=4)


def test_missing_first_uses_the_default_and_large_first_is_capped() -> None:
    assert cost("{ merchants { edges { cursor } } }").fields == 1 + 20 * 2
    assert cost("{ merchants(first: 5000) { edges { cursor } } }").fields == 1 + 100 * 2
    assert cost("{ merchants(first: null) { edges { cursor } } }").fields == 1 + 20 * 2
    assert cost("{ merchants(first: -3) { edges { cursor } } }").fields == 1


def test_first_from_variables() -> None:
    query = "query ($n: Int) { merchants(first: $n) { edges { cursor } } }"
    assert cost(query, {"n": 7}).fields == 1 + 7 * 2
    assert cost(query, {}).fields == 1 + 20 * 2
    assert cost(query, {"n": "seven"}).fields == 1 + 20 * 2
    assert cost(query, {"n": True}).fields == 1 + 20 * 2


def test_nested_pages_multiply() -> None:
    query = """{ merchants(first: 10) { edges { node {
        payments(first: 5) { edges { node { id } } } } } } }"""
    payments = 1 + 5 * (1 + 1 + 1)
    assert cost(query) == Cost(fields=1 + 10 * (1 + 1 + payments), depth=7)


def test_unpaginated_lists_use_the_default_page_size() -> None:
    query = """{ merchant(id: "m") { payments(first: 2) { edges { node {
        attempts { number } } } } } }"""
    attempts = 1 + 20 * 1
    assert cost(query) == Cost(fields=1 + (1 + 2 * (1 + 1 + attempts)), depth=6)
    assert cost("{ tags }") == Cost(fields=1, depth=1)  # a leaf list is one field


def test_fragments_count_where_spread() -> None:
    query = """
      query { merchants(first: 3) { edges { node { ...M } } } merchant(id: "x") { ...M } }
      fragment M on Merchant { id name owner { ... on Merchant { id } } }
    """
    fragment = 2 + (1 + 1)
    assert cost(query) == Cost(fields=(1 + 3 * (1 + 1 + fragment)) + (1 + fragment), depth=5)


def test_operation_selection() -> None:
    doc = "query A { viewer { role } } query B { merchants(first: 2) { edges { cursor } } }"
    assert cost(doc, name="A") == Cost(fields=2, depth=2)
    assert cost(doc, name="B") == Cost(fields=1 + 2 * 2, depth=3)
    assert cost(doc) == Cost(fields=0, depth=0)  # ambiguous: execution reports the error
    assert cost(doc, name="C").total == 1


def test_mutations_are_costed_on_the_mutation_root() -> None:
    assert cost('mutation { touch(id: "1") { id name } }') == Cost(fields=3, depth=2)


def test_unknown_fields_and_cycles_do_not_break_costing() -> None:
    assert cost("{ nope { deeper } viewer { role } }") == Cost(fields=3, depth=2)
    cyclic = """{ merchant(id: "x") { ...A } }
      fragment A on Merchant { owner { ...B } } fragment B on Merchant { owner { ...A } }"""
    assert cost(cyclic).total > 0


def test_introspection_is_costed() -> None:
    # __schema 1 + types (a list of the schema's own types: no page multiplies it) 1 + name 1
    assert cost("{ __schema { types { name } } }") == Cost(
        fields=1 + 1 + 1, depth=3, introspection_lists=1
    )


def test_fragment_bombs_are_costed_in_linear_time() -> None:
    levels = 40
    fragments = [
        f"fragment F{i} on Merchant {{ owner {{ ...F{i + 1} }} a: owner {{ ...F{i + 1} }} }}"
        for i in range(levels)
    ]
    fragments.append(f"fragment F{levels} on Merchant {{ id }}")
    query = '{ merchant(id: "x") { ...F0 } }\n' + "\n".join(fragments)
    started = time.perf_counter()
    result = cost(query)
    assert time.perf_counter() - started < 0.5
    assert result.fields > 2**levels


@pytest.mark.parametrize("cost_units", [1, 5, 20])
def test_pure_bucket_fills_refuses_and_drains(cost_units: int) -> None:
    limits = BucketLimits(capacity=20, leak_per_second=2.0)
    level, last = 0.0, None
    admitted = 0
    for _ in range(50):
        decision, level, last = offer(level, last, 100.0, cost_units, limits)
        admitted += decision.allowed
    assert admitted == 20 // cost_units
    refused, level, last = offer(level, last, 100.0, cost_units, limits)
    assert not refused.allowed
    wait = refused.retry_after_seconds
    assert wait == pytest.approx((level + cost_units - 20) / 2.0)
    later, _, _ = offer(level, last, 100.0 + wait, cost_units, limits)
    assert later.allowed


def test_pure_bucket_ignores_a_clock_stepping_back() -> None:
    limits = BucketLimits(capacity=10, leak_per_second=1.0)
    _, level, last = offer(0.0, None, 100.0, 10, limits)
    decision, level, last = offer(level, last, 50.0, 1, limits)
    assert not decision.allowed
    assert last == 100.0


def test_too_costly_never_fits() -> None:
    limits = BucketLimits(capacity=10, leak_per_second=1.0)
    decision, level, _ = offer(0.0, None, 0.0, 11, limits)
    assert not decision.allowed
    assert decision.too_costly
    assert level == 0.0


def test_introspection_counts_its_fields_once_and_measures_list_nesting() -> None:
    from graphql import get_introspection_query

    standard = cost(get_introspection_query(descriptions=True))
    # The schema is read from memory: no page multiplies it, however many types there are.
    assert standard.fields < 300
    assert standard.introspection_lists == 3
    assert cost('{ __type(name: "Merchant") { name } }') == Cost(
        fields=2, depth=2, introspection_lists=0
    )
    nested = "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }"
    assert cost(nested).introspection_lists == 4
    # Data fields beside introspection are costed as ever.
    mixed = cost("{ __schema { types { name } } merchants(first: 10) { edges { cursor } } }")
    assert mixed.fields == 3 + 1 + 10 * 2
    assert mixed.introspection_lists == 1
