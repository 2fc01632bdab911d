"""`mmtune export`: write a model (or a training run, merged on the way) as a GGUF file, then check
that llama.cpp loads it and answers like the model it came from."""

from __future__ import annotations

import argparse
from pathlib import Path

DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "q4_k_m", "q5_k_m", "q6_k")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model or training run to GGUF (llama.cpp, Ollama, LM Studio), checked in llama.cpp",
        description="Write a model as GGUF, following llama.cpp's converter (tensor names, Q/K permutation, "
        "gpt2 BPE tokenizer with llama.cpp's pre-tokenizer name, chat template, end-of-turn token). An adapter "
        "folder is merged into its base first. Families: Llama (SmolLM2, Llama 3.x), Mistral, Qwen2/2.5, "
        "Qwen3, Gemma 2, Gemma 3 (text), Phi-3. Afterwards the file is loaded in llama.cpp and its greedy "
        "answers to a few prompts (the run's validation prompts when it has them) are compared with the "
        "source model's: identical for f32/f16, token agreement for the other types (needs llama-cpp-python).",
        epilog="examples:\n  mmtune export runs/demo --format gguf --out demo-f16.gguf\n"
        "  mmtune export runs/demo --dtype Q4_K_M --out demo-q4_k_m.gguf --ollama   # + Modelfile\n"
        "  mmtune export runs/demo-merged --dtype q8_0 --out demo-q8_0.gguf --no-verify\n"
        "  mmtune export runs/tok --format kohya --out tok-kohya.safetensors   # a picture run, for ComfyUI",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="model folder, registry name, .gguf file or training output folder")
    p.add_argument("--format", default="gguf", choices=["gguf", "kohya"],
                   help="output format (default: gguf); kohya: a picture run's LoRA with the key names of kohya's "
                   "sd-scripts that ComfyUI and Forge load (lora_unet_..., .lora_down/.lora_up/.alpha)")
    p.add_argument(
        "--dtype",
        default="f16",
        type=str.lower,
        choices=DTYPES,
        help="weight type (any case): f32 f16 bf16 q8_0 q4_0 q5_0 written by gguf-py; q4_k_m q5_k_m q6_k "
        "by llama.cpp's own quantiser (needs llama-cpp-python); norms stay f32 (default: f16)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="output file, e.g. model-f16.gguf")
    p.add_argument(
        "--pre-tokenizer",
        metavar="NAME",
        help="llama.cpp's pre-tokenizer name, only for a tokenizer llama.cpp's table does not identify "
        "(the export stops and says so); the check then proves the choice tokenizes like the source",
    )
    p.add_argument(
        "--ollama", action="store_true", help="also write an Ollama Modelfile beside the file (ollama create)"
    )
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the llama.cpp check")
    add_check_args(p)
    p.set_defaults(func=run, _parser=p)


def add_check_args(p) -> None:
    p.add_argument(
        "--max-new-tokens", type=int, default=32, help="tokens per greedy answer compared (default: 32)"
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=0.75,
        help="token agreement a quantised file must reach, 0-1 (default: 0.75)",
    )


def run(args: argparse.Namespace) -> int:
    from mmtune.commands.preflight import check_model_arg, check_output_file

    if args.format == "kohya":
        return run_kohya(args)

    check_model_arg(args.model)
    check_output_file(args.out, "--out", inputs=(args.model,), example="model-f16.gguf")
    from mmtune.export.gguf import export_gguf

    out = export_gguf(args.model, args.out, dtype=args.dtype, pre_tokenizer=args.pre_tokenizer)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    if args.ollama:
        from mmtune.export.ollama import write_modelfile

        modelfile = write_modelfile(out, _tokenizer(args.model), context_length=_context(out))
        print(f"wrote {modelfile}: ollama create NAME -f {modelfile}")
    if not args.verify:
        return 0
    from mmtune.export import llamacpp

    if not llamacpp.available():
        print(f"not checked in llama.cpp: llama-cpp-python is not installed ({llamacpp.INSTALL_HINT})")
        return 0
    return check(args.model, str(out), args)


def run_kohya(args: argparse.Namespace) -> int:
    from mmtune.errors import UserError
    from mmtune.imagegen.run import read_run

    if read_run(args.model) is None and read_run(Path(args.model).parent) is None:
        raise UserError(f"--format kohya writes a picture LoRA: {args.model} is not a picture run (or its "
                        "checkpoint-N/)")
    if not args.out.endswith(".safetensors"):
        raise UserError(f"--out {args.out}: a kohya LoRA is a .safetensors file (e.g. tok-kohya.safetensors)")
    from mmtune.imagegen.kohya import export_kohya

    out = export_kohya(args.model, args.out)
    print(f"wrote {out} (kohya / ComfyUI key names; load it as a LoRA in ComfyUI's LoraLoader or diffusers' "
          "load_lora_weights)")
    return 0


def check(source: str, target: str, args: argparse.Namespace) -> int:
    from mmtune.export.verify import verify

    report = verify(source, target, max_new_tokens=args.max_new_tokens, min_agreement=args.min_agreement)
    print(report.summary())
    if not report.ok:
        print(f"{target} is kept for inspection; it does not answer like {source} (exit status 1)")
    return 0 if report.ok else 1


def _tokenizer(model: str):
    from transformers import AutoTokenizer

    from mmtune.infer.artifacts import adapter_base, is_adapter_dir
    from mmtune.models.loader import load_tokenizer

    if is_adapter_dir(model):
        try:
            return AutoTokenizer.from_pretrained(model)
        except OSError:
            return load_tokenizer(adapter_base(model))
    return load_tokenizer(model)


def _context(path) -> int | None:
    from mmtune.export.gguf_header import read_metadata

    meta = read_metadata(path)  # the header's scalars, one pass (the key's name depends on the architecture)
    value = meta.get(f"{meta.get('general.architecture')}.context_length")
    return int(value) if value is not None else None
