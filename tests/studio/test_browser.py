"""The studio in a real browser (Debian's Chromium, headless, through Playwright), doing what a user
does, against a real `mmtune serve` training the real SmolLM2. Tests share one server and one page
and run in file order (sign in first)."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from pathlib import Path

import httpx
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
REFUSED = r"status of 400|status of 401"
CUT_OFF = r"ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|ERR_CONNECTION_RESET|Failed to fetch"


def test_sign_in_with_the_key(ui):
    page = ui.page
    page.goto(f"{ui.server.url}/")
    assert page.url == f"{ui.server.url}/ui/"
    page.wait_for_selector("#signin:not([hidden])")
    page.fill("#key", "not-the-key")
    page.click("#signin button[type=submit]")
    page.wait_for_function("() => document.getElementById('signin-error')?.textContent.length > 0")
    assert page.is_visible("#signin") and not page.is_visible("#view")
    assert page.evaluate("() => sessionStorage.getItem('mmtune.key')") is None
    page.fill("#key", ui.key)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("body[data-signed-in]")
    assert page.is_visible("#view") and not page.is_visible("#signin")
    page.reload()
    page.wait_for_selector("body[data-signed-in]")  # the key is kept for this tab
    assert not page.is_visible("#signin")
    page.click("#lang")
    assert page.text_content("#nav a[href='#/data']") == "数据" and page.text_content("h1") == "数据"
    page.click("#lang")
    assert page.text_content("#nav a[href='#/data']") == "Data"


def upload(ui, path: Path | None = None, *, name: str | None = None, content: bytes | None = None) -> str:
    ui.go("#/data")
    page = ui.page
    files = str(path) if path else {"name": name, "mimeType": "application/json", "buffer": content}
    page.set_input_files("#upload-input", files)
    page.click("#upload-button")
    page.wait_for_selector("#findings")
    return re.search(r"#/data/(file-\w+)", page.url).group(1)


def test_bad_file_shows_every_finding_at_its_line_and_rule(ui):
    page = ui.page
    upload(ui, EXAMPLES / "bad.jsonl")
    # what a job applies to an OpenAI-shaped .jsonl: the strict rules
    assert page.input_value("#rules") == "strict"
    assert (page.text_content("#n-errors"), page.text_content("#n-warnings")) == ("6", "0")
    assert page.get_attribute("#create-job", "aria-disabled") == "true"
    page.select_option("#rules", "default")
    page.wait_for_function("() => document.getElementById('n-warnings')?.textContent === '3'")
    assert page.text_content("#n-errors") == "7" and page.text_content("#rows") == "10"
    assert page.text_content("#fmt") == "openai" and page.text_content("#kind") == "sft"
    rows = page.eval_on_selector_all("#findings tbody tr", "trs => trs.map(r => [r.dataset.line, r.dataset.rule])")
    assert rows == [["1", "unknown-role"], ["2", "invalid-json"], ["3", "empty-field"], ["4", "not-alternating"],
                    ["5", "no-assistant"], ["6", "media-missing"], ["7", "system-not-first"],
                    ["9", "duplicate-row"], ["10", "whitespace"], ["10", "short-answer"]]
    page.select_option("#severity", "warning")
    assert page.locator("#findings tbody tr").count() == 3
    page.select_option("#severity", "error")
    assert page.locator("#findings tbody tr").count() == 7
    page.click("#findings tbody tr[data-line='4']")
    page.wait_for_function("() => document.getElementById('raw-row')?.textContent.length > 0")
    assert page.text_content("#raw-row") == (EXAMPLES / "bad.jsonl").read_text().splitlines()[3]
    assert "messages[1].role" in page.text_content("#findings tbody tr[data-line='4']")
    assert page.get_attribute("#create-job", "aria-disabled") == "true"


def test_markup_in_a_row_shows_as_text_and_runs_nothing(ui):
    page = ui.page
    script = "<script>window.__pwned = 1</script>"
    img = '<img src=x onerror=window.__pwned=2>'
    row = json.dumps({"messages": [{"role": "user", "content": script}, {"role": "bot", "content": img}]})
    upload(ui, name="<img src=x onerror=window.__pwned=3>.jsonl", content=(row + "\n").encode())
    page.click("#findings tbody tr[data-line='1']")
    page.wait_for_function("() => document.getElementById('raw-row')?.textContent.length > 0")
    assert page.text_content("#raw-row") == row
    assert script in page.text_content("#raw-row") and img in page.text_content("#raw-row")
    assert "<img src=x onerror=window.__pwned=3>.jsonl" in page.text_content("#file-list")
    assert page.locator("main img, main script").count() == 0
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.__pwned") is None


@pytest.mark.slow
def test_a_job_runs_to_success_through_a_server_restart(ui):
    page, server = ui.page, ui.server
    ui.expect_errors(REFUSED)  # the 400 below
    ui.expect_errors(CUT_OFF)  # the page polls while the server is down
    upload(ui, EXAMPLES / "persona.jsonl")
    assert page.text_content("#n-errors") == "0"
    page.click("#create-job")
    page.wait_for_selector("#job-form")
    page.select_option("#f-preset", "fast")
    page.wait_for_function("() => document.getElementById('preset-values')?.textContent.includes('lora_rank=4')")
    for field, value in (("batch_size", "1"), ("max_steps", "4"), ("save_steps", "2"), ("max_length", "64"),
                         ("lora_rank", "0"), ("seed", "3")):
        page.fill(f"#f-{field}", value)
    page.fill("#f-suffix", "studio")
    page.click("#estimate-button")  # lora_rank 0: the server's 400 lands beside the field
    page.wait_for_function("() => document.getElementById('err-lora_rank').textContent.length > 0")
    assert "lora_rank" in page.text_content("#err-lora_rank")
    page.fill("#f-lora_rank", "4")
    page.click("#estimate-button")
    page.wait_for_selector("#est-steps")
    assert page.text_content("#err-lora_rank") == ""
    assert page.text_content("#est-steps") == "4"
    assert page.text_content("#resolved tr[data-key='lora_rank'] td") == "4"
    assert page.text_content("#resolved tr[data-key='n_epochs'] td") == "2"  # the fast preset
    assert "--max-steps 4" in page.text_content("#code-cli")
    assert json.loads(re.search(r"-d '(.*)'", page.text_content("#code-curl")).group(1))["max_steps"] == 4
    page.click("#create-button")
    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[1]
    ui.job_id = job_id

    # the first checkpoint is written: the server dies (SIGKILL) and starts again
    page.wait_for_selector("tr.checkpoint[data-step='2']", timeout=240_000)
    page.reload()
    page.wait_for_selector("tr.checkpoint[data-step='2']")  # a reload mid-run shows the same job
    assert page.get_attribute("#job-status", "data-status") == "running"
    server.kill()
    server.start()
    page.wait_for_selector("#resumed:not([hidden])", timeout=60_000)
    assert "restarted" in page.text_content("#resumed")
    page.wait_for_selector("#job-status[data-status='succeeded']", timeout=300_000)
    job = server.api(f"/v1/fine_tuning/jobs/{job_id}")
    assert job["status"] == "succeeded" and job["mmtune"]["attempts"] == 2
    events = server.api(f"/v1/fine_tuning/jobs/{job_id}/events?limit=1000")["data"]
    metrics = [e for e in events if e["type"] == "metrics"]
    assert len(metrics) == 4
    page.wait_for_function(f"() => document.querySelectorAll('#chart circle.pt.train').length === {len(metrics)}")
    checkpoints = server.api(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")["data"]
    assert len(checkpoints) >= 2 and page.locator("tr.checkpoint").count() == len(checkpoints)
    assert page.text_content("#step") == "4 / 4"
    assert re.fullmatch(r"\d+|–", page.text_content("#tps")) and page.is_hidden("#samples-section")  # a text job's page
    assert "Resuming training from checkpoint at step" in page.text_content("#events")
    model = page.text_content("#ft-model")
    assert model == job["fine_tuned_model"] == f"ft:smollm2-135m-instruct:studio:{job_id}"
    ui.model = model
    page.click(".model-id button.copy")
    page.wait_for_function("() => document.querySelector('.model-id button.copy').dataset.copied !== undefined")
    assert page.evaluate("() => navigator.clipboard.readText()") == model
    page.reload()  # a finished job reads the same after a reload
    page.wait_for_selector("#job-status[data-status='succeeded']")
    page.wait_for_function(f"() => document.querySelectorAll('#chart circle.pt.train').length === {len(metrics)}")
    assert page.locator("tr.checkpoint").count() == len(checkpoints)
    ui.go("#/jobs")
    page.wait_for_selector(f"#jobs tr[data-job='{job_id}'] .badge.succeeded")
    ui.go("#/models")
    page.wait_for_selector(f"#served tr[data-model='{model}']")
    assert job_id in page.text_content(f"#served tr[data-model='{model}']")
    kinds = page.eval_on_selector_all("#served tbody tr", "rs => rs.map(r => [r.dataset.kind, !!r.querySelector('a.chat'), "
                                      "!!r.querySelector('a.generate')])")
    assert kinds and all(k == ["text", True, False] for k in kinds), kinds  # chat models: chat, never Generate


def test_cancel_a_job(ui):
    page, server = ui.page, ui.server
    files = server.api("/v1/files")["data"]
    persona = next((f["id"] for f in files if f["filename"] == "persona.jsonl"), None)
    if persona is None:  # run alone (the job test did not upload it)
        persona = upload(ui, EXAMPLES / "persona.jsonl")
    r = httpx.post(f"{server.url}/v1/fine_tuning/jobs", headers=server.auth, timeout=30,
                   json={"training_file": persona, "max_steps": 500, "max_length": 64, "hyperparameters": {"batch_size": 1}})
    job_id = r.json()["id"]
    ui.go(f"#/jobs/{job_id}")
    page.wait_for_selector("#cancel:not([hidden])")
    page.click("#cancel")
    page.wait_for_selector("#job-status[data-status='cancelled']", timeout=30_000)
    assert not page.is_visible("#cancel")
    deadline = time.time() + 30
    while server.api(f"/v1/fine_tuning/jobs/{job_id}")["status"] != "cancelled":
        assert time.time() < deadline
        time.sleep(0.5)


def test_playground_columns_stream_at_once_and_an_image_travels_as_a_data_url(ui):
    page = ui.page
    ui.expect_errors(REFUSED)  # a text model refuses the image: a 400 the column shows
    # Two columns of one model generate at once (an engine runs one adapter at a time: a base column
    # and a tuned column would take turns), then the tuned model answers in a column of its own.
    ui.go("#/playground?models=smollm2-135m-instruct,smollm2-135m-instruct")
    page.wait_for_selector("#columns .column >> nth=1")
    assert page.locator("#columns .column").count() == 2
    page.fill("#prompt", "Name three colours.")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "16")
    page.evaluate("""() => {
      window.__overlap = false;
      const cols = () => [...document.querySelectorAll('#columns .column')];
      new MutationObserver(() => {
        const c = cols();
        if (c.every(el => el.dataset.state === 'streaming' && el.querySelector('.answer').textContent.length > 0))
          window.__overlap = true;
      }).observe(document.getElementById('columns'), {subtree: true, childList: true, characterData: true});
    }""")
    page.click("#send")
    page.wait_for_function("() => [...document.querySelectorAll('#columns .column')].every(c => c.dataset.state !== "
                           "'streaming')", timeout=120_000)
    states = page.eval_on_selector_all("#columns .column", "cs => cs.map(c => [c.dataset.state, c.textContent])")
    assert all(state == "done" for state, _ in states), states
    assert page.evaluate("() => window.__overlap"), "both columns must show text while both requests are still open"
    for i in range(2):
        col = page.locator("#columns .column").nth(i)
        assert col.locator(".answer").text_content().strip()
        assert re.search(r"^\d+ tokens · first token [\d.]+ s · [\d.]+ s", col.locator(".stats").text_content())
    tuned = getattr(ui, "model", None)
    if tuned:  # "chat with this": the job's model, loaded on first use, answers beside its base
        page.select_option("#columns .column >> nth=1 >> select", tuned)
        page.click("#send")
        page.wait_for_function("() => [...document.querySelectorAll('#columns .column')].every(c => c.dataset.state !== "
                               "'streaming')", timeout=180_000)
        states = page.eval_on_selector_all("#columns .column", "cs => cs.map(c => [c.dataset.state, c.textContent])")
        assert all(state == "done" for state, _ in states), states

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1600, 1200), (200, 30, 30)).save(buf, format="PNG")
    page.evaluate("""(b64) => {
      const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], 'big.png', {type: 'image/png'}));
      document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", base64.b64encode(buf.getvalue()).decode())
    page.wait_for_function("() => document.getElementById('drop')?.textContent.includes('768')")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as caught:
        page.click("#send")
    body = json.loads(caught.value.post_data)
    url = body["messages"][-1]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (768, 576)
    page.wait_for_function("() => [...document.querySelectorAll('#columns .column')].every(c => c.dataset.state === 'error')")
    assert "text model" in page.locator("#columns .column .stats").first.text_content()
