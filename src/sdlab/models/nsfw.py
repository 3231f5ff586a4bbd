"""LAION's CLIP-based NSFW detector on L2-normalised CLIP image embeddings, in the layout of its
PyTorch port (the detector is published as an Autokeras model; ports convert it to a state dict):
`category_mapper`, `mean`, `std` of shape (1, D); `linear_1` (H, D), `linear_2` (H, H),
`linear_3` (1, H); the score is sigmoid(linear_3(relu(linear_2(relu(linear_1((x * category_mapper
- mean) / std)))))), the probability that the image is NSFW. D and H are read from the file
(the ViT-B/32 port has D 512, H 32), which the user points to (`dedupe.nsfw_weights`), read with
`weights_only`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sdlab.errors import ConfigError

KEYS = {"category_mapper", "mean", "std", *(f"linear_{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias"))}


class NsfwHead(torch.nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.register_buffer("category_mapper", torch.ones(1, dim))
        self.register_buffer("mean", torch.zeros(1, dim))
        self.register_buffer("std", torch.ones(1, dim))
        self.linear_1 = torch.nn.Linear(dim, hidden)
        self.linear_2 = torch.nn.Linear(hidden, hidden)
        self.linear_3 = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * self.category_mapper - self.mean) / self.std
        x = torch.relu(self.linear_2(torch.relu(self.linear_1(x))))
        return torch.sigmoid(self.linear_3(x))[:, 0]


def load_nsfw(path: str | Path, dim: int) -> NsfwHead:
    """The detector from its state dict; another layout or width is a ConfigError naming the file."""
    if not Path(path).is_file():
        raise ConfigError(f"dedupe.nsfw_weights: file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    if set(state) != KEYS or state["linear_1.weight"].shape[1] != dim:
        raise ConfigError(
            f"dedupe.nsfw_weights: {path} is not the NSFW detector's port for {dim}-d embeddings "
            f"(embed.model's width): keys {sorted(state)[:4]}..."
        )
    model = NsfwHead(dim, state["linear_1.weight"].shape[0])
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def nsfw_scores(model: NsfwHead, embeddings: np.ndarray) -> np.ndarray:
    """float32 NSFW probability per row of unit image embeddings."""
    return model(torch.from_numpy(np.asarray(embeddings, np.float32))).numpy()
