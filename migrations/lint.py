"""Lint the migrations with squawk, one revision at a time, on the SQL Alembic renders.

Each revision is rendered alone (`alembic upgrade PREVIOUS:REVISION --sql`), so what the linter
sees is exactly what that revision runs, and a table the revision creates is known to be new.
Every finding must be fixed or waived in `migrations/lint_waivers.toml`, where a waiver names
the revision, the rule and why the finding is safe. A waiver that no longer matches a finding
fails too, so the list never outlives what it excuses.

    python -m migrations.lint            # exits 1 on an unwaived finding or a stale waiver
"""

import io
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections import Counter
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

ROOT = Path(__file__).resolve().parent.parent
WAIVERS = Path(__file__).resolve().parent / "lint_waivers.toml"
SQUAWK_CONFIG = ROOT / ".squawk.toml"


@dataclass(frozen=True)
class Finding:
    revision: str
    rule: str
    line: int
    message: str


def _config() -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["configure_logger"] = False
    return config


def render(config: Config, revision: str, previous: str | None) -> str:
    """The SQL one revision runs, as `alembic upgrade --sql` renders it."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        command.upgrade(config, f"{previous or 'base'}:{revision}", sql=True)
    return buffer.getvalue()


def _squawk() -> str:
    found = shutil.which("squawk") or str(Path(sys.executable).with_name("squawk"))
    if not Path(found).exists():
        raise SystemExit("squawk is not installed: run `make install`")
    return found


def lint(revision: str, sql: str, workdir: Path) -> list[Finding]:
    path = workdir / f"{revision}.sql"
    path.write_text(sql)
    done = subprocess.run(  # noqa: S603 - fixed arguments, the project's own files
        [_squawk(), "--config", str(SQUAWK_CONFIG), "--reporter", "json", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise SystemExit(f"squawk failed on {revision}: {done.stderr.strip() or done.stdout}")
    return [
        Finding(revision, str(item["rule_name"]), int(item["line"]), str(item["message"]))
        for item in json.loads(done.stdout)
    ]


def load_waivers() -> Counter[tuple[str, str]]:
    """How many findings of each (revision, rule) are waived."""
    waivers: Counter[tuple[str, str]] = Counter()
    for waiver in tomllib.loads(WAIVERS.read_text()).get("waiver", []):
        if not str(waiver.get("reason", "")).strip():
            raise SystemExit(f"waiver without a reason: {waiver}")
        waivers[(waiver["revision"], waiver["rule"])] += int(waiver.get("count", 1))
    return waivers


def problems(findings: list[Finding], waived: Counter[tuple[str, str]]) -> list[str]:
    """Findings beyond what is waived, and waivers that excuse more than was found."""
    found = Counter((f.revision, f.rule) for f in findings)
    out = [
        f"{f.revision}: line {f.line}: {f.rule}: {f.message}"
        for f in findings
        if found[(f.revision, f.rule)] > waived.get((f.revision, f.rule), 0)
    ]
    out += [
        f"stale waiver: {revision} {rule} waives {count}, found {found.get((revision, rule), 0)}"
        for (revision, rule), count in sorted(waived.items())
        if found.get((revision, rule), 0) < count
    ]
    return out


# `alembic_version.version_num` is a varchar(32): a longer revision id renders and lints, then
# fails the upgrade when the id is written, after the revision's own statements ran.
REVISION_ID_MAX = 32


def revision_id_problems(revisions: list[str]) -> list[str]:
    """Revision ids the version table cannot hold."""
    return [
        f"{revision}: revision id of {len(revision)} characters, at most {REVISION_ID_MAX} fit"
        for revision in revisions
        if len(revision) > REVISION_ID_MAX
    ]


def main() -> int:
    config = _config()
    revisions = list(reversed(list(ScriptDirectory.from_config(config).walk_revisions())))
    findings: list[Finding] = []
    with tempfile.TemporaryDirectory() as workdir:
        for script in revisions:
            down = script.down_revision
            previous = down if isinstance(down, str) or down is None else down[0]
            findings.extend(
                lint(script.revision, render(config, script.revision, previous), Path(workdir))
            )
    waived = load_waivers()
    failures = revision_id_problems([s.revision for s in revisions])
    failures += problems(findings, waived)
    for failure in failures:
        print(failure)
    print(
        f"migration lint: {len(revisions)} revisions, {len(findings)} findings, "
        f"{sum(waived.values())} waived, {len(failures)} problems"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
