"""`mmtune` command line: a thin dispatcher.

Each command group lives in `mmtune.commands.<name>` and exposes `add_parser(subparsers)`,
which registers its arguments and sets `func` (a callable taking the parsed args and
returning an exit status). Command modules import nothing heavy at module level, so
`mmtune --help` and `mmtune data check` start fast; torch is imported only by the commands
that need it, inside their `func`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mmtune import __version__
from mmtune.errors import UserError

# Command modules, in the order --help shows them. Add yours here.
COMMANDS: tuple[str, ...] = (
    "data",
    "models",
    "train",
    "demo",
    "merge",
    "serve",
    "chat",
    "infer",
    "export",
    "verify",
    "jobs",
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mmtune.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
