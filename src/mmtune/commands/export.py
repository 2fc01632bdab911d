"""`mmtune export`: write a model (or a training run, merged on the way) as a GGUF file for llama.cpp."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a Llama/Qwen2-family model or training run to GGUF (llama.cpp)",
        description="Write a model as GGUF, following llama.cpp's converter (tensor names, Q/K permutation, "
        "gpt2 BPE tokenizer, chat template). An adapter folder is merged into its base first.",
        epilog="examples:\n  mmtune export runs/demo --format gguf --out demo-f16.gguf\n"
        "  mmtune export runs/demo-merged --format gguf --dtype q8_0 --out demo-q8_0.gguf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="model folder, registry name, .gguf file or training output folder")
    p.add_argument("--format", default="gguf", choices=["gguf"], help="output format (default: gguf)")
    p.add_argument(
        "--dtype",
        default="f16",
        choices=["f32", "f16", "q8_0"],
        help="weight type of 2-D tensors; norms stay f32 (default: f16)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="output file, e.g. model-f16.gguf")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from mmtune.commands.preflight import check_model_arg, check_output_file

    check_model_arg(args.model)
    check_output_file(args.out, "--out", inputs=(args.model,), example="model-f16.gguf")
    from mmtune.export.gguf import export_gguf

    out = export_gguf(args.model, args.out, dtype=args.dtype)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0
