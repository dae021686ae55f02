"""The ``gpusim`` command: parses, calls the library, formats. No logic of its own.

Exit codes: 0 success; 2 bad input, with one line on stderr naming file, line and
field. Results go to stdout; progress and diagnostics to stderr. Each module of this
package registers the commands of one area on the shared Typer ``app``.
"""

from __future__ import annotations

import sys

# isort: off
# importing a module registers its commands; this order is the order of --help
from gpusim.cli import predict, spec, serve, calibration, inputs, stack  # noqa: F401
from gpusim.cli import collectives  # noqa: F401
# isort: on
from gpusim.cli.common import app, as_flag
from gpusim.errors import ConfigError, FieldError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app; bad input -> one line on stderr and exit 2."""
    try:
        app(args=argv, standalone_mode=False, prog_name="gpusim")
    except ConfigError as exc:
        print(f"gpusim: error: {as_flag(exc)}", file=sys.stderr)
        return 2
    except FieldError as exc:
        print(f"gpusim: error: {as_flag(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except OSError as exc:
        # a file the commands did not check themselves: still one line, no traceback
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"gpusim: error: {where}{exc.strerror or exc}".replace("\n", " "),
              file=sys.stderr)
        return 2
    except Exception as exc:
        # click (vendored by typer) usage errors: one line, exit 2
        name = type(exc).__name__
        if name == "NoArgsIsHelpError":
            return 0
        if name == "Abort":
            print("gpusim: aborted", file=sys.stderr)
            return 1
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            msg = exc.format_message().replace("\n", " ")
            print(f"gpusim: error: {msg} (see --help)", file=sys.stderr)
            return 2
        raise
    return 0

