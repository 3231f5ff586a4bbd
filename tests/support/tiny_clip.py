"""A tiny random CLIP config built offline around sdlab's packaged MiniLM tokenizer."""

from __future__ import annotations

from transformers import CLIPConfig


def tiny_clip_config(tokenizer, projection_dim: int = 16) -> CLIPConfig:
    """32-wide, one layer per tower, 32 px images. CLIP pools the text at the end-of-text id:
    it is the tokenizer's own [SEP], so each prompt pools its last position (with CLIP's causal
    mask, the one that has read the whole prompt); CLIP's default id lies outside this vocabulary
    and would pool position 0 for every prompt."""
    return CLIPConfig(
        text_config=dict(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            eos_token_id=tokenizer.sep_token_id,
            bos_token_id=tokenizer.cls_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
        projection_dim=projection_dim,
    )
