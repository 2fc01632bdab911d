"""A 100k-row file is checked in constant memory: peak RSS barely moves from 10k to 100k rows."""

import json
import subprocess
import sys

PROBE = """
import resource, sys
from mmtune.data.check import check_file
from mmtune.data.reader import ReadOptions
rep = check_file(sys.argv[1], ReadOptions(rules=sys.argv[2]), on_finding=lambda f: None)
assert rep.rows == int(sys.argv[3]), rep.rows
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write(path, n):
    with open(path, "w") as f:
        for i in range(n):
            bad = i % 1000 == 7  # some faulty rows too, so the full path runs as well
            msgs = [{"role": "user", "content": f"question number {i} " + "x" * (i % 200)},
                    {"role": "bot" if bad else "assistant", "content": f"answer {i}"}]
            f.write(json.dumps({"messages": msgs}) + "\n")


def peak_kb(path, n, rules="default"):
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), rules, str(n)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_check_runs_in_constant_memory(tmp_path):
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    write(small, 10_000)
    write(big, 100_000)
    size_mb = big.stat().st_size / 1e6
    grow_mb = (peak_kb(big, 100_000) - peak_kb(small, 10_000)) / 1024
    # the file is ~20 MB; a reader that kept rows would grow by far more than the 12-byte-a-row
    # duplicate index (~3 MB at 100k rows)
    assert size_mb > 15
    assert grow_mb < 8, f"peak RSS grew by {grow_mb:.1f} MB from 10k to 100k rows"
