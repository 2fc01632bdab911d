"""A picture (FLUX LoRA) job in the studio, in a real browser: its page shows the sample pictures of each
checkpoint step (downloaded once each with the key, decoded from object URLs under the CSP), "Generate" opens
the picture playground with the tuned model beside its base at one seed, and the chat screens offer no chat
for picture models. Its own small `mmtune serve` (the tiny random FLUX base only, no text model), in the
session's Chromium: the shared SmolLM2 studio server is not started for it, and no other studio test changes."""

from __future__ import annotations

import io
import re
import zipfile

import httpx
import pytest

from tests.helpers.tiny_flux import MAX_T5_TOKENS, save_tiny_flux

PROMPTS = ["zkx", "zkx, a circle"]
SETTINGS = {"trigger_word": "zkx", "repeats": 2, "resolution": 16, "max_steps": 4, "save_steps": 2, "sample_steps": 1,
            "sample_prompt": PROMPTS, "max_sequence_length": MAX_T5_TOKENS, "lora_rank": 4, "lora_alpha": 4.0}
REFUSED = r"status of 400"


def _zip() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, colour in enumerate([(230, 200, 30), (240, 210, 40), (220, 190, 20)]):
            png = io.BytesIO()
            Image.new("RGB", (64, 64), colour).save(png, format="PNG")  # 64 px: the smallest a picture job takes
            zf.writestr(f"yellow/p{i}.png", png.getvalue())
            zf.writestr(f"yellow/p{i}.txt", "a circle")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, own_studio):
    """`mmtune serve flux-tiny=BASE --model-root R`: picture models only (no text model loads), the jobs API."""
    models = tmp_path_factory.mktemp("studio-flux")
    base = save_tiny_flux(models / "flux-tiny")
    studio = own_studio((f"flux-tiny={base}", "--model-root", str(models)), timeout=120)
    studio.base = base
    return studio


