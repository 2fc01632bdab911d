"""Running one job: write its training config, run `mmtune train` as a subprocess, follow it.

The runner is the only code that touches a training process. It follows the run's
`metrics.jsonl` (one event per logged step, carrying step, loss and tokens) and its
`checkpoint-*/` folders (one checkpoint row each), and ends the job as succeeded, failed
or cancelled. A preference job's events also carry its rewards (chosen, rejected, margin,
accuracy). A job on an earlier job's LoRA result trains on that result merged into its base
(`<job dir>/base`, made once by `mmtune merge` before training). The subprocess gets its own process group (a cancel stops all of it) and,
on Linux, dies with the service (PR_SET_PDEATHSIG), so a killed service leaves no orphan
training behind; the next start re-queues the job and the re-run passes `--resume`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mmtune
from mmtune.config import TrainConfig
from mmtune.errors import UserError
from mmtune.jobs.host import RunnerHost
from mmtune.jobs.params import is_adapter_folder, is_picture_job, model_base_name
from mmtune.jobs.store import now

# what `mmtune train` writes (mmtune.train.callbacks / sft; not imported here: they import torch)
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_PREFIX = "checkpoint-"
PICTURE_STATE_FILE = "state.json"  # what a picture run's checkpoint holds (mmtune.imagegen.train)
SAMPLES_FOLDER = "samples"  # a picture run's sample pictures: sample-<i>.png with its prompt in sample-<i>.txt
LOG_TAIL_BYTES = 64 * 1024


PREFERENCE_SETTINGS = ("beta", "dpo_loss", "label_smoothing", "sft_weight", "simpo_gamma", "orpo_lambda",
                       "desirable_weight", "undesirable_weight")
REWARD_KEYS = ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy")
MERGED_BASE = "base"  # <job dir>/base: a LoRA fine-tune the job trains on, merged (see JobRunner.prepare_base)


def fine_tuned_model_name(job: dict[str, Any]) -> str:
    """`ft:<base>:<suffix>:<job id>` (the suffix part is empty without a suffix, as OpenAI does). A job on an
    earlier job's model keeps that model's <base>: ft:smollm2-135m-instruct:dpo:ftjob-B on ft:...:sft:ftjob-A."""
    parent = job["params"].get("mmtune", {}).get("parent_model")
    base = parent.split(":")[1] if parent and parent.count(":") >= 3 else model_base_name(job["model"])
    return f"ft:{base}:{job['suffix'] or ''}:{job['id']}"


def train_config(job: dict[str, Any], data: Path, val: Path | None, output: Path,
                 base: Path | None = None) -> TrainConfig:
    """The job's `mmtune train` config (validated: a bad combination fails here, not in the subprocess);
    `base`: the merged model to train on, when the job's model is a LoRA fine-tune."""
    hyper, own = job["params"]["hyperparameters"], job["params"]["mmtune"]
    values = {
        "model": job["model"], "data": [str(data)], "val_data": [str(val)] if val else [], "output": str(output),
        "preset": own["preset"], "method": own["method"], "learning_rate": own["learning_rate"],
        "epochs": hyper["n_epochs"], "batch_size": hyper["batch_size"], "max_steps": own["max_steps"],
        "max_length": own["max_length"], "lora_rank": own["lora_rank"], "lora_alpha": own["lora_alpha"],
        "lora_dropout": own["lora_dropout"], "seed": job["seed"], "logging_steps": own["logging_steps"],
        "save_steps": own["save_steps"], "stage": own.get("stage", "sft"),
        **{k: own[k] for k in PREFERENCE_SETTINGS if own.get(k) is not None},
        **tracking_values(job),
    }
    if base is not None:
        values["model"] = str(base)
    return TrainConfig.from_dict(values, f"job {job['id']}")


