"""lm-evaluation-harness, run as a user would against `mmtune serve`, scores the embedded SmolLM2
exactly as its own `hf` backend does on the same model folder.

`local-completions` on a log-likelihood multiple-choice task (it needs `/v1/completions` with `echo`
and `logprobs`) and `local-chat-completions` on a generation task; both tasks are local YAML files
over local JSONL rows, and lm-eval's tokenizer is the model's local folder: nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from serve.running import free_port

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow

NAME = "smol"
CHOICE_ROWS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "Berlin", "Madrid"], "answer": 0},
    {"question": "How many legs does a spider have?", "choices": ["six", "eight", "four"], "answer": 1},
    {"question": "Which is a colour?", "choices": ["table", "seven", "green"], "answer": 2},
]
GEN_ROWS = [
    {"question": "What is the capital of France? Answer with one word.", "answer": "Paris"},
    {"question": "What is 2 + 2? Answer with a number only.", "answer": "4"},
]


def _task_files(folder):
    (folder / "choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHOICE_ROWS))
    (folder / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GEN_ROWS))
    common = "dataset_path: json\ntest_split: test\n"
    (folder / "mmtune_choice.yaml").write_text(
        f"task: mmtune_choice\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'choice.jsonl'}\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    (folder / "mmtune_gen.yaml").write_text(
        f"task: mmtune_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 8\n  do_sample: false\n  temperature: 0\n"
        "metric_list:\n  - metric: exact_match\n    ignore_case: true\n    ignore_punctuation: true\n"
    )
    return str(folder)


@pytest.fixture(scope="module")
def smol_folder():
    from mmtune.models.loader import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def server(smol_folder):
    """`mmtune serve` in a subprocess, as a user starts it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmtune.cli", "serve", f"{NAME}={smol_folder}", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode())
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _evaluate(model: str, model_args: dict, task: str, include: str, **kw):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=model, model_args=model_args, tasks=[task], task_manager=TaskManager(
        include_path=include), log_samples=True, **kw)
    return out["results"][task], out["samples"][task]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    return _task_files(tmp_path_factory.mktemp("lm-eval-tasks"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_local_completions_log_likelihoods_score_like_hf(server, smol_folder, tasks):
    api, api_samples = _evaluate("local-completions", {
        "model": NAME, "base_url": f"{server}/v1/completions", "tokenizer": smol_folder,
        "tokenizer_backend": "huggingface", "max_retries": 1, "num_concurrent": 1}, "mmtune_choice", tasks)
    hf, hf_samples = _evaluate("hf", {"pretrained": smol_folder, "dtype": "float32", "device": "cpu"},
                               "mmtune_choice", tasks)
    assert api["acc,none"] == hf["acc,none"] and api["acc_norm,none"] == hf["acc_norm,none"]
    assert api["acc,none"] >= 0.5  # the model knows some of these: the scores are not all-wrong noise
    for a, h in zip(api_samples, hf_samples):
        got = [r[0][0] for r in a["resps"]]
        want = [r[0][0] for r in h["resps"]]
        assert got == pytest.approx(want, abs=1e-3)  # log-likelihood of every choice


def test_local_chat_completions_generations_score_like_hf(server, smol_folder, tasks):
    api, api_samples = _evaluate("local-chat-completions", {
        "model": NAME, "base_url": f"{server}/v1/chat/completions", "max_retries": 1, "num_concurrent": 1},
        "mmtune_gen", tasks, apply_chat_template=True)
    hf, hf_samples = _evaluate("hf", {"pretrained": smol_folder, "dtype": "float32", "device": "cpu"},
                               "mmtune_gen", tasks, apply_chat_template=True)
    answers = [s["filtered_resps"] for s in api_samples]
    assert answers == [s["filtered_resps"] for s in hf_samples]  # the same greedy answers, word for word
    assert all(a[0].strip() for a in answers)
    assert api["exact_match,none"] == hf["exact_match,none"]
