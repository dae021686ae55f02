"""The ``gpusim`` command: parses, calls the library, formats. No logic of its own.

Exit codes: 0 success; 2 bad input, with one line on stderr naming file, line and
field. Results go to stdout; progress and diagnostics to stderr. Each module of this
package registers the commands of one area on the shared Typer ``app``.
"""

from __future__ import annotations

import sys

INTERRUPTED = 130  # exit status after Ctrl-C (128 + SIGINT), as shells report it


def _interrupted() -> int:
    """Say ``gpusim: interrupted`` on stderr and return 130. Also clears CPython's
    "unhandled KeyboardInterrupt" flag: a Ctrl-C landing in code run by ``exec`` (a
    dataclass being built during an import) sets it even when the interrupt is then
    caught, and the interpreter would end by SIGINT instead of this exit status."""
    print("gpusim: interrupted", file=sys.stderr)
    exec("pass")  # runs no input: only resets the flag (see run_eval_code_obj)
    return INTERRUPTED


def _from_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is a Ctrl-C in disguise: pydantic-core turns a KeyboardInterrupt
    that lands while it builds a model's validator (a module being imported) into a
    SchemaError whose message ends with it, chaining nothing."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt) or "KeyboardInterrupt" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


try:  # Ctrl-C while the commands load: one line and 130, as during a command
    # isort: off
    # importing a module registers its commands; this order is the order of --help
    from gpusim.cli import predict, spec, serve, calibration, inputs, stack  # noqa: F401
    from gpusim.cli import collectives  # noqa: F401
    from gpusim.cli import plan  # noqa: F401
    from gpusim.cli import sweep  # noqa: F401
    # isort: on
    from gpusim.cli.aliases import rewrite, translate
    from gpusim.cli.common import app, as_flag
    from gpusim.errors import ConfigError, FieldError
except KeyboardInterrupt:
    sys.exit(_interrupted())
except Exception as exc:
    if not _from_interrupt(exc):
        raise
    sys.exit(_interrupted())

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app; bad input -> one line on stderr and exit 2; Ctrl-C
    (SIGINT) -> ``gpusim: interrupted`` and exit 130 (outputs are written whole or not
    at all, so an interrupted run leaves none half-written)."""
    args = rewrite(list(sys.argv[1:] if argv is None else argv))
    try:
        rc = app(args=args, standalone_mode=False, prog_name="gpusim")
        if rc == INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130)
            return _interrupted()
    except KeyboardInterrupt:
        return _interrupted()
    except (ConfigError, FieldError) as exc:
        print(f"gpusim: error: {translate(str(as_flag(exc)))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except MemoryError:  # a backstop: every input is bounded before it is used
        print("gpusim: error: out of memory (an input or option asks for too much)",
              file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:  # a backstop: readers say which file
        print(f"gpusim: error: an input file is not UTF-8 text (byte {exc.start}: "
              f"{exc.object[exc.start:exc.start + 1]!r})", file=sys.stderr)
        return 2
    except RecursionError:  # a backstop: readers bound their nesting
        print("gpusim: error: input nested too deeply", file=sys.stderr)
        return 2
    except OSError as exc:
        # a file the commands did not check themselves: still one line, no traceback
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"gpusim: error: {where}{exc.strerror or exc}".replace("\n", " "),
              file=sys.stderr)
        return 2
    except Exception as exc:
        if _from_interrupt(exc):   # Ctrl-C while a command imports what it needs
            return _interrupted()
        # click (vendored by typer) usage errors: one line, exit 2
        name = type(exc).__name__
        if name == "NoArgsIsHelpError":
            return 0
        if name == "Abort":
            print("gpusim: aborted", file=sys.stderr)
            return 1
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            msg = exc.format_message().replace("\n", " ")
            print(f"gpusim: error: {translate(msg)} (see --help)", file=sys.stderr)
            return 2
        raise
    return 0