# a picture job's settings that go to its PictureConfig as they are (the rest are resolved in params.py)
PICTURE_PASSED = ("trigger_word", "repeats", "resolution", "buckets", "lora_dropout", "max_steps", "save_steps",
                  "logging_steps", "warmup_steps", "scheduler", "optimizer", "gradient_checkpointing", "guidance",
                  "timestep_sampling", "max_sequence_length", "sample_prompt", "sample_steps")


def picture_config(job: dict[str, Any], pictures: Path, output: Path):
    """The `mmtune train` config of a picture job (an image-generation model's PictureConfig, validated):
    the unpacked pictures, checked under the hosted (strict) rules."""
    from mmtune.imagegen.config import PictureConfig

    hyper, own = job["params"]["hyperparameters"], job["params"]["mmtune"]
    values = {"model": job["model"], "data": [str(pictures)], "output": str(output), "preset": own["preset"],
              "learning_rate": own["learning_rate"], "epochs": hyper["n_epochs"], "batch_size": hyper["batch_size"],
              "lora_rank": own["lora_rank"], "lora_alpha": own["lora_alpha"], "seed": job["seed"], "rules": "strict",
              **{k: own[k] for k in PICTURE_PASSED if own.get(k) is not None}}
    cfg = PictureConfig(**values)
    cfg.validate()
    return cfg


def tracking_values(job: dict[str, Any]) -> dict[str, Any]:
    """The job's W&B integration as `mmtune train` settings: the run named after the job unless the
    integration names it, tagged as OpenAI tags its runs (with mmtune's names)."""
    for item in job["params"].get("integrations", []):
        w = item["wandb"]
        return {"report_to": ["wandb"], "tracker_project": w["project"], "run_name": w.get("name") or job["id"],
                "tracker_entity": w.get("entity"),
                "tracker_tags": ["mmtune/finetune", f"mmtune/{model_base_name(job['model'])}", f"mmtune/{job['id']}",
                                 *w.get("tags", [])]}
    return {}


def estimate_total_steps(job: dict[str, Any], rows: int) -> int:
    """Optimizer steps of the run: max_steps, else batches per epoch x epochs."""
    own, hyper = job["params"]["mmtune"], job["params"]["hyperparameters"]
    if own["max_steps"]:
        return int(own["max_steps"])
    if is_picture_job(job):  # each picture seen `repeats` times an epoch (a bucket's last batch may add one)
        rows *= int(own["repeats"])
    return max(1, math.ceil(rows / hyper["batch_size"])) * int(hyper["n_epochs"])


def last_checkpoint(output: Path) -> tuple[int, Path] | None:
    found = scan_checkpoints(output)
    if not found:
        return None
    step = max(found)
    return step, output / found[step]


def scan_checkpoints(output: Path) -> dict[int, str]:
    """step -> folder name of each complete checkpoint (the Trainer writes trainer_state.json last; a picture
    run writes its checkpoint aside, state.json included, and renames it into place)."""
    out: dict[int, str] = {}
    if not output.is_dir():
        return out
    for path in output.glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name[len(CHECKPOINT_PREFIX):]
        if step.isdigit() and ((path / "trainer_state.json").is_file() or (path / PICTURE_STATE_FILE).is_file()):
            out[int(step)] = path.name
    return out


def drop_incomplete_checkpoints(output: Path) -> list[str]:
    """Remove checkpoint folders a killed run left half-written (no trainer_state.json, which the
    Trainer writes last): `--resume` takes the highest-numbered folder, complete or not."""
    complete = set(scan_checkpoints(output).values())
    dropped = []
    for path in output.glob(f"{CHECKPOINT_PREFIX}*") if output.is_dir() else []:
        if path.is_dir() and path.name not in complete:
            shutil.rmtree(path, ignore_errors=True)
            dropped.append(path.name)
    return dropped


class MetricsTail:
    """Reads metrics.jsonl again whenever it changes. It is small (one line a logged step), and a
    resumed run rewrites it from the checkpoint's history, which a byte offset would misread."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int] | None = None

    def read(self) -> list[dict[str, Any]] | None:
        """All complete records, or None when the file has not changed since the last read."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        text = self.path.read_bytes().decode("utf-8", "replace")
        records = []
        for line in text.split("\n")[:-1]:  # the last piece is an unfinished line (or empty)
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                records.append(rec)
        return records


