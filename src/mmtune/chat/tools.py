"""How tool definitions, tool calls and tool results are written into a prompt, and read back.

A chat template either renders tools itself (Qwen2.5/Qwen3's `<tool_call>` JSON, Llama 3.1's
JSON calls, Mistral's `[TOOL_CALLS]`, LFM2.5's `<|tool_call_start|>`) or it drops them:
SmolLM2's ChatML renders a tool-call turn as an empty assistant turn and never shows the
definitions; Phi-3 drops `tool` messages; Gemma refuses them. Which one is found by rendering
a probe conversation through the template (`template_support`), never by the model's name.

Formats (`ModelSpec.tool_format`, resolved by `resolve_format`):
- "template": the template's own. Every piece must be rendered by it, or it is an error.
- "hermes": the Hermes-style fallback, written into the messages before the template runs:
  the definitions as JSON lines inside `<tools></tools>` with a short instruction, appended
  to the system prompt (a system message of its own if the row has none; the first user turn
  if the template takes no system role); each call as `<tool_call>\\n{"name": ...,
  "arguments": {...}}\\n</tool_call>` on its own line after the assistant's text; each result
  as `<tool_response>\\n...\\n</tool_response>` in a `tool` turn where the template renders
  that role, else in a user turn (consecutive results share one).
- "auto" (the default): "template" where the probe shows the template renders definitions,
  calls and results, else "hermes".

`parse` reads generated text back into content + calls, in the call syntax the model writes
(`call_syntax`, found by rendering a probe call through the template, never by the model's name):
- "hermes": `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (the fallback, Qwen);
- "json": Llama 3.1/3.2's JSON object `{"name": ..., "parameters": {...}}` as the whole answer, after
  `<|python_tag|>` or bare (several separated by `;`);
- "mistral": `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]` (the control token is usually
  dropped when the answer is decoded, so a bare list opening the answer reads the same);
- "pythonic": LFM2.5's `<|tool_call_start|>[get_weather(city='Paris'), get_time()]<|tool_call_end|>`,
  a Python list of calls with keyword arguments (the control tokens dropped, a bare list again).
docs/tools.md describes the formats for users. Imports nothing heavy.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from mmtune.data.schema import ToolCall
from mmtune.errors import UserError
from mmtune.models.registry import TOOL_FORMATS

__all__ = ["CALL_SYNTAXES", "TOOL_FORMATS", "Reply", "TemplateSupport", "call_syntax", "parse", "resolve_format",
           "template_support"]

CALL_SYNTAXES = ("hermes", "json", "mistral", "pythonic")  # how an answer writes its calls (see `parse`)

HERMES_INSTRUCTION = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"  # Llama 3.1: opens a call (a control token: decoding usually drops it)
MISTRAL_CALLS = "[TOOL_CALLS]"  # Mistral: opens the list of calls (a control token too)
PYTHONIC_OPEN, PYTHONIC_CLOSE = "<|tool_call_start|>", "<|tool_call_end|>"  # LFM2.5: around `[f(a=1), ...]`
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
_CALL_RE = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.S)

# Probe markers: unlikely strings whose presence in a render shows the template kept the piece.
_P_TOOL = "mmtune_probe_tool_7c1e"
_P_CALL = "mmtune_probe_call_7c1e"
_P_ARG = "mmtune-probe-argument-7c1e"
_P_RESULT = "mmtune probe result 7c1e"
_P_SYSTEM = "mmtune probe system 7c1e"


# ----------------------------------------------------------------------------- the fallback's text


def tools_block(tools: list[dict]) -> str:
    """The definitions and the instruction, as the fallback puts them in the system prompt."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return HERMES_INSTRUCTION.format(tools=lines)


def call_block(name: str, arguments: dict) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def assistant_text(content: str, calls: list[dict]) -> str:
    """An assistant turn's text with its calls: the content (if any), then one block per call,
    each on its own line. `calls` are OpenAI-shape dicts with `arguments` already a dict."""
    blocks = [call_block(c["function"]["name"], c["function"]["arguments"]) for c in calls]
    return "\n".join([content, *blocks] if content else blocks)


def response_text(content: str) -> str:
    return f"{RESPONSE_OPEN}\n{content}\n{RESPONSE_CLOSE}"


