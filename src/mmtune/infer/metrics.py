"""Reference-based text metrics for `mmtune infer --metrics`: exact match, BLEU, ROUGE-L.

Small and dependency-free (no downloads). Tokenization: runs of letters/digits are words,
every other non-space character (punctuation, each CJK character) is a token of its own,
so Chinese and Japanese answers are scored per character as is usual for them.
- exact match: after trimming and collapsing whitespace, in percent;
- BLEU: corpus BLEU-4 (Papineni et al. 2002): clipped n-gram precisions summed over the
  corpus, geometric mean, brevity penalty; 0 when some n-gram order has no match
  (unsmoothed, as sacrebleu's default), in percent;
- ROUGE-L: LCS F1 per pair (Lin 2004), averaged, in percent.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_TOKEN = re.compile(r"[^\W\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]+|\S")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def normalize(text: str) -> str:
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not references:
        return 0.0
    return (
        100.0 * sum(normalize(p) == normalize(r) for p, r in zip(predictions, references)) / len(references)
    )


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(predictions: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for p, r in zip(predictions, references):
        hyp, ref = tokenize(p), tokenize(r)
        hyp_len, ref_len = hyp_len + len(hyp), ref_len + len(ref)
        for n in range(1, max_n + 1):
            h, g = _ngrams(hyp, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(c, g[k]) for k, c in h.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * brevity * math.exp(log_precision)


def lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0  # row[j-1] of the previous line
        for j, y in enumerate(b, 1):
            cur = row[j]
            row[j] = prev + 1 if x == y else max(row[j], row[j - 1])
            prev = cur
    return row[-1]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    scores = []
    for p, r in zip(predictions, references):
        hyp, ref = tokenize(p), tokenize(r)
        lcs = lcs_length(hyp, ref)
        scores.append(0.0 if lcs == 0 else 2 * lcs / (len(hyp) + len(ref)))
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """All three metrics (percent) and the number of pairs scored."""
    return {
        "exact_match": exact_match(predictions, references),
        "bleu": bleu(predictions, references),
        "rouge_l": rouge_l(predictions, references),
        "n": len(references),
    }
