"""`mmtune data check|convert|stats|split`: read, check, convert and inspect training data.

Import-light: nothing here imports torch; a tokenizer is loaded only for `stats --tokenizer`.
"""

from __future__ import annotations

import argparse
import json
import sys

FORMAT_NAMES = ("openai", "swift", "llava", "alpaca", "trl", "text")  # == data.formats.FORMATS (a test holds it)

CHECK_EPILOG = """\
exit status: 0 no errors, 2 errors, 1 only warnings with --fail-on-warnings.
rules: `default` checks every format (FORMATS.md); `strict` enforces exactly the rule set of
hosted fine-tuning services for chat .jsonl files (messages, roles, order, pairs).
each file's kind is reported: sft, preference (chosen + rejected), unpaired-preference (KTO
labels) or text (continued pre-training); `mmtune train` takes sft files.

examples:
  mmtune data check examples/data/chat.jsonl
  mmtune data check train.jsonl --rules strict --json > report.json
  mmtune data check llava.json --media-root /data/images
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="check, convert, inspect and split training data",
        description="Check, convert, inspect and split training data files.",
    )
    p.set_defaults(_parser=p)
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    fmt_help = f"force the format ({', '.join(FORMAT_NAMES)}); default: detected from the rows"
    root_help = "folder that relative media paths are resolved against (default: the data file's folder); media must stay inside it"

    c = dsub.add_parser(
        "check",
        help="list every problem in data files",
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check data files: every error and warning, with file, line, field and rule.",
    )
    c.add_argument("files", nargs="+", metavar="FILE",
                   help=".jsonl, .json or .txt data files, or picture data (a folder of images with .txt captions)")
    c.add_argument("--format", choices=FORMAT_NAMES, help=fmt_help)
    c.add_argument(
        "--rules", choices=("default", "strict"), default="default", help="rule set (default: %(default)s)"
    )
    c.add_argument("--media-root", help=root_help)
    c.add_argument(
        "--no-media",
        action="store_true",
        help="do not open media files (faster; existence and decoding unchecked)",
    )
    c.add_argument("--json", action="store_true", help="print one JSON object (the machine-readable report)")
    c.add_argument(
        "--fail-on-warnings", action="store_true", help="exit 1 when there are warnings but no errors"
    )
    c.add_argument(
        "--tokenizer", help="with --max-length: a model name or folder whose tokenizer counts tokens"
    )
    c.add_argument(
        "--max-length", type=int, help="warn about rows longer than this many tokens (needs --tokenizer)"
    )
    c.set_defaults(func=run_check)

    v = dsub.add_parser(
        "convert",
        help="convert a data file to another format",
        description="Convert a data file to another format, through mmtune's canonical sample. "
        "A conversion that would lose information is refused unless --lossy.",
    )
    v.add_argument("src", metavar="IN")
    v.add_argument("dst", metavar="OUT", help="output file: .jsonl (one row a line), .json (one array) or, "
                   "for --to text, .txt (one document a line)")
    v.add_argument("--to", required=True, choices=FORMAT_NAMES, help="target format")
    v.add_argument("--format", choices=FORMAT_NAMES, help=fmt_help)
    v.add_argument(
        "--media-root", help="folder the input's relative media paths are relative to (default: its folder)"
    )
    v.add_argument(
        "--lossy", action="store_true", help="convert even if something the target cannot hold is dropped"
    )
    v.set_defaults(func=run_convert)

    s = dsub.add_parser(
        "stats",
        help="rows, turns, media, characters and token counts",
        description="Statistics of a data file; with --tokenizer also token counts.",
    )
    s.add_argument("file", metavar="FILE")
    s.add_argument("--format", choices=FORMAT_NAMES, help=fmt_help)
    s.add_argument(
        "--tokenizer", help="model name, folder or .gguf whose tokenizer (and chat template) counts tokens"
    )
    s.add_argument("--max-length", type=int, help="count rows (and tokens) over this length")
    s.add_argument("--plot", metavar="PNG", help="save a histogram of tokens per row (needs --tokenizer)")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    s.set_defaults(func=run_stats)

    t = dsub.add_parser(
        "split",
        help="deterministic train/validation split",
        description="Split a data file into <name>.train and <name>.val files; rows are copied unchanged.",
    )
    t.add_argument("file", metavar="FILE")
    t.add_argument(
        "--val-ratio", type=float, default=0.1, help="share of rows for validation (default: %(default)s)"
    )
    t.add_argument(
        "--seed", type=int, default=42, help="random seed: same seed, same split (default: %(default)s)"
    )
    t.add_argument("--out-dir", help="where to write the two files (default: beside FILE)")
    t.add_argument("--force", action="store_true", help="overwrite existing output files")
    t.set_defaults(func=run_split)


# ---------------------------------------------------------------------------------------- check
def run_check(args) -> int:
    from mmtune.data.check import FileReport, exit_status
    from mmtune.data.reader import ReadOptions

    count = _token_counter(args.tokenizer) if args.tokenizer else None
    if args.max_length and not count:
        print(
            "note: --max-length needs --tokenizer to count tokens; lengths are not checked", file=sys.stderr
        )
    opts = ReadOptions(
        fmt=args.format,
        rules=args.rules,
        media_root=args.media_root,
        enforce_root=bool(args.media_root),
        check_media=not args.no_media,
        max_length=args.max_length,
        count_tokens=count,
    )
    reports = []
    if args.json:
        _check_json(args.files, opts, reports)
    else:
        out = _Printer()
        for path in args.files:
            report = FileReport(path)
            out.file_start(path)
            for f in _findings(path, opts, report):
                out.finding(path, f)
            out.file_end(report)
            reports.append(report)
        out.total(reports)
    errors = sum(r.errors for r in reports)
    warnings = sum(r.warnings for r in reports)
    return exit_status(errors, warnings, args.fail_on_warnings)


def _check_json(paths, opts, reports) -> None:
    """Streams the one JSON object: findings are written as they are found (constant memory)."""
    from mmtune.data.check import FileReport

    w = sys.stdout.write
    w('{"files": [')
    for i, path in enumerate(paths):
        report = FileReport(path)
        w(", " if i else "")
        w(f'{{"path": {json.dumps(path)}, "findings": [')
        for k, f in enumerate(_findings(path, opts, report)):
            w((", " if k else "") + json.dumps(f.to_dict(), ensure_ascii=False))
        w(f'], "format": {json.dumps(report.format)}, "kind": {json.dumps(report.kind)}, "rows": {report.rows}}}')
        reports.append(report)
    errors = sum(r.errors for r in reports)
    warnings = sum(r.warnings for r in reports)
    w(f'], "errors": {errors}, "warnings": {warnings}}}\n')


def _findings(path, opts, report):
    """A picture folder (or .jsonl of {"image", "caption"}) is checked by data/pictures.py, text data by the reader."""
    from mmtune.data.pictures import is_picture_data, iter_picture_findings

    if is_picture_data(path):
        return iter_picture_findings(path, opts.rules, opts.check_media, report)
    from mmtune.data.check import iter_findings

    return iter_findings(path, opts, report)


class _Printer:
    """Human output: one line per finding, grouped by file, coloured when on a terminal."""

    def __init__(self):
        tty = sys.stdout.isatty()
        self.red, self.yellow, self.dim, self.bold, self.reset = (
            ("\033[31m", "\033[33m", "\033[2m", "\033[1m", "\033[0m") if tty else ("",) * 5
        )

    def file_start(self, path: str) -> None:
        pass

    def finding(self, path: str, f) -> None:
        colour = self.red if f.severity == "error" else self.yellow
        field = f" {f.field}" if f.field else ""
        print(
            f"{path}:{f.line}:{field} {colour}{f.severity}{self.reset} "
            f"{self.dim}[{f.rule}]{self.reset} {f.message}"
        )

    def file_end(self, r) -> None:
        state = f"{self.red}✗" if r.errors else (f"{self.yellow}!" if r.warnings else "✓")
        print(
            f"{state}{self.reset} {self.bold}{r.path}{self.reset}: {r.format} format, {r.kind} data, {r.rows} rows, "
            f"{r.errors} error(s), {r.warnings} warning(s)"
        )

    def total(self, reports) -> None:
        if len(reports) > 1:
            e, w = sum(r.errors for r in reports), sum(r.warnings for r in reports)
            print(f"{len(reports)} files: {e} error(s), {w} warning(s)")


def _token_counter(name: str):
    from mmtune.data.stats import token_counter
    from mmtune.models.available import check_model
    from mmtune.models.loader import load_tokenizer

    check_model(name)  # one line naming the fix, not a minute of hub retries
    return token_counter(load_tokenizer(name))


# -------------------------------------------------------------------------------------- convert
def run_convert(args) -> int:
    from mmtune.data.convert import convert_file

    rep = convert_file(
        args.src, args.dst, args.to, fmt=args.format, media_root=args.media_root, lossy=args.lossy
    )
    print(f"converted {rep.rows} rows: {args.src} ({rep.source_format}) → {args.dst} ({args.to})")
    for what, n in rep.losses.items():
        print(f"  dropped in {n} row(s): {what}")
    return 0


# ---------------------------------------------------------------------------------------- stats
def run_stats(args) -> int:
    from mmtune.data.pictures import is_picture_data
    from mmtune.data.reader import ReadOptions
    from mmtune.data.stats import collect_stats, plot_tokens

    if is_picture_data(args.file):
        return _picture_stats(args)
    if args.plot and not args.tokenizer:
        print("error: --plot needs --tokenizer (it plots tokens per row)", file=sys.stderr)
        return 2
    count = _token_counter(args.tokenizer) if args.tokenizer else None
    st = collect_stats(args.file, ReadOptions(fmt=args.format, check_media=False), count, args.max_length)
    counts = st.pop("_token_counts", None)
    if args.plot and counts is not None:
        plot_tokens(counts, args.plot, args.max_length)
    if args.json:
        print(json.dumps(st, ensure_ascii=False, indent=2))
    else:
        _print_stats(st)
        if args.plot:
            print(f"plot saved to {args.plot}")
    return 0


def _print_stats(st: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"{st['path']} ({st['format']})", show_header=False)
    t.add_row(
        "rows",
        f"{st['rows']} {st['kind']}" + (f"  ({st['rows_with_errors']} with errors)" if st["rows_with_errors"] else ""),
    )
    t.add_row("messages by role", ", ".join(f"{k}: {v}" for k, v in st["messages_by_role"].items()))
    a = st["assistant_turns"]
    t.add_row("assistant turns", f"{a['total']} (mean {a['mean']} per row, max {a['max']})")
    t.add_row("images / videos / tool calls", f"{st['images']} / {st['videos']} / {st['tool_calls']}")
    c = st["characters"]
    t.add_row(
        "characters",
        f"{c['total']} (per row: mean {c['mean']}, p50 {c['p50']}, p90 {c['p90']}, max {c['max']})",
    )
    if "tokens" in st:
        k = st["tokens"]
        t.add_row(
            "tokens",
            f"{k['total']} (per row: mean {k['mean']}, p50 {k['p50']}, p90 {k['p90']}, "
            f"p99 {k['p99']}, max {k['max']})",
        )
    if "rows_over_max_length" in st:
        t.add_row(
            f"over max length {st['max_length']}",
            f"{st['rows_over_max_length']} rows, {st['tokens_over_max_length']} tokens would be cut",
        )
    con.print(t)
    if "tokens" in st and st["tokens"]["histogram"]:
        hist = st["tokens"]["histogram"]
        top = max(h["count"] for h in hist) or 1
        con.print("tokens per row:")
        for h in hist:
            bar = "█" * max(0, round(30 * h["count"] / top))
            con.print(f"  {h['lo']:>6}–{h['hi']:<6} {bar} {h['count']}")


def _picture_stats(args) -> int:
    from mmtune.data.pictures import picture_stats

    st = picture_stats(args.file)
    if args.json:
        print(json.dumps(st, ensure_ascii=False, indent=2))
        return 0
    w, h, c = st["width"], st["height"], st["captions"]
    print(f"{st['path']} ({st['format']}): {st['pictures']} pictures, {st['total_mb']} MB, "
          f"{st['errors']} error(s), {st['warnings']} warning(s) (`mmtune data check` lists them)")
    print(f"  width  min {w['min']}  median {w['median']}  max {w['max']}")
    print(f"  height min {h['min']}  median {h['median']}  max {h['max']}")
    print("  aspect ratios: " + ", ".join(f"{k}: {v}" for k, v in st["aspect_ratios"].items()))
    print(f"  captions: words min {c['words']['min']} median {c['words']['median']} max {c['words']['max']}; "
          f"{c['missing']} missing, {c['empty']} empty")
    return 0


# ---------------------------------------------------------------------------------------- split
def run_split(args) -> int:
    from mmtune.data.split import split_file

    tr, va, ntr, nva = split_file(args.file, args.val_ratio, args.seed, args.out_dir, args.force)
    print(f"train: {tr} ({ntr} rows)\nval:   {va} ({nva} rows)")
    return 0
