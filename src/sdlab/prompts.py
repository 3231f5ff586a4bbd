"""The default Qwen2.5-VL instruction (kept free of heavy imports: the config reads it)."""

DEFAULT_PROMPT = (
    "This is a Discord emoji named '{title}'. Describe it in one sentence of exactly this form: "
    "'{title} emoji with a {head shape}, {eyes} eyes, {mouth} mouth, {expression} expression, "
    "{skin color} skin color, {action}, with a {background} background.' "
    "For example: 'blobhappy emoji with a round head, dot eyes, smiling mouth, happy expression, "
    "yellow skin color, no action, with a white background.' Answer with the sentence only."
)
