"""A small CNN that reads synthetic-blob attributes off images, to judge prompt adherence.

It is trained on the real train images at evaluation time (seeded, so the same data gives
the same judge) and scored on the real val images, so the judge is itself checked. Its
penultimate features also serve as a clearly named substitute feature extractor for
FID/KID where the standard Inception weights are not available.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sdlab.models.vae import to_tensor
from sdlab.sources.synthetic import ACTIONS, EXPRESSIONS, EYES, HEAD_SHAPES, MOUTHS

CLASSES: dict[str, tuple[str, ...]] = {
    "expression": EXPRESSIONS,
    "eyes": EYES,
    "mouth": MOUTHS,
    "head_shape": HEAD_SHAPES,
    "action": ACTIONS,
}


class AttributeClassifier(nn.Module):
    """Conv trunk -> 128-d features -> one linear head per attribute."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.GroupNorm(8, cout),
                nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.GroupNorm(8, cout),
                nn.SiLU(),
                nn.MaxPool2d(2),
            )

        # the 4x4 map is flattened, not averaged: where a stroke is (brow above the eye, arc
        # opening up or down) is what tells the classes apart
        self.trunk = nn.Sequential(
            block(3, width),
            block(width, 2 * width),
            block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(16 * 4 * width, 128),
            nn.SiLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(128, len(values)) for name, values in CLASSES.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) floats in [-1, 1] -> (N, 128)."""
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}


def labels(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor([values.index(row[name]) for row in rows]) for name, values in CLASSES.items()}


def train_classifier(
    images: np.ndarray, rows: list[dict], steps: int, seed: int, batch_size: int = 128, lr: float = 2e-3
) -> AttributeClassifier:
    """Fit the classifier on real images (light flips/shifts keep it from memorising pixels)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = AttributeClassifier()
    x, y = to_tensor(images), labels(rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    model.train()
    for _ in tqdm(range(steps), desc="judge", unit="step"):
        ids = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
        shift = tuple(int(v) for v in torch.randint(-1, 2, (2,), generator=generator))
        batch = torch.roll(x[ids], shifts=shift, dims=(2, 3))
        logits = model(batch)
        loss = sum(F.cross_entropy(logits[name], y[name][ids]) for name in CLASSES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def predict(model: AttributeClassifier, images: np.ndarray, batch_size: int = 256) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {name: [] for name in CLASSES}
    for start in range(0, len(images), batch_size):
        logits = model(to_tensor(images[start : start + batch_size]))
        for name, values in CLASSES.items():
            out[name] += [values[i] for i in logits[name].argmax(1).tolist()]
    return out


def accuracy(model: AttributeClassifier, images: np.ndarray, rows: list[dict]) -> dict[str, float]:
    """Per attribute, the fraction of images whose predicted value is the row's."""
    predicted = predict(model, images)
    return {
        name: float(np.mean([p == row[name] for p, row in zip(predicted[name], rows, strict=True)])) if rows else 0.0
        for name in CLASSES
    }


class FeatureExtractor(nn.Module):
    """uint8 (N, 3, H, W) -> (N, 128) features, the `feature=` module torchmetrics FID/KID take."""

    def __init__(self, model: AttributeClassifier):
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images.float().div(127.5).sub(1.0))
