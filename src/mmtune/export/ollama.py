"""An Ollama `Modelfile` beside an exported GGUF: `ollama create NAME -f Modelfile` takes it.

Ollama renders prompts with Go templates, not the Jinja chat template inside the GGUF, so the
Modelfile carries a TEMPLATE in Go-template syntax that writes the same text as the model's
chat template for its family (ChatML: SmolLM2, Qwen2/2.5, Qwen3; Llama 3; Gemma 2/3; Phi-3;
Mistral), the default system prompt the template inserts when there is none (SmolLM2 and Qwen
have one) as SYSTEM, the end-of-turn tokens as `stop` parameters, and the context length.
The family is recognised from the template's own markers; a template of another shape is an
error naming the alternative (Ollama also reads the GGUF's template for families it knows).
Tool calling is not templated here: use llama.cpp's server or mmtune serve for tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mmtune.errors import UserError


@dataclass(frozen=True)
class OllamaFamily:
    name: str
    marker: str  # a string only this family's Jinja template contains
    template: str  # Go template (Ollama's .System / .Messages)
    stops: tuple[str, ...]


_CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

_LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"""

_GEMMA = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if and (eq $i 0) $.System }}{{ $.System }}

{{ end }}{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- end }}"""

_PHI3 = """{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ if and $last (ne .Role "assistant") }}<|assistant|>
{{ end }}
{{- end }}"""

_MISTRAL = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}[INST] {{ if and $last $.System }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>
{{- end }}
{{- end }}"""

FAMILIES: tuple[OllamaFamily, ...] = (
    OllamaFamily("chatml", "<|im_start|>", _CHATML, ("<|im_start|>", "<|im_end|>")),
    OllamaFamily(
        "llama3", "<|start_header_id|>", _LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    ),
    OllamaFamily("gemma", "<start_of_turn>", _GEMMA, ("<start_of_turn>", "<end_of_turn>")),
    OllamaFamily("phi3", "<|assistant|>", _PHI3, ("<|end|>", "<|user|>", "<|assistant|>")),
    OllamaFamily("mistral", "[INST]", _MISTRAL, ("[INST]", "[/INST]", "</s>")),
)


def family_of(chat_template: str | None) -> OllamaFamily:
    """The Ollama template family of a Jinja chat template, by its markers."""
    for fam in FAMILIES:
        if chat_template and fam.marker in chat_template:
            return fam
    raise UserError(
        "--ollama: mmtune has no Ollama template for this chat template (it knows ChatML, Llama 3, Gemma, "
        "Phi-3 and Mistral). Leave out --ollama and `ollama create` from a Modelfile of your own with "
        "just `FROM ./model.gguf`: Ollama then uses the template inside the GGUF where it knows it"
    )


def default_system(tokenizer) -> str | None:
    """The system prompt the template writes when the conversation has none (SmolLM2, Qwen2.5)."""
    probe = "mmtune ollama probe 51d2"
    try:
        without = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False)
        marked = tokenizer.apply_chat_template(
            [{"role": "system", "content": "SYS-5e1"}, {"role": "user", "content": probe}], tokenize=False
        )
    except Exception:  # a template that takes no system message (Gemma 2): nothing to default
        return None
    head, tail = marked.split("SYS-5e1", 1) if "SYS-5e1" in marked else ("", "")
    if not head and not tail:
        return None
    if without.startswith(head) and tail and tail in without[len(head) :]:
        text = without[len(head) : without.index(tail, len(head))]
        return text or None
    return None


def write_modelfile(gguf_path: Path, tokenizer, *, context_length: int | None = None) -> Path:
    """`Modelfile` beside `gguf_path` (FROM ./file.gguf, TEMPLATE, SYSTEM, PARAMETERs)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    fam = family_of(template)
    body = fam.template
    bos = getattr(tokenizer, "bos_token", None)
    if bos and _template_writes_bos(tokenizer) and not _encode_adds_bos(tokenizer):
        body = bos + body  # the Jinja template writes it; llama.cpp will not add it (add_bos_token false)
    lines = [f"FROM ./{gguf_path.name}", "", f'TEMPLATE """{body}"""', ""]
    system = default_system(tokenizer)
    if system:
        lines += [f"SYSTEM {json.dumps(system, ensure_ascii=False)}", ""]
    for stop in fam.stops:
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos not in fam.stops:
        lines.append(f"PARAMETER stop {json.dumps(eos)}")
    if context_length:
        lines.append(f"PARAMETER num_ctx {min(int(context_length), 8192)}")
    out = gguf_path.with_name("Modelfile")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _template_writes_bos(tokenizer) -> bool:
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    except Exception:
        return False
    return isinstance(text, str) and text.startswith(tokenizer.bos_token)


def _encode_adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return (
        bool(ids)
        and ids[0] == tokenizer.bos_token_id
        and len(ids) > len(tokenizer("a", add_special_tokens=False)["input_ids"])
    )
