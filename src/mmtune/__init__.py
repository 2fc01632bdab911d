"""mmtune: fine-tune text LLMs and vision-language models on your own data, end to end.

Heavy pieces (torch, transformers) are imported lazily so that `mmtune --help` and
`mmtune data check` start fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "Engine"]


def __getattr__(name):  # lazy: `from mmtune import Engine` imports torch only when asked
    if name == "Engine":
        from mmtune.infer.engine import Engine

        return Engine
    raise AttributeError(name)
