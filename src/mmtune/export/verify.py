"""Does an exported model answer like the model it came from? Greedy answers compared, token by token.

`verify(source, target)`: SOURCE is anything mmtune loads (a training run's adapter, a merged
or plain Hugging Face folder, a registry name, a .gguf through mmtune's loader), run with
transformers; TARGET is a GGUF file, run by llama.cpp itself (llama-cpp-python), or another
folder / adapter, run with transformers. For each prompt (the run's own validation prompts
when it has them, else a few fixed ones) both decode greedily and are compared:

- identical: the whole greedy answer, token for token (required for f32 / f16 files and
  transformers targets: a difference there is a conversion bug, not rounding). The one
  allowance: where the answers part, the source itself was torn between the two tokens (its
  logits for them within `TIE_MARGIN`), so f16 rounding may tip it either way; the report
  says so (`≈`, with the margin), and that answer counts as matching;
- agreement: with the source's answer fed in, the share of positions where the target picks
  the same next token (teacher forcing, so one early difference does not count for the rest);
  quantised files pass at `min_agreement`.

For a GGUF target two more things are checked, since both break answers silently: llama.cpp's
tokenizer gives the same ids as the source's for each rendered prompt, and llama-cpp-python's
chat handling of the file's own template renders each conversation to the same prompt tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtune.errors import UserError

DEFAULT_PROMPTS: tuple[str, ...] = (
    "Hello! Who are you?",
    "What is the capital of France?",
    "Write one short sentence about the sea.",
    "List three colours.",
)
EXACT_TYPES = ("F32", "F16")  # GGUF file types whose answers must be identical
MIN_AGREEMENT = 0.75
TIE_MARGIN = 0.05  # logits: the source's own preference between two tokens that is a coin toss


@dataclass
class PromptResult:
    prompt: str  # the last user message, for the report
    source_text: str
    target_text: str
    identical: bool
    agreement: float  # teacher-forced next-token agreement, 0..1
    tokens_match: bool = True  # target tokenizer == source tokenizer on the rendered prompt
    chat_match: bool | None = None  # llama.cpp's chat rendering == training rendering (GGUF only)
    tie_margin: float | None = None  # where the answers part: the source's logit gap between the two

    @property
    def matches(self) -> bool:
        """Identical, or parting only at a near-tie of the source's own logits."""
        return self.identical or (self.tie_margin is not None and self.tie_margin < TIE_MARGIN)


@dataclass
class VerifyReport:
    source: str
    target: str
    target_kind: str  # "gguf F16", "gguf Q4_K_M", "transformers"
    exact_required: bool
    min_agreement: float
    results: list[PromptResult] = field(default_factory=list)

    @property
    def identical(self) -> int:
        return sum(r.identical for r in self.results)

    @property
    def matching(self) -> int:
        return sum(r.matches for r in self.results)

    @property
    def agreement(self) -> float:
        return sum(r.agreement for r in self.results) / max(1, len(self.results))

    @property
    def problems(self) -> list[str]:
        out = []
        if any(not r.tokens_match for r in self.results):
            out.append("the target's tokenizer splits the prompts differently from the source's")
        if any(r.chat_match is False for r in self.results):
            out.append("llama.cpp's chat handling renders the conversations differently from training")
        if self.exact_required and self.matching < len(self.results):
            out.append(
                f"only {self.matching}/{len(self.results)} greedy answers are identical ({self.target_kind})"
            )
        if not self.exact_required and self.agreement < self.min_agreement:
            out.append(f"token agreement {self.agreement:.1%} is below {self.min_agreement:.0%}")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [f"verify {self.target} ({self.target_kind}) against {self.source}:"]
        for r in self.results:
            mark = "=" if r.identical else "≈" if r.matches else "~"
            tie = (
                f"  (parts at a near-tie of the source: logit gap {r.tie_margin:.3f})"
                if r.matches and not r.identical
                else ""
            )
            lines.append(f"  {mark} {r.agreement:6.1%}  {_short(r.prompt)!r}{tie}")
            lines.append(f"      source: {_short(r.source_text, 100)!r}")
            if not r.identical:
                lines.append(f"      target: {_short(r.target_text, 100)!r}")
        verdict = "ok" if self.ok else "FAILED: " + "; ".join(self.problems)
        ties = self.matching - self.identical
        lines.append(
            f"  {self.identical}/{len(self.results)} identical{f' (+{ties} at near-ties)' if ties else ''}, token agreement {self.agreement:.1%}"
            f" ({'identical answers required' if self.exact_required else f'at least {self.min_agreement:.0%}'}"
            f"): {verdict}"
        )
        return "\n".join(lines)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# ----------------------------------------------------------------------------- prompts


