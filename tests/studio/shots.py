"""`make ui-shots`: screenshots of every studio screen at 1280x800 and at phone width (390x844), in
English, against a real server with a short job on SmolLM2.

    python tests/studio/shots.py runs/ui-shots [--readme docs/studio.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1] / "src")]

from studio.conftest import CHROMIUM, KEY, Server  # noqa: E402

EXAMPLES = HERE.parents[1] / "examples" / "data"
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def prepare(server: Server) -> dict:
    """Two uploaded files and one finished job to show."""
    def up(path: Path) -> str:
        with open(path, "rb") as f:
            r = httpx.post(f"{server.url}/v1/files", headers=server.auth, files={"file": (path.name, f)},
                           data={"purpose": "fine-tune"}, timeout=60)
        r.raise_for_status()
        return r.json()["id"]

    bad, good = up(EXAMPLES / "bad.jsonl"), up(EXAMPLES / "persona.jsonl")
    job = httpx.post(f"{server.url}/v1/fine_tuning/jobs", headers=server.auth, timeout=60, json={
        "training_file": good, "suffix": "shots", "preset": "fast", "max_steps": 4, "save_steps": 2, "max_length": 64,
        "hyperparameters": {"batch_size": 1}}).json()
    deadline = time.time() + 900
    while (status := server.api(f"/v1/fine_tuning/jobs/{job['id']}"))["status"] not in ("succeeded", "failed",
                                                                                         "cancelled"):
        if time.time() > deadline:
            raise SystemExit(f"the job {job['id']} did not finish in time")
        time.sleep(2)
    op = httpx.post(f"{server.url}/v1/fine_tuning/operations", headers=server.auth, timeout=60, json={
        "kind": "eval", "model": status["fine_tuned_model"], "file_id": good, "max_tokens": 16}).json()
    while server.api(f"/v1/fine_tuning/operations/{op['id']}")["status"] in ("queued", "running"):
        if time.time() > deadline:
            raise SystemExit(f"the evaluation {op['id']} did not finish in time")
        time.sleep(2)
    return {"bad": bad, "good": good, "job": job["id"], "model": status["fine_tuned_model"], "op": op["id"]}


def shoot(page, out: Path, name: str, settle_ms: int = 1500) -> None:
    page.wait_for_timeout(settle_ms)
    page.screenshot(path=str(out / f"{name}.png"))
    print(out / f"{name}.png")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--readme", help="also write a small PNG of the job page here")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data", Path(tmp) / "server.log")
        server.start()
        try:
            ids = prepare(server)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
                for label, (w, h) in SIZES.items():
                    for lang in ("en",):  # zh too, where the machine has CJK fonts: ("en", "zh")
                        page = browser.new_context(viewport={"width": w, "height": h}).new_page()
                        page.goto(f"{server.url}/ui/")
                        page.evaluate(f"() => localStorage.setItem('mmtune.lang', '{lang}')")
                        page.reload()
                        page.wait_for_selector("#signin:not([hidden])")
                        shoot(page, out, f"{label}-{lang}-signin", 300)
                        page.fill("#key", KEY)
                        page.click("#signin button[type=submit]")
                        page.wait_for_selector("body[data-signed-in]")
                        screens = [("data", f"#/data/{ids['bad']}?rules=default"), ("new", f"#/new?training_file={ids['good']}"),
                                   ("jobs", "#/jobs"), ("job", f"#/jobs/{ids['job']}"), ("models", "#/models"),
                                   ("checkpoints", "#/checkpoints"), ("eval", f"#/ops/{ids['op']}"),
                                   ("playground", f"#/playground?models=smollm2-135m-instruct,{ids['model']}")]
                        for name, hash_ in screens:
                            page.goto(f"{server.url}/ui/{hash_}")
                            page.wait_for_selector("body[data-signed-in]")
                            if name == "data":
                                page.wait_for_selector("#tokens-button")
                                page.fill("#tok-max-length", "64")
                                page.click("#tokens-button")
                                page.wait_for_selector("#histogram rect.bar", timeout=120_000)
                            if name == "new":
                                page.wait_for_selector("#estimate-button")
                                page.fill("#f-max_steps", "4")
                                page.click("#estimate-button")
                            if name == "playground":
                                page.fill("#prompt", "Who founded Lumen Bakery?")
                                page.fill("#max-tokens", "24")
                                page.click("#send")
                                try:  # a loaded machine may still be streaming: the shot shows that
                                    page.wait_for_function("() => [...document.querySelectorAll('#columns .column')]"
                                                           ".every(c => c.dataset.state !== 'streaming')", timeout=180_000)
                                except Exception as e:  # noqa: BLE001
                                    print(f"playground still streaming: {e}")
                            shoot(page, out, f"{label}-{lang}-{name}")
                            if name == "job" and label == "desktop" and lang == "en" and args.readme:
                                readme_png(page, Path(args.readme))
                        page.context.close()
                browser.close()
        finally:
            server.stop()
    return 0


def readme_png(page, path: Path) -> None:
    """The job page, scaled to 800 px wide and reduced to 64 colours (well under 150 KB)."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(page.screenshot()))
    img = img.resize((800, round(img.height * 800 / img.width)), Image.LANCZOS)
    img.convert("RGB").quantize(64).save(path, optimize=True)
    print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    sys.exit(main())
