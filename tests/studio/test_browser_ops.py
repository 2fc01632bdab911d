"""The studio's token histogram, Checkpoints screen, tracked merge / evaluation (their own pages, a
download, an error with its fix) and playground prompts from a file, in the real browser against the
real server of conftest (after test_browser.py, whose job they reuse when it ran)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
EVAL_ROWS = [("Who founded Lumen Bakery?", "Mara Lindqvist founded Lumen Bakery."),
             ("What is two plus two?", "Four.")]


@pytest.fixture
def ui(ui):
    """The shared studio, signed in (test_browser.py signs in through the form; run alone, this file
    puts the key where the form would)."""
    if not ui.page.url.startswith(ui.server.url):
        ui.page.goto(f"{ui.server.url}/ui/")
    if ui.page.evaluate("() => sessionStorage.getItem('mmtune.key')") != ui.key:
        ui.page.evaluate("(k) => sessionStorage.setItem('mmtune.key', k)", ui.key)
        ui.page.reload()
        ui.page.wait_for_selector("body[data-signed-in]")
    return ui


def upload_api(server, name: str, content: bytes) -> str:
    r = httpx.post(f"{server.url}/v1/files", headers=server.auth, files={"file": (name, content)},
                   data={"purpose": "fine-tune"}, timeout=60)
    r.raise_for_status()
    return r.json()["id"]


def eval_file(ui) -> str:
    if not getattr(ui, "eval_file", None):
        rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in EVAL_ROWS]
        ui.eval_file = upload_api(ui.server, "eval.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    return ui.eval_file


def finished_job(ui) -> str:
    """test_browser.py's job when it ran, else a two-step job of our own."""
    if getattr(ui, "job_id", None):
        return ui.job_id
    server = ui.server
    persona = upload_api(server, "persona.jsonl", (EXAMPLES / "persona.jsonl").read_bytes())
    job = httpx.post(f"{server.url}/v1/fine_tuning/jobs", headers=server.auth, timeout=30, json={
        "training_file": persona, "suffix": "ops", "max_steps": 2, "save_steps": 1, "max_length": 48,
        "hyperparameters": {"batch_size": 1}}).json()
    deadline = time.time() + 300
    while (j := server.api(f"/v1/fine_tuning/jobs/{job['id']}"))["status"] != "succeeded":
        assert j["status"] not in ("failed", "cancelled") and time.time() < deadline, j
        time.sleep(1)
    ui.job_id, ui.model = job["id"], j["fine_tuned_model"]
    return job["id"]


def test_token_histogram_flags_the_rows_over_max_length(ui):
    page = ui.page
    ui.go("#/data")
    page.set_input_files("#upload-input", str(EXAMPLES / "persona.jsonl"))
    page.click("#upload-button")
    page.wait_for_selector("#findings")
    fid = re.search(r"#/data/(file-\w+)", page.url).group(1)
    page.wait_for_selector("#tok-model option[value='smollm2-135m-instruct']", state="attached")
    page.fill("#tok-max-length", "60")
    page.click("#tokens-button")
    page.wait_for_selector("#histogram rect.bar", timeout=120_000)
    expected = ui.server.api(f"/v1/files/{fid}/tokens?model=smollm2-135m-instruct&max_length=60")
    counts = page.eval_on_selector_all("#histogram rect.bar", "bs => bs.map(b => Number(b.dataset.count))")
    assert sum(counts) == expected["rows"] == 22 and counts == [b["count"] for b in expected["histogram"]]
    assert page.text_content("#tok-over") == str(expected["rows_over_max_length"]) != "0"
    assert page.locator("#histogram rect.bar.over").count() > 0 and page.locator("#max-length-line").count() == 1
    lines = page.eval_on_selector_all("#over-rows tr.over-row", "rs => rs.map(r => Number(r.dataset.line))")
    assert lines == [r["line"] for r in expected["over"]]
    page.click(f"#over-rows tr.over-row[data-line='{lines[0]}']")
    page.wait_for_function("() => document.getElementById('raw-row')?.textContent.length > 0")
    assert page.text_content("#raw-row") == (EXAMPLES / "persona.jsonl").read_text().splitlines()[lines[0] - 1]


def test_a_zip_with_images_uploads_as_a_vision_file_and_a_bad_one_says_why(ui):
    import io
    import zipfile

    from PIL import Image

    page = ui.page
    ui.expect_errors(r"status of 400")  # the refused zip
    img = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(img, format="PNG")
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Colour?"},
                                                     {"type": "image_url", "image_url": {"url": "img/g.png"}}]},
                        {"role": "assistant", "content": "Green."}]}

    def zipped(entries: dict) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in entries.items():
                zf.writestr(name, data)
        return buf.getvalue()

    ui.go("#/data")
    page.set_input_files("#upload-input", {"name": "green.zip", "mimeType": "application/zip",
                                           "buffer": zipped({"g.jsonl": json.dumps(row) + "\n", "img/g.png": img.getvalue()})})
    page.click("#upload-button")
    page.wait_for_selector("#findings")
    page.select_option("#rules", "default")
    page.wait_for_function("() => document.getElementById('rules')?.value === 'default' && "
                           "document.getElementById('rows')?.textContent === '1'")
    assert page.text_content("#n-errors") == "0" and page.text_content("#fmt") == "openai"
    ui.go("#/data")
    page.set_input_files("#upload-input", {"name": "broken.zip", "mimeType": "application/zip",
                                           "buffer": zipped({"g.jsonl": json.dumps(row) + "\n"})})
    page.click("#upload-button")
    page.wait_for_selector(".status.error")
    assert "'img/g.png' is not in the zip" in page.text_content(".status.error")