@dataclass
class Reply:
    """Generated (or rendered) assistant text split into its content and its tool calls."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)


def parse(text: str, syntax: str = "hermes") -> Reply:
    """Generated text as content + calls, in `syntax` (CALL_SYNTAXES). Arguments become a JSON object
    string; ids are not part of the formats, so None. Text that does not parse as calls stays content:
    - "hermes": each well-formed `<tool_call>{json}</tool_call>` block becomes a call and is removed
      from the content with the newline before it; a block that is not a JSON object with a string
      `name` (or an unclosed one) stays in the content;
    - "json" / "mistral" / "pythonic": the calls are the whole answer (content before the opening
      control token is kept as content); if any of them does not parse, the whole answer is content."""
    if syntax == "json":
        return _parse_leading(text, PYTHON_TAG, "{")
    if syntax == "mistral":
        return _parse_leading(text, MISTRAL_CALLS, "[")
    if syntax == "pythonic":
        return _parse_pythonic(text)
    calls: list[ToolCall] = []
    kept: list[str] = []
    pos = 0
    for m in _CALL_RE.finditer(text):
        call = _call_from_json(m.group(1))
        if call is None:
            continue
        start = m.start() - 1 if m.start() > pos and text[m.start() - 1] == "\n" else m.start()
        kept.append(text[pos:start])
        pos = m.end()
        calls.append(call)
    kept.append(text[pos:])
    return Reply("".join(kept), calls)


def _parse_leading(text: str, tag: str, bracket: str) -> Reply:
    """Calls written as JSON after `tag` (or, the tag dropped by decoding, at the answer's start when it
    opens with `bracket`): one JSON value after another, separated by whitespace or `;`, each an object
    or a list of objects with a string `name`, to the end of the text."""
    at = text.find(tag)
    content, body = (text[:at].rstrip(), text[at + len(tag):]) if at >= 0 else ("", text)
    body = body.strip()
    if not body.startswith(("{", "[")) or (at < 0 and not body.startswith(bracket)):
        return Reply(text)
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while pos < len(body):
        try:
            value, pos = decoder.raw_decode(body, pos)
        except json.JSONDecodeError:
            return Reply(text)
        for obj in value if isinstance(value, list) else [value]:
            call = _call_from_obj(obj)
            if call is None:
                return Reply(text)
            calls.append(call)
        while pos < len(body) and body[pos] in " \t\r\n;":
            pos += 1
    return Reply(content, calls) if calls else Reply(text)


def _parse_pythonic(text: str) -> Reply:
    """Calls written as a Python list, `[get_weather(city='Paris'), get_time()]`, after `<|tool_call_start|>`
    (up to `<|tool_call_end|>`, with nothing after it) or as the whole answer. Each call has keyword
    arguments only, each a literal: strings, numbers, True/False/None, lists and dicts (JSON's
    true/false/null too: LFM2.5's template writes object arguments as JSON). Names may hold `-` and `.`
    (OpenAI allows `-`; Python would not parse it), so they are cut out before Python parses the rest."""
    at = text.find(PYTHONIC_OPEN)
    content, body = (text[:at].rstrip(), text[at + len(PYTHONIC_OPEN):]) if at >= 0 else ("", text)
    if at >= 0 and PYTHONIC_CLOSE in body:
        body, after = body.split(PYTHONIC_CLOSE, 1)
        if after.strip():
            return Reply(text)
    calls = _pythonic_calls(body.strip())
    return Reply(content, calls) if calls else Reply(text)


_NAME_RE = re.compile(r"[A-Za-z_][\w.\-]*")
_JSON_WORDS = {"true": True, "false": False, "null": None}


def _pythonic_calls(body: str) -> list[ToolCall]:
    """The calls of a `[name(k=v, ...), ...]` list, or [] if it is not one."""
    if not (body.startswith("[") and body.endswith("]")):
        return []
    names: list[str] = []
    out: list[str] = []
    depth, quote, pending, i = 0, "", "", 0
    while i < len(body):  # the list's own level: cut each call's name out, keep everything else
        ch = body[i]
        if quote:
            out.append(body[i:i + 2] if ch == "\\" else ch)
            i += 2 if ch == "\\" else 1
            quote = "" if ch == quote else quote
            continue
        if depth == 1 and ch not in "()[]{},'\"":
            pending += ch
            i += 1
            continue
        if ch == "(" and depth == 1:
            name = pending.strip()
            if not _NAME_RE.fullmatch(name):
                return []
            out.append(f"_c{len(names)}(")
            names.append(name)
            depth += 1
        else:
            if depth == 1 and pending.strip():
                return []  # something other than a call at the list's level
            out.append(ch)
            quote = ch if ch in "'\"" else ""
            depth += (ch in "([{") - (ch in ")]}")
        pending = ""
        i += 1
    try:
        tree = ast.parse("".join(out), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    if not isinstance(tree, ast.List) or len(tree.elts) != len(names) or not names:
        return []
    calls = []
    for k, node in enumerate(tree.elts):
        if (not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.func.id != f"_c{k}"
                or node.args or any(kw.arg is None for kw in node.keywords)):
            return []
        try:
            args = {kw.arg: _literal(kw.value) for kw in node.keywords}
            calls.append(ToolCall(names[k], json.dumps(args, ensure_ascii=False, allow_nan=False)))
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return []
    return calls


def _literal(node: ast.AST) -> Any:
    """A literal's value, JSON's words included; ValueError for anything that is not one."""
    if isinstance(node, ast.Name) and node.id in _JSON_WORDS:
        return _JSON_WORDS[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        keys = [ast.literal_eval(k) if k is not None else None for k in node.keys]
        if not all(isinstance(k, str) for k in keys):
            raise ValueError("object keys must be strings")
        return {k: _literal(v) for k, v in zip(keys, node.values, strict=True)}
    value = ast.literal_eval(node)
    if isinstance(value, (set, frozenset, bytes, complex)):
        raise ValueError("not a JSON value")
    return value


def _call_from_json(body: str) -> ToolCall | None:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    return _call_from_obj(obj)


def _call_from_obj(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


# ----------------------------------------------------------------------------- what a template renders


@dataclass(frozen=True)
class TemplateSupport:
    """What a chat template renders of a tool conversation (from probe renders)."""

    definitions: bool  # the `tools` argument shows up in the text
    calls: bool  # an assistant message's `tool_calls` (name and argument value)
    results: bool  # a `tool` message after a call
    tool_role: bool  # a `tool` message's content, without native calls around it
    system_role: bool  # a system message's content

    @property
    def native(self) -> bool:
        return self.definitions and self.calls and self.results

    def dropped(self) -> list[str]:
        return [w for w, ok in (("tool definitions", self.definitions), ("tool calls", self.calls),
                                ("tool results", self.results)) if not ok]


def template_support(tokenizer) -> TemplateSupport:
    """Probe `tokenizer`'s chat template (a tokenizer or a processor: anything with
    `apply_chat_template` and `chat_template`); cached per template text."""
    template = getattr(tokenizer, "chat_template", None)
    key = json.dumps(template, sort_keys=True) if isinstance(template, dict) else str(template)
    return _support_cached(key, tokenizer)


@lru_cache(maxsize=64)
def _support_cached(template: str, tokenizer) -> TemplateSupport:
    tool = {
        "type": "function",
        "function": {
            "name": _P_TOOL,
            "description": "probe",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
    call = {"id": "call00001", "type": "function", "function": {"name": _P_CALL, "arguments": {"q": _P_ARG}}}
    native = _probe(
        tokenizer,
        [
            {"role": "user", "content": "mmtune probe question"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": _P_RESULT, "tool_call_id": "call00001", "name": _P_CALL},
            {"role": "assistant", "content": "mmtune probe answer"},
        ],
        [tool],
    )
    role = _probe(
        tokenizer,
        [
            {"role": "user", "content": "mmtune probe question"},
            {"role": "assistant", "content": "mmtune probe answer"},
            {"role": "tool", "content": _P_RESULT},
        ],
    )
    system = _probe(tokenizer, [{"role": "system", "content": _P_SYSTEM}, {"role": "user", "content": "q"}])
    return TemplateSupport(
        definitions=_P_TOOL in native,
        calls=_P_CALL in native and _P_ARG in native,
        results=_P_RESULT in native,
        tool_role=_P_RESULT in role,
        system_role=_P_SYSTEM in system,
    )


def _probe(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    except Exception:  # a template that refuses the probe renders none of it
        return ""


def resolve_format(tokenizer, declared: str = "auto") -> str:
    """"template" or "hermes" for this tokenizer's template (see the module docstring)."""
    if declared not in TOOL_FORMATS:
        raise UserError(f"tool_format must be one of {', '.join(TOOL_FORMATS)}, not {declared!r}")
    if declared == "hermes":
        return "hermes"
    support = template_support(tokenizer)
    if support.native:
        return "template"
    if declared == "template":
        raise UserError(
            f"tool_format 'template' was asked for, but this chat template drops "
            f"{' and '.join(support.dropped())}; use tool_format 'auto' or 'hermes' (docs/tools.md)"
        )
    return "hermes"


