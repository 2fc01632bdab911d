"""`mmtune` command line: a thin dispatcher.

Each command group lives in `mmtune.commands.<name>` and exposes `add_parser(subparsers)`,
which registers its arguments and sets `func` (a callable taking the parsed args and
returning an exit status). Command modules import nothing heavy at module level, so
`mmtune --help` and `mmtune data check` start fast; torch is imported only by the commands
that need it, inside their `func`, after checking their arguments (`commands/preflight.py`).

A mistake ends in one `error: ...` line naming the fix and exit status 2; anything unexpected in
one line and exit status 1. `--debug` (before or after the command, or MMTUNE_DEBUG=1) shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mmtune import __version__
from mmtune.errors import UserError

# Command modules, in the order --help shows them. Add yours here.
COMMANDS: tuple[str, ...] = (
    "data",
    "models",
    "train",
    "generate",
    "demo",
    "merge",
    "serve",
    "chat",
    "infer",
    "export",
    "verify",
    "jobs",
    "doctor",
)

EPILOG = """\
examples:
  mmtune data check examples/data/chat.jsonl          check a file, every problem listed
  mmtune data convert in.json out.jsonl --to openai    convert between data formats
  mmtune models                                        supported model families
  mmtune train --data examples/data/chat.jsonl --output runs/demo --max-steps 20

Run `mmtune COMMAND --help` for the options of a command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmtune",
        description="Fine-tune text LLMs and vision-language models on your own data, end to end.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mmtune {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mmtune.commands.{name}").add_parser(sub)
    _add_debug(sub)
    return parser


DEBUG_HELP = "on an error, show the full traceback instead of one line (default: off)"


def _add_debug(sub: argparse._SubParsersAction) -> None:
    """--debug after the command too (`mmtune train ... --debug`), on every command and sub-command."""
    for command in set(sub.choices.values()):
        if not any("--debug" in a.option_strings for a in command._actions):
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug(action)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # the launcher re-runs them under torchrun
    args.debug = args.debug or os.environ.get("MMTUNE_DEBUG", "") not in ("", "0")
    if not getattr(args, "func", None):
        # a group without its sub-command (`mmtune data`) prints that group's help
        (getattr(args, "_parser", None) or parser).print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except UserError as e:  # an error the user can fix: one clear message, no traceback
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the user named that cannot be read or written
        if args.debug:
            raise
        if e.filename is None:
            return _unexpected(e)
        print(f"error: {e.filename}: {e.strerror or e} (check the path and its permissions)", file=sys.stderr)
        return 2
    except Exception as e:  # a bug or a broken environment: one line, the traceback on request
        if args.debug:
            raise
        return _unexpected(e)


def _unexpected(e: BaseException) -> int:
    print(f"error: {type(e).__name__}: {one_line(str(e))} (unexpected: run again with `mmtune --debug ...` "
          "to see where, and report it)", file=sys.stderr)
    return 1


def one_line(text: str) -> str:
    return " ".join(text.split()) or "no details"


if __name__ == "__main__":
    sys.exit(main())
