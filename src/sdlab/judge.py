"""The judges of the synthetic blobs' attributes, for prompt adherence: one module.

- skin color: read from the pixels (palette votes over the foreground, ink excluded);
- head shape, expression, eyes, mouth, action: a small CNN trained at evaluation time on the
  real train images (and their VAE reconstructions), seeded, so the same data gives the same
  judge. A silhouette rule for head shape did not survive the VAE's blur (0.65 on
  reconstructions of real images; the classifier 1.00).

`judge_samples` scores generated images against the rows that prompted them and scores every
judge on the real val images too, so a judge that cannot read an attribute shows in the
report. The CNN's penultimate features also serve as a clearly named substitute feature
extractor for FID/KID where the standard Inception weights are not available.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sdlab.distribution import fid_kid, reconstruct
from sdlab.models.vae import to_tensor
from sdlab.sources.synthetic import (
    ACTIONS,
    ATTRIBUTE_VALUES,
    EXPRESSIONS,
    EYES,
    HEAD_SHAPES,
    MOUTHS,
    SKIN_COLORS,
)

# -- the pixel judge: skin color ------------------------------------------------------------

_PALETTE_NAMES = list(SKIN_COLORS)
_PALETTE = np.array([SKIN_COLORS[name] for name in _PALETTE_NAMES], dtype=np.float32)  # (K, 3)


def foreground_mask(image: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """(H, W) bool: pixels that differ from the white background."""
    return (255.0 - image.astype(np.float32)).sum(-1) > threshold


def dominant_skin_color(image: np.ndarray) -> str:
    """Name of the palette color most foreground pixels are closest to (ink excluded)."""
    pixels = image.reshape(-1, 3).astype(np.float32)[foreground_mask(image).reshape(-1)]
    pixels = pixels[pixels.max(-1) > 70]  # drop dark ink (eyes, mouth)
    if len(pixels) == 0:
        return "none"
    distances = ((pixels[:, None, :] - _PALETTE[None]) ** 2).sum(-1)  # (P, K)
    votes = np.bincount(distances.argmin(1), minlength=len(_PALETTE_NAMES))
    return _PALETTE_NAMES[int(votes.argmax())]


JUDGES = {"skin_color": dominant_skin_color}  # the rest: read by the classifier below, robust to VAE blur


def adherence(images: np.ndarray, rows: list[dict]) -> dict[str, float]:
    """Per attribute, the fraction of images whose judged value matches the row's."""
    scores = {}
    for attribute, judge in JUDGES.items():
        hits = [judge(image) == row[attribute] for image, row in zip(images, rows, strict=True)]
        scores[attribute] = float(np.mean(hits)) if hits else 0.0
    return scores


# -- the classifier: head shape, expression, eyes, mouth, action -----------------------------

CLASSES: dict[str, tuple[str, ...]] = {
    "expression": EXPRESSIONS,
    "eyes": EYES,
    "mouth": MOUTHS,
    "head_shape": HEAD_SHAPES,
    "action": ACTIONS,
}


class AttributeClassifier(nn.Module):
    """Conv trunk -> 128-d features -> one linear head per attribute (`classes`: attribute ->
    its values; the blob attributes by default, any labelled columns for `sdlab.label_judge`)."""

    def __init__(self, width: int = 32, classes: dict[str, tuple[str, ...]] | None = None):
        super().__init__()
        self.classes = CLASSES if classes is None else classes

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
        self.heads = nn.ModuleDict({name: nn.Linear(128, len(values)) for name, values in self.classes.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) floats in [-1, 1] -> (N, 128)."""
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}


UNLABELLED = -100  # a row without a value for a head: cross_entropy's ignore_index


def labels(rows: list[dict], classes: dict[str, tuple[str, ...]] = CLASSES) -> dict[str, torch.Tensor]:
    """Per head, each row's class index (UNLABELLED where the row's value is None)."""
    index = {name: {value: i for i, value in enumerate(values)} for name, values in classes.items()}
    return {
        name: torch.tensor([UNLABELLED if row[name] is None else index[name][row[name]] for row in rows])
        for name in classes
    }


def head_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the rows that have a label for this head (0 when none in the batch)."""
    known = target != UNLABELLED
    if bool(known.all()):
        return F.cross_entropy(logits, target)
    return F.cross_entropy(logits[known], target[known]) if bool(known.any()) else logits.sum() * 0.0


