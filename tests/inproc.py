"""The command line called in-process (no interpreter start-up): for tests that run it hundreds of times.

`lensdesign.cli.main` runs as a user's call does (its error handling, exit codes), except that the click command
typer builds from the app is built once and reused (typer rebuilds it on every call, ~0.1 s).
"""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Any

_COMMAND: Any = None


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_main(*args: object) -> Result:
    """`lensdesign ARGS` through `lensdesign.cli.main` with captured output; the exit code from SystemExit.
    Any other exception (a traceback a user would see) propagates to the test."""
    import typer

    from lensdesign import cli

    global _COMMAND
    if _COMMAND is None:
        _COMMAND = typer.main.get_command(cli.app)
    out, err = io.StringIO(), io.StringIO()
    argv, app = sys.argv, cli.app
    sys.argv = ["lensdesign", *map(str, args)]
    cli.app = lambda: _COMMAND(prog_name="lensdesign")  # type: ignore[assignment]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, cli.app = argv, app
    return Result(code, out.getvalue(), err.getvalue())
