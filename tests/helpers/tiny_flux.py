"""The tiny random FLUX pipeline the tests train (built from configs, nothing downloaded): mmtune.imagegen.tiny."""

from mmtune.imagegen.tiny import MAX_T5_TOKENS, TEXT_DIM, save_tiny_flux, tiny_flux_pipeline  # noqa: F401