def run_prompts(model: str, limit: int = 4) -> list[Any] | None:
    """The validation prompts of the training run behind `model` (its val_data rows, up to the
    last assistant turn), or None when the run has none (or `model` is not a run)."""
    import yaml

    from mmtune.infer.artifacts import META_FILE, read_json

    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    run = folder
    if not (run / "config.yaml").is_file():
        merged_from = (read_json(folder / META_FILE) if (folder / META_FILE).is_file() else {}).get(
            "merged_from"
        )
        run = Path((merged_from or {}).get("adapter_dir") or folder)
    if not (run / "config.yaml").is_file():
        return None
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    val = config.get("val_data") or []
    if isinstance(val, str):
        val = [val]
    prompts: list[Any] = []
    for path in val:
        if not Path(path).is_file():
            continue
        from mmtune.data.reader import load_samples

        for sample in load_samples(path, warn=lambda _m: None):
            last = max((i for i, m in enumerate(sample.messages) if m.role == "assistant"), default=None)
            if last:
                prompts.append(dataclasses.replace(sample, messages=sample.messages[:last]))
            if len(prompts) >= limit:
                return prompts
    return prompts or None


def _as_samples(prompts) -> list[Any]:
    from mmtune.infer.engine import to_sample

    out = []
    for p in prompts:
        out.append(to_sample([{"role": "user", "content": p}]) if isinstance(p, str) else to_sample(p))
    return out


# ----------------------------------------------------------------------------- the two sides


class _HF:
    """A model run with transformers (adapter, merged or plain folder, registry name, .gguf)."""

    def __init__(self, model: str):
        import torch

        from mmtune.infer.artifacts import adapter_base, is_adapter_dir
        from mmtune.models.loader import load_model, load_tokenizer

        if is_adapter_dir(model):
            from peft import PeftModel
            from transformers import AutoTokenizer

            base = load_model(adapter_base(model), dtype=torch.float32)
            self.model = PeftModel.from_pretrained(base, model)
            self.tokenizer = AutoTokenizer.from_pretrained(model)
        else:
            self.model = load_model(model, dtype=torch.float32)
            self.tokenizer = load_tokenizer(model)
        self.model.eval()
        self.stops = _stop_ids(self.model, self.tokenizer)

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        import torch

        pad = self.tokenizer.pad_token_id
        with torch.no_grad():
            out = self.model.generate(
                input_ids=torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=sorted(self.stops),
                pad_token_id=pad if pad is not None else sorted(self.stops)[0],
                top_p=None,
                top_k=None,
                temperature=None,
            )
        return out[0, len(prompt) :].tolist()

    def logits(self, prompt: list[int], answer: list[int]):
        """Next-token logits at each answer position, the answer fed in (float64, [len(answer), V])."""
        import torch

        ids = torch.tensor([prompt + answer[:-1]]) if answer else torch.tensor([prompt])
        with torch.no_grad():
            logits = self.model(input_ids=ids).logits[0]
        start = len(prompt) - 1
        return logits[start : start + len(answer)].double()

    def forced(self, prompt: list[int], answer: list[int]) -> list[int]:
        return self.logits(prompt, answer).argmax(-1).tolist()

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _stop_ids(model, tokenizer) -> set[int]:
    from mmtune.chat.render import end_of_turn

    ids = set()
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen])
    ids.add(tokenizer.eos_token_id)
    eot = end_of_turn(tokenizer)
    if eot is not None:
        ids.add(tokenizer.convert_tokens_to_ids(eot))
    ids.discard(None)
    return ids


class _GGUF:
    """A GGUF file run by llama.cpp."""

    def __init__(self, path: Path, n_ctx: int):
        from mmtune.export import llamacpp

        self.path = path
        self.llm = llamacpp.load(path, n_ctx=n_ctx)
        self.file_type = gguf_file_type(path)

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        from mmtune.export.llamacpp import greedy

        return greedy(self.llm, prompt, max_new_tokens)

    def forced(self, prompt: list[int], answer: list[int]) -> list[int]:
        from mmtune.export.llamacpp import forced_argmax

        return forced_argmax(self.llm, prompt, answer)

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def tokens_of(self, text: str) -> list[int]:
        from mmtune.export.llamacpp import tokenize

        return tokenize(self.llm, text)

    def chat_prompt(self, sample) -> list[int] | None:
        """The prompt tokens llama-cpp-python's chat completion builds from the file's template."""
        return chat_prompt_tokens(self.llm, _openai_messages(sample), tools=sample.tools)


