"""`mmtune chat`: talk to a model (base, adapter or merged) in the terminal, streaming."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal (streaming, multi-turn)",
        description="Interactive chat: tokens appear as they are generated; the conversation is kept. "
        "Commands: /clear, /system TEXT, /exit; with a vision-language model also /image PATH (and /video PATH "
        "for models that take video), which attach media to your next message. Ctrl-C stops the current answer.",
        epilog="examples:\n  mmtune chat\n  mmtune chat runs/demo --temperature 0\n"
        "  mmtune chat runs/demo-merged --system 'Answer in French.'\n"
        "  mmtune chat qwen2-vl-2b-instruct      then: /image photo.jpg  and ask about it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument("--system", default=None, help="system prompt (default: none)")
    p.add_argument("--tools", default=None, metavar="FILE",
                   help="a JSON file with a list of OpenAI tool definitions the model may call; its calls are "
                   "shown as [tool call] lines (default: none)")
    add_generation_arguments(p)
    p.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 on a GPU, else fp32)")
    add_remote_media_argument(p)
    add_media_size_arguments(p)
    p.set_defaults(func=run, _parser=p)


def add_remote_media_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-remote-media",
        action="store_true",
        help="let prompts refer to images/videos by http(s) URL, downloaded when used "
        "(default: off; local files and data: URLs only)",
    )


def add_media_size_arguments(p: argparse.ArgumentParser, server: bool = False) -> None:
    """--max-pixels/--min-pixels/--video-fps/--video-frames, as training has them (chat, infer, serve)."""
    where = ("; models that resize to a fixed size are left as they are" if server
             else "; an error on models that resize to a fixed size")
    g = p.add_argument_group("image and video size (vision-language models)")
    g.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="largest image/video-frame area after resizing, on models that resize by area (Qwen2-VL "
                   f"family): fewer media tokens, less memory, e.g. 401408 = 512 x 28 x 28{where} "
                   "(default: the processor's, or what training saved)")
    g.add_argument("--min-pixels", type=int, default=None, metavar="N",
                   help="smallest image area after resizing, same models (default: the processor's)")
    g.add_argument("--video-fps", type=float, default=None, metavar="FPS",
                   help="frames sampled per second of video (default: 2)")
    g.add_argument("--video-frames", type=int, default=None, metavar="N",
                   help="this many frames, evenly spread over the video, instead of --video-fps")


def media_sizes(args: argparse.Namespace):
    """The MediaSizes of the flags above (a UserError names the bad one)."""
    from mmtune.infer.media import MediaSizes

    return MediaSizes(max_pixels=args.max_pixels, min_pixels=args.min_pixels, video_fps=args.video_fps,
                      video_frames=args.video_frames)


def add_model_argument(p: argparse.ArgumentParser) -> None:
    """The optional MODEL positional that chat and infer share."""
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="registry name, hub id, model folder, .gguf file or training output folder "
        "(default: the embedded smollm2-135m-instruct)",
    )


def add_generation_arguments(
    p: argparse.ArgumentParser, max_new_tokens: int = 512, temperature: float = 0.7
) -> None:
    """Generation flags shared by `chat` and `infer`."""
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_tokens,
        help=f"longest answer in tokens (default: {max_new_tokens})",
    )
    p.add_argument(
        "--temperature", type=float, default=temperature, help=f"0 = greedy (default: {temperature})"
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0 = off)")
    p.add_argument(
        "--top-k", type=int, default=0, help="sample from the k likeliest tokens (default: 0 = off)"
    )
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="(default: 1.0 = off)")
    p.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="stop when this text appears (repeatable; default: none)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling (default: random)")


def generation_options(args: argparse.Namespace) -> dict:
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "stop": args.stop,
        "seed": args.seed,
    }


def run(args: argparse.Namespace) -> int:
    from mmtune.commands.preflight import check_model_arg

    check_model_arg(args.model)  # a mistake in seconds, before torch is imported
    from mmtune.infer.chat import ChatSession, repl
    from mmtune.infer.engine import Engine
    from mmtune.infer.media import MediaPolicy
    from mmtune.infer.options import make_options

    gen = generation_options(args)
    make_options(**gen)  # a bad flag fails before the model loads
    tools = read_tools(args.tools) if getattr(args, "tools", None) else None
    sizes = media_sizes(args)
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # pragma: no cover - Windows
        pass
    print(f"loading {args.model or 'the default model'} ...", file=sys.stderr, flush=True)
    media = MediaPolicy(allow_remote=args.allow_remote_media)
    engine = Engine(args.model, dtype=args.dtype, media=media, sizes=sizes)
    session = ChatSession(system=args.system, vision=engine.is_vision, video=engine.takes_video, media=media,
                          tools=tools)
    return repl(engine, gen, session)


def read_tools(path: str) -> list[dict]:
    """The tool definitions in a JSON file (a list of OpenAI `{"type": "function", "function": {...}}`)."""
    import json
    from pathlib import Path

    from mmtune.errors import UserError

    try:
        tools = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"--tools {path}: cannot read it as JSON ({e})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("function"), dict)
                                              and t["function"].get("name") for t in tools):
        raise UserError(f'--tools {path}: must be a JSON list of {{"type": "function", "function": {{"name": ..., '
                        '"parameters": {...}}}} objects')
    return tools