def call_syntax(tokenizer, declared: str = "auto") -> str:
    """How answers write tool calls for this template (CALL_SYNTAXES): "hermes" where the fallback is
    used, else as the template itself writes a probe call ("hermes" when it is none of the known ones)."""
    if resolve_format(tokenizer, declared) == "hermes":
        return "hermes"
    template = getattr(tokenizer, "chat_template", None)
    key = json.dumps(template, sort_keys=True) if isinstance(template, dict) else str(template)
    return _syntax_cached(key, tokenizer)


@lru_cache(maxsize=64)
def _syntax_cached(template: str, tokenizer) -> str:
    call = {"id": "call00001", "type": "function", "function": {"name": _P_CALL, "arguments": {"q": _P_ARG}}}
    text = _probe(tokenizer, [{"role": "user", "content": "mmtune probe question"},
                              {"role": "assistant", "content": "", "tool_calls": [call]}])
    if CALL_OPEN in text:
        return "hermes"
    if MISTRAL_CALLS in text:
        return "mistral"
    if re.search(r'\{\s*"name"\s*:\s*"' + _P_CALL + r'"\s*,\s*"parameters"', text):
        return "json"
    if re.search(r"\[\s*" + _P_CALL + r"\(\s*q\s*=", text):
        return "pythonic"
    return "hermes"