def _create_job(server, base) -> str:
    r = httpx.post(f"{server.url}/v1/files", headers=server.auth, timeout=60,
                   files={"file": ("yellow.zip", _zip(), "application/zip")}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    r = httpx.post(f"{server.url}/v1/fine_tuning/jobs", headers=server.auth, timeout=60,
                   json={"model": str(base), "training_file": r.json()["id"], "suffix": "zkx", "seed": 1,
                         "hyperparameters": {"learning_rate_multiplier": 500.0}, **SETTINGS})
    assert r.status_code == 200, r.text
    return r.json()["id"]


DECODED = """(min) => { const imgs = [...document.querySelectorAll(SEL)];
  return imgs.length >= min && imgs.every(i => i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:')); }"""


def _decoded(page, selector: str, at_least: int, timeout: float = 30_000) -> None:
    page.wait_for_function(DECODED.replace("SEL", repr(selector)), arg=at_least, timeout=timeout)


# measured in one studio run on the shared 2-core machine (load 4-6): 29 s call + 8 s setup (12 s more when it
# runs alone: the first diffusers import); ~22 s of the call is the job's training process, ~10 s loading two
# pipelines to draw
@pytest.mark.slow
def test_a_picture_job_shows_its_samples_and_generates_beside_its_base(pictures):
    page, server = pictures.page, pictures.server
    pictures.expect_errors(REFUSED)  # the out-of-range steps below: the server's 400, shown in the column
    downloads: list[str] = []
    page.on("request", lambda r: downloads.append(r.url) if re.search(r"/v1/files/[^/]+/content$", r.url) else None)
    page.goto(f"{server.url}/ui/")
    page.fill("#key", pictures.key)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("body[data-signed-in]")

    job_id = _create_job(server, pictures.base)
    pictures.go(f"#/jobs/{job_id}")  # opened at once: the page polls through the whole run
    page.wait_for_selector("#job-status:is([data-status='succeeded'], [data-status='failed'], [data-status='cancelled'])",
                           timeout=180_000)
    assert page.get_attribute("#job-status", "data-status") == "succeeded", page.text_content("#job-error")
    events = server.api(f"/v1/fine_tuning/jobs/{job_id}/events?limit=1000")["data"]
    by_step: dict[int, list[str]] = {}
    for e in reversed(events):  # oldest first; a later event of a step stands for it (as the page does)
        if e["data"] and e["data"].get("samples"):
            by_step[e["data"]["step"]] = [s["file_id"] for s in e["data"]["samples"]]
    assert sorted(by_step) == [2, 4] and all(len(ids) == len(PROMPTS) for ids in by_step.values()), by_step
    page.wait_for_function("(n) => document.querySelectorAll('#samples img.sample').length === n",
                           arg=sum(map(len, by_step.values())))
    _decoded(page, "#samples img.sample", 4)
    shown = page.eval_on_selector_all("#samples .sample-step", "ds => ds.map(d => [Number(d.dataset.step), "
                                      "[...d.querySelectorAll('img')].map(i => i.dataset.file), "
                                      "[...d.querySelectorAll('figcaption')].map(f => f.textContent)])")
    assert shown == [[step, ids, PROMPTS] for step, ids in sorted(by_step.items())]
    assert page.evaluate("() => [...document.querySelectorAll('#samples img')].map(i => i.naturalWidth)") == [16] * 4
    # each picture downloaded once, though the page polled (and redrew the samples) all through the run
    wanted = {f for ids in by_step.values() for f in ids}
    assert sorted(u.split("/")[-2] for u in downloads if u.split("/")[-2] in wanted) == sorted(wanted)
    assert page.locator("#tps").count() == 0 and "picture LoRA" in page.text_content("#job-what")
    assert page.locator("#job-head a.chat, #checkpoints a[href^='#/playground']").count() == 0
    checkpoints = server.api(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")["data"]
    assert checkpoints and page.locator("tr.checkpoint a.generate").count() == len(checkpoints)
    assert page.locator("#job-head .op-merge").count() == 1 and page.locator(".op-export, .op-eval").count() == 0

    # Generate: the picture playground, the tuned model preselected, its base beside it (by the name the job
    # gives it: here its path, which the server serves for the job beside `flux-tiny`)
    model = page.text_content("#ft-model")
    assert model == f"ft:flux-tiny:zkx:{job_id}"
    page.click("#generate-ft")
    page.wait_for_selector("#img-generate")
    assert page.url.split("#", 1)[1].startswith("/images?model=")
    assert page.eval_on_selector_all("#img-columns select", "ss => ss.map(s => s.value)") == [model, str(pictures.base)]
    page.fill("#img-prompt", "zkx, a circle")
    page.fill("#img-steps", "2")
    page.fill("#img-seed", "7")
    page.fill("#img-width", "16")
    page.fill("#img-height", "16")
    page.click("#img-generate")
    page.wait_for_function("() => [...document.querySelectorAll('.img-column')].every(c => c.dataset.state === 'done')",
                           timeout=120_000)
    _decoded(page, "#img-columns img.generated", 2)
    stats = page.eval_on_selector_all("#img-columns .stats", "ps => ps.map(p => p.textContent)")
    assert all(re.fullmatch(r"1 picture\(s\) · 16x16 · [\d.]+ s", s) for s in stats), stats
    # the same seed, other pictures: the LoRA changes what the base draws
    pixels = page.evaluate("""() => [...document.querySelectorAll('#img-columns img.generated')].map(img => {
      const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
      const g = c.getContext('2d'); g.drawImage(img, 0, 0); return Array.from(g.getImageData(0, 0, c.width, c.height).data).join(','); })""")
    assert len(pixels) == 2 and pixels[0] != pixels[1]
    page.fill("#img-height", "")  # a width without a height: said before any request
    page.click("#img-generate")
    assert page.text_content("#img-status") == "Give both width and height, or neither (the model's size)."
    page.fill("#img-width", "")
    page.fill("#img-steps", "101")  # the server's 400, as text in each column
    page.click("#img-generate")
    page.wait_for_function("() => [...document.querySelectorAll('.img-column')].every(c => c.dataset.state === 'error')")
    assert "steps must be an integer from 1 to 100" in page.text_content("#img-columns .stats.error")
    page.click("#lang")
    page.wait_for_function("() => document.querySelector('#view h1')?.textContent === '图片生成测试'")
    assert page.text_content("#img-generate") == "生成" and page.text_content("#nav a[href='#/images']") == "图片生成"
    page.click("#lang")
    page.wait_for_selector("#img-generate:text('Generate')")

    # the chat screens: picture models are pointed to the picture playground, never offered for chat
    pictures.go(f"#/playground?models={model}")
    page.wait_for_selector("#no-chat")
    assert page.get_attribute(".picture-model a.generate", "href") == f"#/images?model={model.replace(':', '%3A')}"
    pictures.go("#/models")
    page.wait_for_selector(f"#served tr[data-model='{model}']")
    kinds = page.eval_on_selector_all("#served tbody tr", "rs => rs.map(r => [r.dataset.kind, !!r.querySelector('a.generate'), "
                                      "!!r.querySelector('a.chat')])")
    assert kinds and all(k == ["image-generation", True, False] for k in kinds), kinds
    pictures.go("#/checkpoints")
    page.wait_for_selector(f"#all-checkpoints tr[data-job='{job_id}']")
    rows = page.locator(f"#all-checkpoints tr[data-job='{job_id}']")
    assert rows.count() == len(checkpoints) + 1 and page.locator("#all-checkpoints a.chat, #all-checkpoints .op-export").count() == 0
    first = checkpoints[0]
    page.click(f"#all-checkpoints tr[data-job='{job_id}'][data-step='{first['step_number']}'] a.generate")
    page.wait_for_selector("#img-generate")
    assert page.eval_on_selector("#img-columns select", "s => s.value") == first["fine_tuned_model_checkpoint"]
    pictures.check_clean()
