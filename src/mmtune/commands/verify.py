"""`mmtune verify SOURCE TARGET`: does an exported model answer like the one it came from?"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="compare greedy answers of an export (GGUF in llama.cpp, merged folder) with its source",
        description="SOURCE is anything mmtune loads (a training run's adapter, a merged or plain folder, a "
        "registry name), run with transformers; TARGET is a .gguf file, run by llama.cpp (needs "
        "llama-cpp-python), or a folder/adapter, run with transformers. Both answer the same prompts "
        "greedily (the run's validation prompts when it has them, else a few fixed ones): f32/f16 files "
        "and folders must answer identically, quantised files reach --min-agreement. For a GGUF file the "
        "tokenizer and llama.cpp's chat rendering are checked against training too. Exit status 1 on a "
        "failed check.",
        epilog="examples:\n  mmtune verify runs/demo demo-f16.gguf\n  mmtune verify runs/demo runs/demo-merged\n"
        "  mmtune verify runs/demo-merged demo-q4_k_m.gguf --min-agreement 0.9",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="the model exported from: training run, merged folder, registry name")
    p.add_argument("target", help="the export: a .gguf file, or a merged folder / adapter")
    from mmtune.commands.export import add_check_args

    add_check_args(p)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from mmtune.commands.export import check

    return check(args.source, args.target, args)
