"""LAION's watermark detector (github.com/LAION-AI/LAION-5B-WatermarkDetection, the model behind
LAION-5B's `pwatermark` column): timm's EfficientNet-B3 on the image's pixels, its classifier
replaced by 1536 → 625 → 256 → 2 (ReLU, dropout 0.3 after the first); an image resized to
256 × 256, ImageNet-normalised; the watermark probability is softmax(logits)[0] (class 0 is
"watermark", class 1 "clear", as its example_use.py reads them). The weights are
`watermark_model_v1.pt` (a state dict, read with `weights_only`), a file the user points to
(`embed.watermark_weights`). Unlike the CLIP heads it needs the pixels, so it runs in the
embed pass beside CLIP, and its score lands in the embed files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sdlab.errors import ConfigError

ARCHITECTURE = "efficientnet_b3"  # the example's `efficientnet_b3a`: the same network, timm's older name
SIZE = 256
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def watermark_model() -> torch.nn.Module:
    """The detector's layout, random weights, so its state dict loads key for key."""
    import timm

    model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=2)
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(model.num_features, 625),
        torch.nn.ReLU(),
        torch.nn.Dropout(p=0.3),
        torch.nn.Linear(625, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 2),
    )
    return model


def load_watermark(path: str | Path) -> torch.nn.Module:
    """The detector from its state dict; another layout is a ConfigError naming the file."""
    if not Path(path).is_file():
        raise ConfigError(f"embed.watermark_weights: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"embed.watermark_weights: {path} is not a PyTorch state dict: {exc}") from exc
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    model = watermark_model()
    if not isinstance(state, dict) or set(state) != set(model.state_dict()):
        keys = sorted(state)[:4] if isinstance(state, dict) else type(state).__name__
        raise ConfigError(
            f"embed.watermark_weights: {path} is not LAION's watermark detector "
            f"({ARCHITECTURE} with a 625 → 256 → 2 classifier): keys {keys}..."
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # the keys match, a shape does not
        raise ConfigError(f"embed.watermark_weights: {path}: {str(exc).splitlines()[0]}") from exc
    return model.eval()


def preprocess(images: list) -> torch.Tensor:
    """The detector's input batch from RGB PIL images: resize to 256 × 256, normalise."""
    from torchvision import transforms

    recipe = transforms.Compose(
        [transforms.Resize((SIZE, SIZE)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    return torch.stack([recipe(image) for image in images])


@torch.no_grad()
def watermark_scores(model: torch.nn.Module, images: list, batch_size: int, device, dtype) -> np.ndarray:
    """float32 watermark probability of each RGB PIL image, `batch_size` at a time."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start : start + batch_size]).to(device, dtype)
        out.append(torch.softmax(model(batch).float(), dim=1)[:, 0].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)