def _pdeathsig():
    """A pre-exec hook that makes the child get SIGTERM when the service dies (Linux only)."""
    if sys.platform != "linux":
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the hook only calls it

    def hook() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return hook


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_env() -> dict[str, str]:
    """The service's environment, with this mmtune first on the path (the child runs the same code)."""
    env = dict(os.environ)
    src = str(Path(mmtune.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_process(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the run's process group, SIGKILL after `grace_s`; reaps it."""
    if hasattr(proc, "stop"):  # a run on another executor (jobs/executor.py) stops itself
        proc.stop(grace_s)
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def kill_stale(pid: int | None, marker: str) -> bool:
    """Kill the process group of a training process left by a previous service, if it still runs.

    Only a process whose command line names this job's config is touched (a reused pid is
    someone else's); without /proc (not Linux) nothing is killed."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        return False
    if marker not in cmdline:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.05)
    return True


def log_error(log: Path) -> str:
    """The reason a run failed, from the end of its log: its `error:` line, else its last line."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, io.SEEK_END) - LOG_TAIL_BYTES))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return "no log was written"
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    return lines[-1] if lines else "the log is empty"


def metrics_csv(records: list[dict[str, Any]]) -> bytes:
    """The result file: one row per logged step (OpenAI's step_metrics.csv, plus mmtune's token counts)."""
    cols: tuple[str, ...] = ("step", "train_loss", "valid_loss", "learning_rate", "tokens", "trained_tokens", "epoch")
    if any(k in r for r in records for k in REWARD_KEYS):  # a preference job: its rewards, train and valid
        cols += (*REWARD_KEYS, *(f"valid_{k}" for k in REWARD_KEYS))
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        row = by_step.setdefault(r["step"], {"step": r["step"]})
        row.update({k: v for k, v in _openai_metrics(r).items() if k in cols})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for step in sorted(by_step):
        writer.writerow(by_step[step])
    return buf.getvalue().encode("utf-8")


def _openai_metrics(rec: dict[str, Any]) -> dict[str, Any]:
    out = dict(rec)
    if "loss" in rec:
        out["train_loss"] = rec["loss"]
    if "eval_loss" in rec:
        out["valid_loss"] = rec["eval_loss"]
    if "lr" in rec:
        out["learning_rate"] = rec["lr"]
    for key in REWARD_KEYS:
        if f"eval_{key}" in rec:
            out[f"valid_{key}"] = rec[f"eval_{key}"]
    return out


def rewards_text(rec: dict[str, Any], prefix: str = "") -> str:
    """`, reward accuracy=0.75, margin=0.1234 (chosen=..., rejected=...)` of a preference run's record."""
    got = {k: rec[prefix + k] for k in REWARD_KEYS if isinstance(rec.get(prefix + k), int | float)}
    if "reward_accuracy" not in got:
        return ""
    text = f", reward accuracy={got['reward_accuracy']:.2f}"
    if "reward_margin" in got:
        text += f", margin={got['reward_margin']:.4f}"
    sides = [f"{k[len('reward_'):]}={got[k]:.4f}" for k in ("reward_chosen", "reward_rejected") if k in got]
    return text + (f" ({', '.join(sides)})" if sides else "")


class JobRunner:
    """Runs one claimed job (status `running`) until it ends or the service stops."""

    def __init__(self, service: RunnerHost, job: dict[str, Any], devices: tuple[str, ...] | None = None):
        self.svc = service
        self.devices = devices  # the GPUs this job holds (jobs/gpus.py); () or None: no GPU accounting
        self.store = service.store
        self.job = job
        self.id = job["id"]
        self.output = service.layout.output(self.id)
        self.tail = MetricsTail(self.output / METRICS_FILE)
        self.records: list[dict[str, Any]] = []
        self.last_step = job["last_step"]
        self.last_eval_step = job["last_eval_step"]
        self.known_checkpoints: set[int] | None = None
        self.started = (time.monotonic(), job["last_step"])

    # ------------------------------------------------------------ top level
    def run(self) -> None:
        base = self.merged_base()
        if base is not None and not (base / "config.json").is_file():
            if self.prepare_base(base) != "merged":
                return
        try:
            args = self.command(base)
        except UserError as e:
            self.fail("invalid_config", f"the job's training config is invalid: {e}")
            return
        proc = self.start(args)
        outcome = self.follow(proc)
        self.sync()
        if outcome == "exited":
            self.finish(proc.returncode)

    def merged_base(self) -> Path | None:
        """Where the job's model is merged, when it is a LoRA fine-tune (an earlier job's result), else None."""
        return self.svc.layout.job_dir(self.id) / MERGED_BASE if is_adapter_folder(self.job["model"]) else None

    def prepare_base(self, base: Path) -> str:
        """Merge the LoRA fine-tune the job starts from into `base` (`mmtune merge`, a subprocess followed like
        training; the folder appears whole or not at all). The job then trains a new adapter on that model, so
        a DPO job's reference (its adapter switched off) is the fine-tuned model, as in OpenAI's SFT-then-DPO.
        Returns how the merge ended: "merged", or the job has failed / was cancelled / the service stopped."""
        args = [self.svc.settings.python, "-m", "mmtune.cli", "merge", "--adapter", self.job["model"],
                "--out", str(base)]
        self.svc.layout.job_dir(self.id).mkdir(parents=True, exist_ok=True)
        parent = self.job["params"]["mmtune"].get("parent_model") or self.job["model"]
        self.store.add_event(self.id, "info", f"Merging the LoRA adapter of {parent} into its base: this job "
                             "trains a new adapter on the merged model")
        with open(self.svc.layout.log(self.id), "ab") as log:
            log.write(f"=== merge: {' '.join(args)}\n".encode())
            log.flush()
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.svc.layout.job_dir(self.id), env=self.env(),
                                    start_new_session=True, preexec_fn=_pdeathsig())
        outcome = self.follow(proc)
        if outcome != "exited":
            return outcome
        if proc.returncode != 0 or not (base / "config.json").is_file():
            self.fail("merge_failed", f"merging the fine-tuned model {self.job['model']} failed (exit status "
                      f"{proc.returncode}): {log_error(self.svc.layout.log(self.id))}")
            return "failed"
        return "merged"

    def env(self) -> dict[str, str]:
        """The training process's environment: the service's, and only this job's GPUs visible."""
        env = training_env()
        if self.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.devices)
        return env

    def command(self, base: Path | None = None) -> list[str]:
        files = self.svc.job_file_paths(self.job)
        if is_picture_job(self.job):
            from mmtune.jobs.pictures import unpack

            pictures, _ = unpack(files["training_file"], self.svc.picture_folder(self.id))  # kept from validation
            cfg = picture_config(self.job, pictures, self.output)
        else:
            cfg = train_config(self.job, files["training_file"], files.get("validation_file"), self.output, base)
        folder = self.svc.layout.job_dir(self.id)
        folder.mkdir(parents=True, exist_ok=True)
        config_path = cfg.save(folder)
        args = [self.svc.settings.python, "-m", "mmtune.cli", "train", "--config", str(config_path)]
        gpus = self.job["params"]["mmtune"].get("gpus", 0)
        if gpus > 1:  # one process per GPU (the launcher runs torchrun; a free port per run)
            args += ["--nproc-per-node", str(gpus), "--master-port", str(free_port())]
        drop_incomplete_checkpoints(self.output)
        resume = last_checkpoint(self.output)
        if resume:
            args.append("--resume")
            self.store.add_event(self.id, "info", f"Resuming training from checkpoint at step {resume[0]}",
                                 {"step": resume[0]})
        elif self.output.is_dir() and any(self.output.iterdir()):
            args.append("--overwrite")  # an earlier attempt stopped before its first checkpoint
        return args

    def start(self, args: list[str]) -> subprocess.Popen:
        log_path = self.svc.layout.log(self.id)
        attempt = self.job["attempts"] + 1
        with open(log_path, "ab") as log:
            log.write(f"=== attempt {attempt}: {' '.join(args)}\n".encode())
            log.flush()
        if self.svc.executor is not None:  # e.g. Ray: the same command, on a node with the job's resources
            proc = self.svc.executor.start(self.id, args, self.svc.layout.job_dir(self.id), training_env(),
                                           log_path, gpus=self.job["params"]["mmtune"].get("gpus", 0))
        else:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=self.svc.layout.job_dir(self.id), env=self.env(),
                                        start_new_session=True, preexec_fn=_pdeathsig())
        where = f" on GPU {', '.join(self.devices)}" if self.devices else ""
        self.store.update_job(self.id, pid=proc.pid, attempts=attempt,
                              event=("info", "message", (f"Fine-tuning job started{where}" if attempt == 1 else
                                     f"Fine-tuning job started again{where} (attempt {attempt})"),
                                     {"gpus": list(self.devices)} if self.devices else None))
        return proc

    def follow(self, proc: subprocess.Popen) -> str:
        """Poll until the process exits ("exited"), the job is cancelled or the service stops."""
        while True:
            self.sync()
            if self.svc.stopping.is_set():
                stop_process(proc, self.svc.settings.kill_grace_s)
                self.store.add_event(self.id, "warn", "The service stopped while this job was running; it "
                                     "resumes from its last checkpoint when the service starts again")
                return "stopped"
            status = (self.store.get_job(self.id) or {}).get("status")
            if status != "running":
                stop_process(proc, self.svc.settings.kill_grace_s)
                self.store.update_job(self.id, pid=None, event=("info", "message", "Training process stopped"))
                return "cancelled"
            try:
                proc.wait(timeout=self.svc.settings.poll_interval)
                return "exited"
            except subprocess.TimeoutExpired:
                continue

    # ------------------------------------------------------------ following the run
    def sync(self) -> None:
        """Record new metrics (as events) and the checkpoint folders, each in one transaction."""
        records = self.tail.read()
        if records is not None:
            self.records = records
            self._record_metrics(records)
        found = scan_checkpoints(self.output)
        if set(found) != self.known_checkpoints:
            metrics = {step: (name, self._checkpoint_metrics(step)) for step, name in found.items()}
            new = self.store.sync_checkpoints(self.id, metrics)
            self.known_checkpoints = set(found)
            if is_picture_job(self.job):
                for step in new:
                    self._post_samples(self.output / found[step] / SAMPLES_FOLDER, step)

    def _post_samples(self, folder: Path, step: int, final: bool = False) -> list[dict[str, Any]]:
        """A picture run's sample pictures (one per sample prompt, seed fixed) as result files of the job, and
        one event naming them: `client.files.content(file_id)` downloads each PNG."""
        samples = []
        for png in sorted(folder.glob("sample-*.png"), key=lambda p: int(p.stem.split("-")[1])
                          if p.stem.split("-")[1].isdigit() else 0):
            try:
                content = png.read_bytes()
                prompt = png.with_suffix(".txt").read_text(encoding="utf-8").strip()
            except OSError:  # a checkpoint rotated away meanwhile: its samples are gone with it
                continue
            name = png.name if final else f"step-{step}-{png.name}"
            samples.append({"file_id": self.svc.add_result_file(self.id, content, name), "filename": name,
                            "prompt": prompt, "step": step})
        if samples:
            what = "the fine-tuned model" if final else f"the checkpoint at step {step}"
            prompts = "; ".join(repr(s["prompt"]) for s in samples)
            self.store.add_event(self.id, "info", f"Sample pictures of {what}: {prompts} (files "
                                 f"{', '.join(s['file_id'] for s in samples)})", {"step": step, "samples": samples})
        return samples

    def _record_metrics(self, records: list[dict[str, Any]]) -> None:
        total = self.job.get("total_steps")
        new: list[tuple[str, dict[str, Any]]] = []
        for rec in records:
            step = rec["step"]
            data = {**_openai_metrics(rec), "total_steps": total}
            if "loss" in rec and step > self.last_step:
                new.append((f"Step {step}/{total or '?'}: training loss={rec['loss']:.4f}{rewards_text(rec)}", data))
                self.last_step = step
            if "eval_loss" in rec and step > self.last_eval_step:
                new.append((f"Step {step}/{total or '?'}: validation loss={rec['eval_loss']:.4f}"
                            f"{rewards_text(rec, 'eval_')}", data))
                self.last_eval_step = step
        if not new:
            return
        tokens = next((r["trained_tokens"] for r in reversed(records) if "trained_tokens" in r), None)
        self.store.add_metrics(self.id, new, self.last_step, self.last_eval_step, trained_tokens=tokens,
                               estimated_finish=self._estimated_finish(total))

    def _estimated_finish(self, total: int | None) -> int | None:
        t0, step0 = self.started
        done = self.last_step - step0
        if not total or done <= 0:
            return None
        per_step = (time.monotonic() - t0) / done
        return now() + int(per_step * max(0, total - self.last_step))

    def _checkpoint_metrics(self, step: int) -> dict[str, Any]:
        out: dict[str, Any] = {"step": step}
        for rec in self.records:
            if rec["step"] == step:
                if "loss" in rec:
                    out["train_loss"] = rec["loss"]
                if "eval_loss" in rec:
                    out["valid_loss"] = rec["eval_loss"]
        return out

    # ------------------------------------------------------------ endings
    def finish(self, returncode: int) -> None:
        summary_path = self.output / SUMMARY_FILE
        if returncode == 0 and summary_path.is_file():
            self.succeed(json.loads(summary_path.read_text(encoding="utf-8")))
        elif returncode < 0:
            self.fail("training_killed", f"the training process was killed by signal {-returncode} (out of "
                      f"memory?); its log is {self.svc.layout.log(self.id)}")
        else:
            self.fail("training_failed", f"training failed (exit status {returncode}): "
                      f"{log_error(self.svc.layout.log(self.id))} (log: {self.svc.layout.log(self.id)})")

    def succeed(self, summary: dict[str, Any]) -> None:
        tokens = int(summary.get("trained_tokens") or 0)
        cost = round(tokens / 1e6 * self.svc.settings.price_per_million_tokens, 6)
        name = fine_tuned_model_name(self.job)
        result = self.svc.add_result_file(self.id, metrics_csv(self.records))
        results = [result]
        if is_picture_job(self.job):
            results += [s["file_id"] for s in self._post_samples(self.output / SAMPLES_FOLDER,
                                                                  int(summary.get("steps") or self.last_step),
                                                                  final=True)]
        self.store.add_event(self.id, "info", f"New fine-tuned model created: {name}",
                             {"fine_tuned_model": name, "trained_tokens": tokens, "estimated_cost": cost,
                              "final_train_loss": summary.get("final_train_loss"),
                              "final_valid_loss": summary.get("final_eval_loss")})
        done = self.store.update_job(
            self.id, when=("running",), status="succeeded", fine_tuned_model=name, trained_tokens=tokens,
            estimated_cost=cost, finished_at=now(), estimated_finish=None, pid=None, result_files=results,
            event=("info", "message", "The job has successfully completed"))
        if done:
            self.svc.notify_success(self.store.get_job(self.id), self.output)

    def fail(self, code: str, message: str) -> None:
        self.store.update_job(self.id, when=("running",), status="failed", finished_at=now(), pid=None,
                              estimated_finish=None, error={"code": code, "message": message, "param": None},
                              event=("error", "message", f"Job failed: {message}"))
