"""Names of what the exported pipeline folder holds beside diffusers' own layout; a module of
its own so the model card can name them without importing diffusers."""

LORA_FOLDER = "lora"
KOHYA_LORA = "lora_kohya.safetensors"  # the same adapters, keys as kohya's sd-scripts name them
SINGLE_FILE = "sdlab.safetensors"  # the whole model in the original Stable Diffusion layout
