"""`mmtune data stats`: what is in a data file — rows, turns, roles, media, characters and,
with a tokenizer, token counts, percentiles, a histogram and how many rows are too long."""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable

from mmtune.data.reader import FileReader, ReadOptions
from mmtune.data.schema import Sample

PERCENTILES = (50, 90, 95, 99)


def collect_stats(path: str, options: ReadOptions | None = None,
                  count_tokens: Callable[[Sample], int] | None = None,
                  max_length: int | None = None) -> dict:
    opts = options or ReadOptions(check_media=False)
    reader = FileReader(path, opts)
    roles: Counter[str] = Counter()
    chars, turns, tokens = array("q"), array("q"), array("q")
    images = videos = bad_rows = tool_calls = 0
    labels: Counter[bool] = Counter()
    for r in reader:
        if r.index < 0:
            continue
        if not r.ok:
            bad_rows += 1
            if r.sample is None:
                continue
        s = r.sample
        msgs = s.all_messages()
        roles.update(m.role for m in msgs)
        turns.append(sum(1 for m in msgs if m.role == "assistant"))
        chars.append(sum(len(m.text) for m in msgs) + sum(len(p.text) for p in s.document or []))
        if s.kind == "unpaired-preference":
            labels[s.label] += 1
        images += len(s.images)
        videos += len(s.videos)
        tool_calls += sum(len(m.tool_calls) for m in msgs)
        if count_tokens is not None:
            tokens.append(count_tokens(s))
    out: dict = {
        "path": path,
        "format": reader.format,
        "kind": reader.kind,
        "rows": reader.rows,
        "rows_with_errors": bad_rows,
        "messages_by_role": dict(roles),
        "assistant_turns": summarize(turns),
        "images": images,
        "videos": videos,
        "tool_calls": tool_calls,
        "characters": summarize(chars),
    }
    if reader.kind == "unpaired-preference":
        out["labels"] = {"desirable": labels[True], "undesirable": labels[False]}
    if count_tokens is not None:
        out["tokens"] = summarize(tokens)
        out["tokens"]["histogram"] = histogram(tokens)
        if max_length is not None:
            over = [n for n in tokens if n > max_length]
            out["max_length"] = max_length
            out["rows_over_max_length"] = len(over)
            out["tokens_over_max_length"] = sum(n - max_length for n in over)
        out["_token_counts"] = tokens  # for the plot; dropped from JSON output
    return out


def summarize(values) -> dict:
    if not values:
        return {"total": 0, "mean": 0, "min": 0, "max": 0, **{f"p{p}": 0 for p in PERCENTILES}}
    s = sorted(values)
    n = len(s)
    return {
        "total": sum(s),
        "mean": round(sum(s) / n, 2),
        "min": s[0],
        "max": s[-1],
        **{f"p{p}": s[min(n - 1, int(round(p / 100 * (n - 1))))] for p in PERCENTILES},
    }


def histogram(values, bins: int = 10) -> list[dict]:
    """Equal-width bins over [min, max]: [{"lo", "hi", "count"}]."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, (v - lo) // width)] += 1
    return [{"lo": lo + i * width, "hi": lo + (i + 1) * width - 1, "count": c} for i, c in enumerate(counts) if c or i < bins]


def token_counter(tokenizer) -> Callable[[Sample], int]:
    """Tokens a sample takes: rendered with the tokenizer's chat template when it has one. A
    preference pair counts its longer side (prompt + chosen or prompt + rejected); text, its document."""
    has_template = bool(getattr(tokenizer, "chat_template", None))

    def count(s: Sample) -> int:
        if s.document is not None:
            return len(tokenizer.encode("".join(p.text for p in s.document), add_special_tokens=False))
        if s.kind == "preference":
            return max(one(s.messages + (s.chosen or [])), one(s.messages + (s.rejected or [])))
        return one(s.messages + (s.completion or []))

    def one(messages) -> int:
        if has_template:
            msgs = [{"role": m.role, "content": m.text} for m in messages]
            try:
                ids = tokenizer.apply_chat_template(msgs, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                return len(ids)
            except Exception:  # a template that rejects this shape (e.g. no system role): plain count
                pass
        return sum(len(tokenizer.encode(m.text, add_special_tokens=False)) for m in messages)

    return count


def plot_tokens(tokens, path: str, max_length: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(list(tokens), bins=40, color="#4C72B0")
    if max_length:
        ax.axvline(max_length, color="#C44E52", linestyle="--", label=f"max length {max_length}")
        ax.legend()
    ax.set_xlabel("tokens per row")
    ax.set_ylabel("rows")
    ax.set_title("Token length distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