def wait_ops(page, selector: str, timeout: float = 600_000) -> None:
    page.wait_for_function(f"""() => {{
      const rows = [...document.querySelectorAll({json.dumps(selector)})];
      return rows.length > 0 && rows.every(r => ['succeeded', 'failed', 'cancelled'].includes(r.dataset.status));
    }}""", timeout=timeout)


@pytest.mark.slow
def test_checkpoints_screen_merges_and_evaluates_with_results_and_errors_shown(ui):
    page = ui.page
    job_id = finished_job(ui)
    efile = eval_file(ui)
    bad = upload_api(ui.server, "only-bad.jsonl", b'{"messages": [{"role": "bot", "content": "x"}]}\n')
    job = ui.server.api(f"/v1/fine_tuning/jobs/{job_id}")
    ckpts = ui.server.api(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")["data"]
    first = min(ckpts, key=lambda c: c["step_number"])["fine_tuned_model_checkpoint"]
    ui.go("#/checkpoints")
    page.wait_for_selector(f"#all-checkpoints tr.ckpt-row[data-model='{job['fine_tuned_model']}']")
    assert page.locator(f"#all-checkpoints tr.ckpt-row.checkpoint[data-job='{job_id}']").count() == len(ckpts)
    row = page.locator(f"#all-checkpoints tr[data-model='{first}']")
    row.locator("button.op-merge").click()
    page.wait_for_selector("#operations tr[data-kind='merge']")
    page.select_option("#eval-file", efile)
    page.fill("#eval-max-tokens", "8")
    page.locator(f"#all-checkpoints tr[data-model='{job['fine_tuned_model']}'] button.op-eval").click()
    page.select_option("#eval-file", bad)  # a file with no usable row: the evaluation fails, saying why
    page.locator(f"#all-checkpoints tr[data-model='{job['fine_tuned_model']}'] button.op-eval").click()
    page.wait_for_function("() => document.querySelectorAll('#operations tr.operation').length >= 3")
    wait_ops(page, "#operations tr.operation")
    ops = ui.server.api("/v1/fine_tuning/operations")["data"]
    merge, good, failed = (next(o for o in ops if o["kind"] == k and o["params"].get("file_id") == f)
                           for k, f in (("merge", None), ("eval", efile), ("eval", bad)))
    assert (merge["status"], good["status"], failed["status"]) == ("succeeded", "succeeded", "failed"), ops

    ui.go(f"#/ops/{merge['id']}")  # the merge's page: output path, files, a download with the key
    page.wait_for_selector("#op-status[data-status='succeeded']")
    assert page.text_content("#op-output").endswith("/output/merged")
    page.wait_for_selector("#op-files li[data-name='merged/config.json']")
    with page.expect_download() as dl:
        page.click("#op-files li[data-name='merged/config.json'] button.download")
    assert json.loads(Path(dl.value.path()).read_text())["model_type"] == "llama"
    assert "merged model saved in" in page.text_content("#op-log")

    ui.go(f"#/ops/{good['id']}")  # the evaluation: scores and every row beside its reference
    page.wait_for_selector("#op-rows tr.eval-row")
    assert float(page.text_content("#m-rouge")) == pytest.approx(good["metrics"]["rouge_l"], abs=0.01)
    assert page.text_content("#m-n") == "2"
    refs = page.eval_on_selector_all("#op-rows tr.eval-row td.reference", "ts => ts.map(t => t.textContent)")
    assert refs == [a for _, a in EVAL_ROWS]
    preds = page.eval_on_selector_all("#op-rows tr.eval-row td.prediction", "ts => ts.map(t => t.textContent)")
    assert all(p.strip() for p in preds)

    ui.go(f"#/ops/{failed['id']}")  # the error, with the fix the CLI names
    page.wait_for_selector("#op-status[data-status='failed']")
    assert "mmtune data check" in page.text_content("#op-error")
    ui.go(f"#/jobs/{job_id}")  # the job page lists its operations too
    page.wait_for_selector(f"#operations tr[data-op='{merge['id']}'][data-status='succeeded']")


def test_playground_takes_prompts_from_a_file_with_their_reference(ui):
    page = ui.page
    efile = eval_file(ui)
    ui.go(f"#/playground?models=smollm2-135m-instruct,smollm2-135m-instruct&file={efile}")
    page.wait_for_selector("#prompt-row option >> nth=1", state="attached")
    page.select_option("#prompt-row", "1")
    assert page.input_value("#prompt") == EVAL_ROWS[1][0]
    assert page.text_content("#reference-text") == EVAL_ROWS[1][1]
    page.fill("#max-tokens", "4")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as caught:
        page.click("#send")
    assert json.loads(caught.value.post_data)["messages"][-1] == {"role": "user", "content": EVAL_ROWS[1][0]}
    page.wait_for_function("() => [...document.querySelectorAll('#columns .column')].every(c => c.dataset.state === 'done')",
                           timeout=120_000)
    if getattr(ui, "job_id", None):  # a job's base may be evaluated: the link goes to the operation's page
        page.click("#eval-button")
        page.wait_for_selector("#eval-status a.eval-op")
        op_id = page.get_attribute("#eval-status a.eval-op", "href").rsplit("/", 1)[1]
        assert ui.server.api(f"/v1/fine_tuning/operations/{op_id}")["params"]["file_id"] == efile
        httpx.post(f"{ui.server.url}/v1/fine_tuning/operations/{op_id}/cancel", headers=ui.server.auth, timeout=30)
