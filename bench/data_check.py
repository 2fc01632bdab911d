"""Benchmark: rows/s of `mmtune data check` on a generated chat .jsonl (default 200k rows).

    python bench/data_check.py [--rows 200000] [--rules default|strict]

Generates the file once (under /tmp), then times the check in-process (the same code path as
the CLI, output discarded) and as the real CLI (`mmtune data check FILE`), and prints both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

WORDS = ("parcel locker code order address refund delivery courier bakery croissant weather "
         "今天 天气 地址 订单 修改 请问 谢谢 快递").split()


def make_file(path: str, rows: int, seed: int = 0) -> None:
    rnd = random.Random(seed)

    def text(lo, hi):
        return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(lo, hi)))

    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            msgs = [{"role": "system", "content": "You are a helpful support agent."}] if i % 3 == 0 else []
            for _ in range(1 + (i % 4 == 0)):
                msgs += [{"role": "user", "content": f"{text(4, 30)} #{i}"}, {"role": "assistant", "content": text(5, 60)}]
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rules", default="default", choices=("default", "strict"))
    args = ap.parse_args()
    path = f"/tmp/mmtune_bench_chat_{args.rows}.jsonl"
    if not os.path.exists(path):
        make_file(path, args.rows)
    size_mb = os.path.getsize(path) / 1e6

    from mmtune.data.check import check_file
    from mmtune.data.reader import ReadOptions

    t0 = time.perf_counter()
    rep = check_file(path, ReadOptions(rules=args.rules), on_finding=lambda f: None)
    dt = time.perf_counter() - t0
    assert rep.rows == args.rows, rep.rows
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    exe = os.path.join(os.path.dirname(sys.executable), "mmtune")
    t1 = time.perf_counter()
    proc = subprocess.run([exe, "data", "check", path, "--rules", args.rules], capture_output=True, text=True)
    dt_cli = time.perf_counter() - t1
    print(f"file: {path} ({args.rows} rows, {size_mb:.0f} MB), rules={args.rules}")
    print(f"{'path':<12} {'seconds':>8} {'rows/s':>10}")
    print(f"{'in-process':<12} {dt:>8.2f} {args.rows / dt:>10,.0f}   peak RSS {rss:.0f} MB")
    print(f"{'CLI':<12} {dt_cli:>8.2f} {args.rows / dt_cli:>10,.0f}   exit {proc.returncode}; {proc.stdout.strip().splitlines()[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
