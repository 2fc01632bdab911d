"""Image-generation LoRA (FLUX) on diffusers + PEFT: picture data -> train -> generate / merge."""