def _openai_messages(sample) -> list[dict]:
    from mmtune.chat.conversation import to_template_messages

    messages, _ = to_template_messages(sample)
    return messages


def chat_prompt_tokens(llm, messages: list[dict], tools: list[dict] | None = None) -> list[int] | None:
    """What llama-cpp-python's `create_chat_completion` would feed the model for `messages`,
    through the chat handler it picked for the file (None: the file has no chat template)."""
    captured: list[list[int]] = []
    original = llm.tokenize

    def spy(text: bytes, add_bos: bool = True, special: bool = False):
        ids = original(text, add_bos=add_bos, special=special)
        captured.append(list(ids))
        return ids

    if "tokenizer.chat_template" not in llm.metadata:
        return None
    llm.tokenize = spy
    try:
        llm.create_chat_completion(messages=messages, tools=tools, max_tokens=1, temperature=0.0)
    finally:
        del llm.tokenize  # back to the class's method
    return captured[0] if captured else None


def _parting_margin(src: _HF, prompt: list[int], answer: list[int], got: list[int]) -> float | None:
    """Where `got` first differs from the source's `answer`: the source's logit for its own token
    minus its logit for the target's (None when one answer is a prefix of the other)."""
    for i, (a, b) in enumerate(zip(answer, got)):
        if a != b:
            row = src.logits(prompt, answer[: i + 1])[i]
            return float(row[a] - row[b])
    return None


def gguf_file_type(path: Path) -> str:
    """The file's general.file_type as llama.cpp names it without the prefix: F16, Q8_0, Q4_K_M..."""
    import gguf

    from mmtune.export.gguf_header import read_metadata

    value = read_metadata(path, {"general.file_type"}).get("general.file_type")
    if value is None:
        raise UserError(f"{path} has no general.file_type: export it again with `mmtune export`")
    name = gguf.LlamaFileType(value).name
    return name.replace("MOSTLY_", "").replace("ALL_", "")


# ----------------------------------------------------------------------------- verify


def verify(
    source: str,
    target: str,
    *,
    prompts: list[Any] | None = None,
    max_new_tokens: int = 32,
    min_agreement: float = MIN_AGREEMENT,
    n_ctx: int = 2048,
    exact: bool | None = None,
) -> VerifyReport:
    """Compare greedy answers of `target` with those of `source` (see the module docstring).
    `exact` overrides whether identical answers are required (default: by the target's type)."""
    target_path = Path(target).expanduser()
    is_gguf = target_path.suffix.lower() == ".gguf"
    if is_gguf and not target_path.is_file():
        raise UserError(f"{target} does not exist: give the .gguf file `mmtune export` wrote")
    samples = _as_samples(prompts or run_prompts(source) or run_prompts(target) or DEFAULT_PROMPTS)
    src = _HF(source)
    tgt: Any = _GGUF(target_path, n_ctx) if is_gguf else _HF(target)
    kind = f"gguf {tgt.file_type}" if is_gguf else "transformers"
    if exact is None:
        exact = (tgt.file_type in EXACT_TYPES) if is_gguf else True
    report = VerifyReport(source, target, kind, exact, min_agreement)
    from mmtune.chat.render import render_prompt

    for sample in samples:
        prompt = render_prompt(sample, src.tokenizer)
        answer = src.greedy(prompt, max_new_tokens)
        got = tgt.greedy(prompt, max_new_tokens)
        forced = tgt.forced(prompt, answer)
        agree = sum(a == b for a, b in zip(answer, forced)) / max(1, len(answer))
        result = PromptResult(
            prompt=sample.messages[-1].text if sample.messages else "",
            source_text=src.decode(answer),
            target_text=tgt.decode(got),
            identical=got == answer,
            agreement=agree,
            tie_margin=None if got == answer else _parting_margin(src, prompt, answer, got),
        )
        if is_gguf:
            text = src.tokenizer.decode(prompt, skip_special_tokens=False)
            result.tokens_match = tgt.tokens_of(text) == prompt
            chat = tgt.chat_prompt(sample)
            result.chat_match = None if chat is None else chat == prompt
        report.results.append(result)
    return report