def train_classifier(
    images: np.ndarray,
    rows: list[dict],
    steps: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    classes: dict[str, tuple[str, ...]] | None = None,
) -> AttributeClassifier:
    """Fit the classifier on real images (light flips/shifts keep it from memorising pixels)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = AttributeClassifier(classes=classes)
    x, y = to_tensor(images), labels(rows, model.classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    model.train()
    for _ in tqdm(range(steps), desc="judge", unit="step"):
        ids = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
        shift = tuple(int(v) for v in torch.randint(-1, 2, (2,), generator=generator))
        batch = torch.roll(x[ids], shifts=shift, dims=(2, 3))
        logits = model(batch)
        loss = sum(head_loss(logits[name], y[name][ids]) for name in model.classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def predict(model: AttributeClassifier, images: np.ndarray, batch_size: int = 256) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {name: [] for name in model.classes}
    for start in range(0, len(images), batch_size):
        logits = model(to_tensor(images[start : start + batch_size]))
        for name, values in model.classes.items():
            out[name] += [values[i] for i in logits[name].argmax(1).tolist()]
    return out


def accuracy(model: AttributeClassifier, images: np.ndarray, rows: list[dict]) -> dict[str, float]:
    """Per attribute, the fraction of images whose predicted value is the row's."""
    predicted = predict(model, images)
    return {
        name: float(np.mean([p == row[name] for p, row in zip(predicted[name], rows, strict=True)])) if rows else 0.0
        for name in model.classes
    }


class FeatureExtractor(nn.Module):
    """uint8 (N, 3, H, W) -> (N, 128) features, the `feature=` module torchmetrics FID/KID take."""

    def __init__(self, model: AttributeClassifier):
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images.float().div(127.5).sub(1.0))


# -- both, on generated images -----------------------------------------------------------------


def train_blob_judge(
    real_train: np.ndarray, train_rows: list[dict], steps: int, seed: int, vae=None
) -> AttributeClassifier:
    """The blob attributes' classifier, trained on the real train images and, given the `vae`,
    on their VAE reconstructions too: every generated image is a VAE decode, and a judge that
    has only seen sharp drawings misreads the VAE's softer strokes."""
    images, labels = real_train, train_rows
    if vae is not None:
        images, labels = np.concatenate([real_train, reconstruct(vae, real_train)]), train_rows + train_rows
    return train_classifier(images, labels, steps, seed)


def judge_samples(
    classifier: AttributeClassifier,
    generated: np.ndarray,
    rows: list[dict],
    *,
    real_val: np.ndarray,
    vae=None,
    reconstructed_val: np.ndarray | None = None,
) -> dict:
    """Adherence per attribute (a pixel judge for skin color, the `classifier` of
    `train_blob_judge` for the rest), each judge's accuracy on the real val images (and on their
    VAE reconstructions: the most a model that samples through this VAE can reach), chance, and
    FID/KID in the classifier's feature space (named as the substitute they are)."""

    def judged(images: np.ndarray) -> dict[str, float]:
        return {**adherence(images, rows), **accuracy(classifier, images, rows)}

    fid, kid = fid_kid(FeatureExtractor(classifier), real_val, generated)
    scores = judged(generated)
    out = {
        "adherence": scores,
        "judge_accuracy_on_real": judged(real_val),
        "chance": {name: 1 / len(ATTRIBUTE_VALUES[name]) for name in scores},
        "fid_blob_judge": fid,
        "kid_blob_judge": kid,
    }
    if vae is not None:
        out["judge_accuracy_on_vae_reconstructions"] = judged(
            reconstruct(vae, real_val) if reconstructed_val is None else reconstructed_val
        )
    return out
