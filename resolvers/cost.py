"""Query cost: what an operation may cost, computed once from its parsed document."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    NullValueNode,
    SchemaMetaFieldDef,
    SelectionSetNode,
    TypeMetaFieldDef,
    VariableNode,
    get_named_type,
    get_nullable_type,
    get_operation_ast,
    is_list_type,
)


@dataclass(frozen=True, slots=True)
class Cost:
    """`fields` counts every selected field once per object it may be resolved on."""

    fields: int
    depth: int
    # Introspection lists nested in one another (`types { fields { args } }` is 3): what
    # bounds an introspection query's work, since its lists are the schema's, not pages.
    introspection_lists: int = 0

    @property
    def total(self) -> int:
        # Depth is added because each level is another round of loader batches.
        return max(1, self.fields + self.depth)


@dataclass(frozen=True, slots=True)
class PageSizes:
    """How page sizes are read: `first` when given (capped), else the default."""

    default: int
    maximum: int


def operation_cost(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
    pages: PageSizes,
) -> Cost:
    """The cost of the operation `operation_name` selects, before validation or execution.

    Every field costs 1 for each object it may be resolved on. A field with a `first`
    argument multiplies what it selects by that page size (`first` capped at the maximum,
    the default when absent); the list directly inside such a connection (`edges`) is that
    page, not another multiplier. Any other list field multiplies its selection by the
    default page size. `__typename` is free. Fragments count where they are spread;
    `@skip`/`@include` are ignored, so the cost is an upper bound. Unknown fields count 1
    and validation rejects them later.

    Introspection (`__schema`, `__type`) reads the schema in memory, never the database: its
    fields count 1 each, its lists multiply nothing, and `introspection_lists` says how deeply
    its lists nest, which callers bound instead (`MAX_INTROSPECTION_LISTS`).
    """
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return Cost(fields=0, depth=0)
    root = schema.get_root_type(operation.operation)
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    walker = _Walker(schema, fragments, variables or {}, pages)
    fields, depth = walker.selection(root, operation.selection_set, False, frozenset())
    return Cost(fields=fields, depth=depth, introspection_lists=walker.introspection_lists)


# The standard introspection query (GraphiQL's, code generators') nests three lists:
# `types { fields { args } }`. Deeper nesting (`fields { type { fields { ... } } }`) would
# multiply the schema's size by itself at each level.
MAX_INTROSPECTION_LISTS = 3


class _Walker:
    """Costs are computed per unit multiplier (a cost is linear in it), so a fragment's cost
    is computed once however often it is spread: no exponential walk on fragment bombs."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
        pages: PageSizes,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.pages = pages
        self._spread: dict[tuple[str, bool, int | None], tuple[int, int]] = {}
        # The deepest nesting of lists seen inside introspection fields.
        self.introspection_lists = 0

    def selection(
        self,
        parent: GraphQLNamedType | None,
        selection_set: SelectionSetNode,
        in_connection: bool,
        spreading: frozenset[str],
        lists: int | None = None,
    ) -> tuple[int, int]:
        """(fields, depth) of a selection set, per object it is resolved on. `lists` is None
        outside introspection, else how many introspection lists enclose this selection."""
        fields = 0
        deepest = 0
        for node in selection_set.selections:
            if isinstance(node, FieldNode):
                cost, reached = self.field(parent, node, in_connection, spreading, lists)
            elif isinstance(node, InlineFragmentNode):
                target = parent
                if node.type_condition is not None:
                    target = self.schema.get_type(node.type_condition.name.value)
                cost, reached = self.selection(
                    target, node.selection_set, in_connection, spreading, lists
                )
            elif isinstance(node, FragmentSpreadNode):
                cost, reached = self.spread(node.name.value, in_connection, spreading, lists)
            else:  # pragma: no cover - graphql-core has no other selection kinds
                continue
            fields += cost
            deepest = max(deepest, reached)
        return fields, deepest

    def spread(
        self, name: str, in_connection: bool, spreading: frozenset[str], lists: int | None
    ) -> tuple[int, int]:
        known = self._spread.get((name, in_connection, lists))
        if known is not None:
            return known
        fragment = self.fragments.get(name)
        # A cycle or an unknown fragment is a validation error; stop counting there.
        if fragment is None or name in spreading:
            return 0, 0
        target = self.schema.get_type(fragment.type_condition.name.value)
        found = self.selection(
            target, fragment.selection_set, in_connection, spreading | {name}, lists
        )
        self._spread[(name, in_connection, lists)] = found
        return found

    def field(
        self,
        parent: GraphQLNamedType | None,
        node: FieldNode,
        in_connection: bool,
        spreading: frozenset[str],
        lists: int | None,
    ) -> tuple[int, int]:
        name = node.name.value
        if name == "__typename":
            return 0, 0
        definition = self._definition(parent, name)
        if definition is None or node.selection_set is None:
            return 1, 1
        is_list = is_list_type(get_nullable_type(definition.type))
        if lists is None and name in {"__schema", "__type"}:
            lists = 0
        if lists is not None:
            inner = lists + 1 if is_list else lists
            self.introspection_lists = max(self.introspection_lists, inner)
            fields, reached = self.selection(
                get_named_type(definition.type), node.selection_set, False, spreading, inner
            )
            return 1 + fields, 1 + reached
        factor = 1
        child_in_connection = False
        if "first" in definition.args:
            factor = self._page_size(node)
            child_in_connection = not is_list
        elif is_list and not in_connection:
            factor = self.pages.default
        fields, reached = self.selection(
            get_named_type(definition.type),
            node.selection_set,
            child_in_connection,
            spreading,
        )
        return 1 + factor * fields, 1 + reached

    def _definition(self, parent: GraphQLNamedType | None, name: str) -> GraphQLField | None:
        if name == "__schema" and parent is self.schema.query_type:
            return SchemaMetaFieldDef
        if name == "__type" and parent is self.schema.query_type:
            return TypeMetaFieldDef
        if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            found: GraphQLField | None = parent.fields.get(name)
            return found
        return None

    def _page_size(self, node: FieldNode) -> int:
        value: Any = None
        for argument in node.arguments or ():
            if argument.name.value != "first":
                continue
            literal = argument.value
            if isinstance(literal, IntValueNode):
                value = int(literal.value)
            elif isinstance(literal, VariableNode):
                value = self.variables.get(literal.name.value)
            elif not isinstance(literal, NullValueNode):
                value = None
        if not isinstance(value, int) or isinstance(value, bool):
            return self.pages.default
        return min(max(value, 0), self.pages.maximum)
