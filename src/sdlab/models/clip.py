"""CLIP from a hub id or a local folder, with embeddings as plain tensors."""

from __future__ import annotations

import torch


class PooledCLIP(torch.nn.Module):
    """A CLIPModel whose get_image_features/get_text_features return tensors.

    transformers 5 returns `BaseModelOutputWithPooling` from both (the projected embedding
    is its `pooler_output`), which breaks torchmetrics' CLIPScore (`.norm` on the output)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    @staticmethod
    def _tensor(output):
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def load_clip(model_name_or_path: str) -> tuple[PooledCLIP, object]:
    """(model in eval mode, its CLIPProcessor), both by `from_pretrained`."""
    from transformers import CLIPModel, CLIPProcessor

    return (
        PooledCLIP(CLIPModel.from_pretrained(model_name_or_path).eval()),
        CLIPProcessor.from_pretrained(model_name_or_path),
    )
