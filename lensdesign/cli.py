"""The lensdesign command line: thin wrappers that parse, call the library and print with rich.

Each command lives in `lensdesign/commands/<name>.py` with a `register(app)` function. Any user-facing
error (LensdesignError) is printed as one line on stderr with exit code 2, without a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import typer

from lensdesign import memory
from lensdesign.errors import LensdesignError

app = typer.Typer(
    name="lensdesign",
    help="Design diffractive lenses end to end: optimize the height map and the reconstruction, export "
    "fabrication files, report PSF/MTF and image quality.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

COMMAND_MODULES = [
    "lensdesign.commands.core",
    "lensdesign.commands.optimize",
    "lensdesign.commands.simulate",
    "lensdesign.commands.export",
    "lensdesign.commands.report",
    "lensdesign.commands.camera",
]

memory.configure()  # before the commands import torch: large CPU buffers stay mapped (see lensdesign.memory)
for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Console-script entry point."""
    guard: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # under torchrun: one line on rank 0 names a failed rank
        from lensdesign.distributed import failure_guard

        guard = failure_guard()
    try:
        with guard:
            app()
    except LensdesignError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
