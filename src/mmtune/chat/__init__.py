"""Chat rendering pieces that training and inference share (no torch, no transformers at import)."""
