"""llama.cpp itself, through llama-cpp-python: load a GGUF file, K-quantise one, decode greedily.

llama-cpp-python is an optional extra (`pip install 'mmtune[gguf]'`; it builds llama.cpp from
source). Nothing here re-implements llama.cpp: quantisation is its `llama_model_quantize`, the
tokens come from its own tokenizer and logits, and what ends a turn is its own end-of-generation
test (`llama_vocab_is_eog`) on the file's vocabulary.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from mmtune.errors import UserError

INSTALL_HINT = "pip install 'mmtune[gguf]' (or: pip install llama-cpp-python; it builds llama.cpp, ~10 min)"


def available() -> bool:
    """Whether llama-cpp-python is installed (without importing it: that loads the library)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def require_llama_cpp(what: str):
    """The `llama_cpp` module, or a UserError saying how to install it for `what`."""
    if not available():
        raise UserError(
            f"{what} needs llama.cpp through llama-cpp-python, which is not installed: {INSTALL_HINT}"
        )
    import llama_cpp

    return llama_cpp


_QUANT_FTYPES = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}


def quantize(source: Path, out: Path, dtype: str, threads: int | None = None) -> Path:
    """`source` (an f16/bf16/f32 GGUF) quantised by llama.cpp's own quantiser into `out`."""
    llama_cpp = require_llama_cpp(f"--dtype {dtype}")
    if dtype not in _QUANT_FTYPES:
        raise UserError(f"llama.cpp quantisation here is for {', '.join(_QUANT_FTYPES)}, not {dtype!r}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _QUANT_FTYPES[dtype])
    params.nthread = threads or os.cpu_count() or 1
    with quiet_native():
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0 or not Path(out).is_file():
        raise UserError(f"llama.cpp could not quantise {source} to {dtype} (status {status})")
    return Path(out)


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Silence what the C library prints on stderr (load and quantise logs), unless MMTUNE_DEBUG."""
    if os.environ.get("MMTUNE_DEBUG"):
        yield
        return
    try:
        fd = os.dup(2)
    except OSError:  # no real stderr (embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(fd, 2)
    finally:
        os.close(fd)


def load(path: str | Path, *, n_ctx: int = 2048, threads: int | None = None):
    """A llama_cpp.Llama over the file (CPU, logits of every position kept for greedy checks).

    Weight repacking into llama.cpp's "extra" CPU buffers (AMX tiles, interleaved Q4_0/Q8_0) is
    off: on CPUs that report AMX where the kernel does not grant it (containers, some VMs) its
    matmul crashes the process, and a correctness check needs no speed-up.
    """
    llama_cpp = require_llama_cpp("loading a GGUF file")
    with quiet_native(), _no_weight_repacking(llama_cpp):
        try:
            return llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads or os.cpu_count() or 1,
                logits_all=True,
                verbose=bool(os.environ.get("MMTUNE_DEBUG")),
            )
        except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
            raise UserError(
                f"llama.cpp refuses {path}: {e}. Run with MMTUNE_DEBUG=1 to see llama.cpp's own reason"
            ) from e


_patch_lock = threading.Lock()


@contextlib.contextmanager
def _no_weight_repacking(llama_cpp) -> Iterator[None]:
    """Llama() reads its model parameters from llama_model_default_params(): hand it ones with
    use_extra_bufts off while one Llama is built (the module attribute is restored after)."""
    low = llama_cpp.llama_cpp
    original = low.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = False
        return p

    with _patch_lock:
        low.llama_model_default_params = params
        try:
            yield
        finally:
            low.llama_model_default_params = original


def is_end(llm, token: int) -> bool:
    """llama.cpp's own end-of-generation test (EOS, end of turn...) for this file's vocabulary."""
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token))


def greedy(llm, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of `prompt` (token ids) by llama.cpp: argmax of its logits each step,
    until an end-of-generation token (included) or `max_new_tokens`."""
    import numpy as np

    llm.reset()
    llm.eval(list(prompt))
    out: list[int] = []
    while len(out) < max_new_tokens:
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if is_end(llm, token):
            break
        llm.eval([token])
    return out


def forced_argmax(llm, prompt: Sequence[int], answer: Sequence[int]) -> list[int]:
    """llama.cpp's argmax at each answer position with the reference answer fed in (teacher forcing):
    position i is its choice after prompt + answer[:i]."""
    import numpy as np

    llm.reset()
    llm.eval(list(prompt) + list(answer[:-1]) if answer else list(prompt))
    start = len(prompt) - 1
    return [int(np.argmax(llm.scores[start + i])) for i in range(len(answer))]


def tokenize(llm, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
    """Token ids of `text` by the file's own tokenizer (special tokens parsed when `special`)."""
    return list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))
