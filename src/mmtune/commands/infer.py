"""`mmtune infer`: predictions for every row of a data file, with optional metrics."""

from __future__ import annotations

import argparse
import json
import sys

from mmtune.commands.chat import (
    add_generation_arguments,
    add_media_size_arguments,
    add_model_argument,
    add_remote_media_argument,
    generation_options,
    media_sizes,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "infer",
        help="batch predictions for a data file (and exact match / BLEU / ROUGE-L)",
        description="Generate an answer for every row of a data file (any format mmtune reads): the prompt is "
        "the conversation minus its last assistant turn, which is kept as the reference. Writes one JSON line "
        "per row: prompt, reference, prediction, finish reason and token counts. With a vision-language model, "
        "rows may hold images and videos (paths relative to the data file's folder, or --media-root).",
        epilog="example:\n  mmtune infer runs/demo --data examples/data/persona.jsonl --out preds.jsonl --metrics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument("--data", required=True, metavar="FILE", help="data file (.jsonl or .json)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write predictions (.jsonl)")
    p.add_argument("--format", default=None, help="force the data format (default: detected)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default: 8)")
    p.add_argument(
        "--metrics",
        action="store_true",
        help="print exact match, BLEU and ROUGE-L against the references and write them "
        "to OUT.metrics.json (default: off)",
    )
    p.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="predict the good rows of a file with errors, "
        "listing the skipped ones (default: refuse the file)",
    )
    add_generation_arguments(p, max_new_tokens=256, temperature=0.0)
    p.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 on a GPU, else fp32)")
    p.add_argument(
        "--media-root",
        default=None,
        metavar="DIR",
        help="folder that relative image/video paths in the data are resolved against "
        "(default: the data file's folder)",
    )
    add_remote_media_argument(p)
    add_media_size_arguments(p)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from mmtune.commands.preflight import (
        check_data_files,
        check_input_folder,
        check_model_arg,
        check_output_file,
    )

    check_data_files([args.data], "--data")
    if args.media_root:
        check_input_folder(args.media_root, "--media-root")
    check_output_file(args.out, "--out", inputs=(args.data,))
    check_model_arg(args.model)
    from mmtune.infer.batch import metrics_of, predict, print_metrics, read_rows, write_jsonl
    from mmtune.infer.engine import Engine
    from mmtune.infer.media import MediaPolicy
    from mmtune.infer.options import make_options

    gen = generation_options(args)
    make_options(**gen)
    sizes = media_sizes(args)
    rows = read_rows(
        args.data,
        fmt=args.format,
        skip_bad_rows=args.skip_bad_rows,
        media_root=args.media_root,
        warn=lambda m: print(m, file=sys.stderr),
    )
    engine = Engine(args.model, dtype=args.dtype, media=MediaPolicy(allow_remote=args.allow_remote_media),
                    sizes=sizes)
    records = predict(engine, rows, batch_size=args.batch_size, progress=sys.stderr.isatty(), **gen)
    write_jsonl(records, args.out)
    print(f"wrote {len(records)} predictions to {args.out}")
    if args.metrics:
        m = metrics_of(records)
        print_metrics(m)
        with open(f"{args.out}.metrics.json", "w", encoding="utf-8") as f:
            json.dump(m, f, indent=2)
    return 0