# ----------------------------------------------------------------------------- the fallback on messages


def hermes_messages(messages: list[dict], tools: list[dict] | None, support: TemplateSupport
                    ) -> tuple[list[dict], list[int]]:
    """`messages` (OpenAI-shape dicts, tool-call arguments as dicts; `content` a string, or a list
    of parts as vision templates take it) with the fallback written in, and for each input
    message the index of the message that now holds it."""
    block = tools_block(tools) if tools else None
    out: list[dict] = []
    index: list[int] = []
    merged_results: set[int] = set()  # positions of user turns built from tool results
    if block and support.system_role and not (messages and messages[0]["role"] == "system"):
        out.append({"role": "system", "content": _like(messages[0]["content"] if messages else "", block)})
        block_done = True
    else:
        block_done = block is None
    for m in messages:
        new = dict(m)
        if not block_done and (m["role"] == "system" or (m["role"] == "user" and not support.system_role)):
            new["content"] = _add_text(m["content"], block, at_end=m["role"] == "system")
            block_done = True
        if m["role"] == "assistant" and m.get("tool_calls"):
            new.pop("tool_calls")
            new["content"] = _like(m["content"], assistant_text(_text_of(m["content"]), m["tool_calls"]))
        elif m["role"] == "tool":
            text = response_text(_text_of(m["content"]))
            if not support.tool_role:
                if out and len(out) - 1 in merged_results:
                    out[-1]["content"] = _add_text(out[-1]["content"], text, at_end=True, sep="\n")
                    index.append(len(out) - 1)
                    continue
                new = {"role": "user", "content": _like(m["content"], text)}
                merged_results.add(len(out))
            else:
                new["content"] = _like(m["content"], text)
        out.append(new)
        index.append(len(out) - 1)
    return out, index


def _text_of(content: str | list) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def _like(content: str | list, text: str) -> str | list:
    """`text` in the shape of `content`: a string, or a list of one text part."""
    return text if isinstance(content, str) else [{"type": "text", "text": text}]


def _add_text(content: str | list, text: str, *, at_end: bool, sep: str = "\n\n") -> str | list:
    """`text` joined to a message's content (after it or before it), keeping the content's shape."""
    if isinstance(content, str):
        if not content:
            return text
        return f"{content}{sep}{text}" if at_end else f"{text}{sep}{content}"
    if not content:
        return [{"type": "text", "text": text}]
    return [*content, {"type": "text", "text": sep + text}] if at_end else [{"type": "text", "text": text + sep}, *content]


# ----------------------------------------------------------------------------- checks


def missing_from(text: str, name: str, arguments: dict[str, Any]) -> list[str]:
    """What of one call is not in `text`: its name, or an argument's key or value (a value may
    be written as JSON or as Python writes it, as templates differ)."""
    missing = [] if name in text else [f"the name {name!r}"]
    for kind, leaf in _leaves(arguments):
        if kind == "key" and leaf not in text:
            missing.append(f"the argument {leaf!r}")
        elif kind == "value" and not any(form in text for form in _forms(leaf)):
            missing.append(f"the value {json.dumps(leaf, ensure_ascii=False)}")
    return missing


def _leaves(value: Any):
    if isinstance(value, dict):
        for k, v in value.items():
            yield "key", str(k)
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield "value", value


def _forms(v: Any) -> set[str]:
    if isinstance(v, bool):
        return {"true", "True"}
    if v is None:
        return {"null", "None"}
    if isinstance(v, str):
        return {v, json.dumps(v)[1:-1], json.dumps(v, ensure_ascii=False)[1:-1]}
    return {json.dumps(v), str(v)}
