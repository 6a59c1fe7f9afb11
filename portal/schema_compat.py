"""Breaking-change check of the GraphQL contract, the committed SDL (`schema/schema.graphql`).

Clients are built against the SDL, so a change that removes a field, an argument or an enum
value, makes an argument required, or narrows a type breaks them. Every change to the SDL is
compared with the version before it: each commit since `since` in
`schema/breaking_changes.toml` against its parent, and the working tree against `HEAD`. A
breaking change fails the check unless that file lists it as intended, with the reason; the list
is kept as the contract's history of breaking changes.

    python -m portal.schema_compat      # exits 1 on a breaking change not listed as intended
"""

import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from graphql import GraphQLError, build_schema, find_breaking_changes

ROOT = Path(__file__).resolve().parent.parent
SDL_PATH = "schema/schema.graphql"
INTENDED = ROOT / "schema" / "breaking_changes.toml"


@dataclass(frozen=True)
class Break:
    where: str
    description: str


def breaking_changes(old_sdl: str, new_sdl: str) -> list[str]:
    """What in `new_sdl` breaks a client written against `old_sdl`, in graphql-core's words."""
    return [
        change.description
        for change in find_breaking_changes(build_schema(old_sdl), build_schema(new_sdl))
    ]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments
            ["git", *args],  # noqa: S607 - git from PATH, as every developer runs it
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    return done.stdout if done.returncode == 0 else None


def _sdl_at(commit: str) -> str | None:
    return _git("show", f"{commit}:{SDL_PATH}")


def find_breaks(since: str) -> tuple[list[Break], list[str]]:
    """Breaking changes in the SDL's history after `since` and in the working tree, and notes
    on what could not be compared (no git, or history cut short)."""
    notes: list[str] = []
    found: list[Break] = []
    log = _git("log", "--no-merges", "--format=%H", f"{since}..HEAD", "--", SDL_PATH)
    if log is None:
        notes.append(f"history since {since[:12]} is not available: only the working tree")
        log = ""
    for commit in reversed(log.split()):
        before, after = _sdl_at(f"{commit}^"), _sdl_at(commit)
        if before is None or after is None:
            continue
        found += [Break(commit[:12], d) for d in breaking_changes(before, after)]
    head = _sdl_at("HEAD")
    if head is None:
        notes.append("no committed SDL at HEAD to compare the working tree with")
    else:
        current = (ROOT / SDL_PATH).read_text()
        found += [Break("working tree", d) for d in breaking_changes(head, current)]
    return found, notes


def load_intended() -> tuple[str, dict[str, str]]:
    """The commit the check starts from, and each intended change's description → reason."""
    data = tomllib.loads(INTENDED.read_text())
    intended: dict[str, str] = {}
    for change in data.get("change", []):
        if not str(change.get("reason", "")).strip():
            raise SystemExit(f"intended breaking change without a reason: {change}")
        intended[str(change["description"])] = str(change["reason"])
    return str(data["since"]), intended


def main() -> int:
    since, intended = load_intended()
    try:
        found, notes = find_breaks(since)
    except GraphQLError as exc:
        print(f"an SDL version does not parse: {exc.message}")
        return 1
    for note in notes:
        print(f"note: {note}")
    unexpected = [b for b in found if b.description not in intended]
    for item in unexpected:
        print(f"breaking change ({item.where}): {item.description}")
    if unexpected:
        print(
            "If it is intended, list it in schema/breaking_changes.toml with the reason "
            "(clients must be told); else restore what was removed or narrowed."
        )
    print(
        f"schema contract: {len(found)} breaking changes since {since[:12]}, "
        f"{len(found) - len(unexpected)} intended, {len(unexpected)} not"
    )
    return 1 if unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
