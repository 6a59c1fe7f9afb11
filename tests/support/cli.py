"""The `portal` command run as a user runs it: a fresh interpreter in the repository."""

import subprocess

from tests.support.stack import PORTAL, ROOT


def run_portal(
    env: dict[str, str] | None, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`portal ARGS...` with `env` (None: this process's environment), its output captured."""
    return subprocess.run(  # noqa: S603 - fixed argv, no shell
        [*PORTAL, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def portal_ok(env: dict[str, str], *args: str) -> str:
    """The output of `portal ARGS...`, which must succeed."""
    done = run_portal(env, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
