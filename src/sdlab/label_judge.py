"""Judges for real images whose records carry labels (`evaluate.judge: labels`): would a person
recognise the picture?

For any source whose rows have the `label_columns` (emoji_sets: category, subcategory, style;
a user's folder: its `tag`): a classifier with a head per column (the columns a judge pool
teaches in a classifier of their own), trained on the real train images and their VAE
reconstructions (the blob judge's recipe, `sdlab.judge`), read on

- the generated images, against the labels of the rows that prompted them (adherence);
- the real val images and their reconstructions (what the judge can read at all; what a model
  sampling through this VAE could reach), beside chance (the most common value's share);
- retrieval by `concept_column`: is a real image of the prompt's concept among the k nearest
  real images to the sample, in the judge's feature space (cosine)? A category score alone
  flatters blotches of the right colours; retrieval asks for the concept itself. evaluate gives
  the judge a head for the concept column too, so that space is one that tells concepts apart
  (its accuracy on the generated images is the `concept` adherence: is the picture nameable as
  its prompt's concept among every concept of the train set?).

Val rows whose concept has train rows (a held-out concept/style pair) are the headline; rows
whose concept the model never saw are scored apart (`unseen_concepts`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from sdlab.distribution import fid_kid, reconstruct
from sdlab.judge import AttributeClassifier, FeatureExtractor, accuracy, train_classifier

RETRIEVAL_K = 5


def classes_of(rows: list[dict], columns: list[str]) -> dict[str, tuple[str, ...]]:
    """Per column, its values in the rows, sorted (the heads' outputs)."""
    return {column: tuple(sorted({str(row[column]) for row in rows})) for column in columns}


def readable(rows: list[dict], classes: dict[str, tuple[str, ...]]) -> list[dict]:
    """Rows as the heads read them: each column as a string, values the heads lack as None."""
    return [{c: (str(row[c]) if str(row[c]) in values else None) for c, values in classes.items()} for row in rows]


def label_accuracy(model: AttributeClassifier, images: np.ndarray, rows: list[dict]) -> dict[str, float]:
    """Per column, the share of images whose predicted value is the row's (a value the judge
    never saw in train counts as a miss)."""
    return accuracy(model, images, readable(rows, model.classes)) if rows else {c: 0.0 for c in model.classes}


def majority_share(rows: list[dict], columns: list[str]) -> dict[str, float]:
    """What always answering the most common value scores on these rows."""
    return {c: Counter(str(r[c]) for r in rows).most_common(1)[0][1] / len(rows) if rows else 0.0 for c in columns}


@torch.no_grad()
def unit_features(extractor: FeatureExtractor, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """(N, D) L2-normalised judge features of uint8 (N, H, W, 3) images."""
    parts = [
        extractor(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).permute(0, 3, 1, 2))
        for i in range(0, len(images), batch_size)
    ]
    return torch.nn.functional.normalize(torch.cat(parts), dim=1)


def retrieval_at_k(
    queries: torch.Tensor,
    query_concepts: list[str],
    pool: torch.Tensor,
    pool_concepts: list[str],
    self_index: list[int] | None = None,
    k: int = RETRIEVAL_K,
) -> float:
    """Share of queries with a pool item of their own concept among their k nearest (cosine).
    `self_index`: where each query itself sits in the pool (it may not find itself)."""
    if not query_concepts:
        return 0.0
    similarity = queries @ pool.T  # (Q, P)
    if self_index is not None:
        similarity[torch.arange(len(queries)), torch.tensor(self_index)] = -2.0
    nearest = similarity.topk(min(k, pool.shape[0]), dim=1).indices.tolist()
    hits = [any(pool_concepts[j] == c for j in row) for row, c in zip(nearest, query_concepts, strict=True)]
    return float(np.mean(hits))


def train_label_judge(
    real_train: np.ndarray,
    train_rows: list[dict],
    columns: list[str],
    steps: int,
    seed: int,
    vae=None,
    *,
    pool: tuple[np.ndarray, list[dict]] | None = None,
    pool_columns: list[str] = (),
) -> AttributeClassifier:
    """A head per column, trained on the real train images (and, given the `vae`, on their
    reconstructions: every generated image is a VAE decode). `pool`: more real images the model
    never trained on (a source's judge records), labelled for `pool_columns` only (the others,
    e.g. the concept, are not learnt from them)."""

    images, labels = real_train, [{c: str(r[c]) for c in columns} for r in train_rows]
    classes = classes_of(train_rows, columns)
    if pool is not None and len(pool[1]):
        pool_images, pool_rows = pool
        taught = [c for c in columns if c in pool_columns]
        classes |= {c: tuple(sorted(set(classes[c]) | set(classes_of(pool_rows, [c])[c]))) for c in taught}
        images = np.concatenate([images, pool_images])
        labels += [{c: str(r[c]) if c in taught else None for c in columns} for r in pool_rows]
    if vae is not None:
        images, labels = np.concatenate([images, reconstruct(vae, images)]), labels + labels
    return train_classifier(images, labels, steps, seed, classes=classes)


def train_label_judges(
    real_train: np.ndarray,
    train_rows: list[dict],
    columns: list[str],
    steps: int,
    seed: int,
    vae=None,
    *,
    pool: tuple[np.ndarray, list[dict]] | None = None,
    pool_columns: list[str] = (),
) -> list[AttributeClassifier]:
    """The judges evaluate reads, the first holding every column the pool does not teach (the
    concept's head, whose features retrieval uses). Given a pool, the columns it teaches get a
    classifier of their own: on a trunk shared with the pool's 3x more images the category
    head read 0.77 instead of 0.87 on real val, and a style head shared with the concept's read
    0.63 instead of 0.69 (BENCHMARKS.md)."""
    has_pool = pool is not None and len(pool[1]) > 0
    from_pool = [c for c in columns if has_pool and c in pool_columns]
    rest = [c for c in columns if c not in from_pool]
    judges = [train_label_judge(real_train, train_rows, rest, steps, seed, vae)] if rest else []
    if from_pool:
        judges.append(
            train_label_judge(real_train, train_rows, from_pool, steps, seed, vae, pool=pool, pool_columns=from_pool)
        )
    return judges


def predicted_accuracy(judges: list[AttributeClassifier], images: np.ndarray, rows: list[dict]) -> dict[str, float]:
    """Every judge's `label_accuracy`, one dict."""
    return {name: value for judge in judges for name, value in label_accuracy(judge, images, rows).items()}


def judge_labelled_samples(
    judges: list[AttributeClassifier],
    generated: np.ndarray,
    rows: list[dict],
    *,
    real_val: np.ndarray,
    real_train: np.ndarray,
    train_rows: list[dict],
    concept_column: str | None,
    reconstructed_val: np.ndarray | None = None,
) -> dict:
    """Adherence per label column on the generated images (held-out pairs; unseen concepts
    apart), the judge's accuracy on real val images and on their reconstructions, chance,
    retrieval@k of the prompt's concept, and KID in the judge's feature space with its
    real-vs-real baseline."""

    columns = [c for judge in judges for c in judge.classes]
    extractor = FeatureExtractor(judges[0])
    seen = {str(r[concept_column]) for r in train_rows} if concept_column else set()
    is_seen = [not concept_column or str(r[concept_column]) in seen for r in rows]
    if concept_column:  # every real image, val first, embedded once for both groups
        pool = unit_features(extractor, np.concatenate([real_val, real_train]))
        pool_concepts = [str(r[concept_column]) for r in rows + train_rows]
    pairs = [i for i, s in enumerate(is_seen) if s]  # the concept was trained on (in another style)
    unseen = [i for i, s in enumerate(is_seen) if not s]

    def scores(index: list[int], unseen_group: bool = False) -> dict:
        judged = [rows[i] for i in index]
        # the concept head knows only the train concepts: on unseen ones it is wrong by construction
        shown = [c for c in columns if not (unseen_group and c == concept_column)]

        def read(images: np.ndarray) -> dict[str, float]:
            return {c: v for c, v in predicted_accuracy(judges, images, judged).items() if c in shown}

        out = {
            "adherence": read(generated[index]),
            "judge_accuracy_on_real": read(real_val[index]),
            "chance": majority_share(judged, shown),
        }
        if reconstructed_val is not None:
            out["judge_accuracy_on_vae_reconstructions"] = read(reconstructed_val[index])
        if concept_column:
            out.update(retrieval(extractor, generated, pool, pool_concepts, index))
        return out

    # the headline is the held-out pairs; where no val concept was trained on (one image per
    # concept, as the Noto font) it is the unseen concepts, and `judged_group` says so
    headline, group = (pairs, "held_out_pairs") if pairs else (unseen, "unseen_concepts")
    out = {
        **scores(headline, unseen_group=not pairs),
        "judged_rows": len(headline),
        "judged_group": group,
        "label_classes": {c: len(v) for judge in judges for c, v in judge.classes.items()},
    }
    if unseen and pairs:
        out["unseen_concepts"] = {**scores(unseen, unseen_group=True), "judged_rows": len(unseen)}
    # val's interleaved halves A, B (as distribution_metrics): the samples for A's prompts vs real B,
    # beside real A vs real B; train images are what the judge learnt from, not a fair baseline
    a, b = slice(0, None, 2), slice(1, None, 2)
    out["kid_label_judge"] = fid_kid(extractor, real_val[b], generated[a], with_fid=False)[1]
    out["kid_label_judge_real_vs_real"] = fid_kid(extractor, real_val[b], real_val[a], with_fid=False)[1]
    return out


def retrieval(
    extractor: FeatureExtractor,
    generated: np.ndarray,
    pool: torch.Tensor,
    pool_concepts: list[str],
    index: list[int],
) -> dict[str, float]:
    """retrieval@k of the concept of each generated image in `index` among every real image
    (`pool`: val rows first, then train), the same for the real val images themselves (each
    barred from finding itself), and chance (k draws from the pool)."""
    wanted = [pool_concepts[i] for i in index]
    counts = Counter(pool_concepts)
    return {
        "retrieval_at_5": retrieval_at_k(unit_features(extractor, generated[index]), wanted, pool, pool_concepts),
        "retrieval_at_5_real": retrieval_at_k(pool[index], wanted, pool, pool_concepts, self_index=index),
        "retrieval_at_5_chance": float(
            np.mean([1 - (1 - counts[c] / len(pool_concepts)) ** RETRIEVAL_K for c in wanted])
        ),
    }
