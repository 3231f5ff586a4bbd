"""LAION's aesthetic predictor: the MLP that scores L2-normalised CLIP image embeddings
(improved-aesthetic-predictor, `sac+logos+ava1-l14-linearMSE.pth` on ViT-L/14's 768-d
embeddings; its scores run about 1-10, LAION-Aesthetics kept >= 5 / 6 / 6.5). The weights
are a file the user points to (`dedupe.aesthetic_weights`), read with `weights_only`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sdlab.errors import ConfigError

WIDTHS = (1024, 128, 64, 16, 1)  # Linear layers at indices 0, 2, 4, 6, 7 (dropouts between the first four)


def aesthetic_mlp(dim: int) -> torch.nn.Sequential:
    """The predictor's layout, so its state dict loads key for key."""
    return torch.nn.Sequential(
        torch.nn.Linear(dim, 1024),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(1024, 128),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 16),
        torch.nn.Linear(16, 1),
    )


def load_aesthetic(path: str | Path, dim: int) -> torch.nn.Sequential:
    """The predictor from its state dict (`layers.N.weight` keys, as published); a file of another
    layout or width is a ConfigError naming it."""
    if not Path(path).is_file():
        raise ConfigError(f"dedupe.aesthetic_weights: file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k.removeprefix("layers."): v for k, v in state.items()}
    model = aesthetic_mlp(dim)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"dedupe.aesthetic_weights: {path} is not the aesthetic MLP for {dim}-d embeddings "
            f"(embed.model's width): {str(exc).splitlines()[0]}"
        ) from exc
    return model.eval()


@torch.no_grad()
def aesthetic_scores(model: torch.nn.Sequential, embeddings: np.ndarray) -> np.ndarray:
    """float32 score per row of unit image embeddings."""
    return model(torch.from_numpy(np.asarray(embeddings, np.float32)))[:, 0].numpy()
