"""`mmtune merge`: fold a LoRA adapter into its base, giving a standalone Hugging Face folder."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help="merge a LoRA adapter into its base model (a standalone HF folder)",
        description="Merge the LoRA adapter of a training run into its base model and save a standalone "
        "Hugging Face folder (safetensors, tokenizer with chat template, generation config, mmtune.json "
        "recording base and adapter) that plain transformers loads. A vision-language model's adapter gives a "
        "merged vision model with its processor.",
        epilog="example:\n  mmtune merge --adapter runs/demo --out runs/demo-merged",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--adapter", required=True, metavar="DIR", help="output folder of a LoRA training run")
    p.add_argument("--out", metavar="DIR", help="where to save the merged model (default: ADAPTER-merged)")
    p.add_argument(
        "--dtype",
        default="auto",
        help="dtype to save in: auto (the base's own), bf16, fp16 or fp32 (default: auto)",
    )
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if an earlier merge wrote it; any other folder is refused "
                   "(default: off)")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmtune.imagegen.run import read_run

    if read_run(args.adapter) is not None:  # a picture (FLUX LoRA) run: fused into a diffusers folder
        from mmtune.imagegen.generate import merge_picture_run

        out = merge_picture_run(args.adapter, args.out, overwrite=args.overwrite, dtype=args.dtype)
        print(f"merged model saved in {out}\ntry it: mmtune generate {out} --prompt ... --out pic.png")
        return 0
    from mmtune.commands.preflight import check_adapter, check_merge_output
    from mmtune.export.merge import default_merged_dir, merge_adapter  # light: torch is imported when merging

    adapter = Path(args.adapter).expanduser()
    check_adapter(adapter, "--adapter")
    out = Path(args.out).expanduser() if args.out else default_merged_dir(adapter)
    check_merge_output(out, args.overwrite)

    out = merge_adapter(args.adapter, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"merged model saved in {out}")
    print(f"try it: mmtune chat {out}")
    return 0
