"""What a person looks at: contact sheets of data stages and the evaluation report page."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sdlab.data.images import DEFAULT_MAX_PIXELS, ImageRejected, composite_on_white, decode, fit_square
from sdlab.prompts import safe_title

SHEET_PX = 64


def sample_grid(images: np.ndarray, labels: list[str], columns: int, label_px: int = 56) -> Image.Image:
    """Images in a grid with their wrapped labels underneath, upscaled to >= 96 px."""
    scale = max(1, 96 // min(images.shape[1:3]))
    cell, cell_w = images.shape[1] * scale, images.shape[2] * scale  # an aspect bucket keeps its shape
    width = max(cell_w, 120)
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * width, rows * (cell + label_px)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=9)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (i % columns) * width, (i // columns) * (cell + label_px)
        tile = Image.fromarray(image).resize((cell_w, cell), Image.Resampling.NEAREST)
        grid.paste(tile, (x + (width - cell_w) // 2, y))
        text = "\n".join(textwrap.wrap(safe_title(label, 300), width=width // 5)[:5])
        draw.multiline_text((x + 2, y + cell + 1), text, fill="black", font=font, spacing=0)
    return grid


def pick_indices(total: int, count: int, seed: int) -> np.ndarray:
    """Sorted positions of a reproducible random sample (all of them if there are fewer)."""
    if total <= count:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def pick_rows(rows: list[dict], count: int, seed: int) -> list[dict]:
    return [rows[i] for i in pick_indices(len(rows), count, seed)]


def load_local(
    paths: list[str], px: int = SHEET_PX, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = 50_000_000
) -> tuple[np.ndarray, list[int]]:
    """uint8 (N, px, px, 3) thumbnails of the readable local image files, and the positions
    skipped (missing, larger than `max_bytes`, a bomb over `max_pixels`, bad bytes)."""
    thumbs, skipped = [], []
    for i, path in enumerate(paths):
        try:
            if os.path.getsize(path) > max_bytes:
                raise ImageRejected("too_large", f"{path}: over {max_bytes} bytes")
            with open(path, "rb") as handle:
                image = decode(handle.read(), max_pixels)
            thumbs.append(np.asarray(fit_square(composite_on_white(image), px)))
        except (OSError, ImageRejected):
            skipped.append(i)
    return (np.stack(thumbs) if thumbs else np.zeros((0, px, px, 3), np.uint8)), skipped


def bucket_rows(
    real: list[np.ndarray], samples: list[np.ndarray], rows: list[dict], per_bucket: int = 6
) -> list[tuple[str, Image.Image]]:
    """Per aspect bucket (row `bucket`), up to `per_bucket` real val images over the samples for
    their prompts, each at its own size."""
    out = []
    for bucket in sorted({r["bucket"] for r in rows}, key=lambda b: [int(v) for v in b.split("x")]):
        picked = [i for i, r in enumerate(rows) if r["bucket"] == bucket][:per_bucket]
        images = np.stack([real[i] for i in picked] + [samples[i] for i in picked])
        labels = ["real"] * len(picked) + ["generated"] * len(picked)
        out.append((f"{bucket} ({len(picked)} prompts)", sample_grid(images, labels, len(picked), label_px=16)))
    return out


def write_sheet(path: str | Path, images: np.ndarray, labels: list[str], columns: int = 8) -> None:
    """A contact sheet: images with their captions or titles underneath (a note when there are
    none, e.g. a URL-only source before download: DVC expects the plot file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(images) == 0:
        sheet = Image.new("RGB", (360, 40), "white")
        ImageDraw.Draw(sheet).text((8, 12), "no local images at this stage", fill="black")
        sheet.save(path)
        return
    sample_grid(images, labels, min(columns, len(images))).save(path)


def png_data_uri(image: Image.Image | np.ndarray) -> str:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def curve_svg(points: list[tuple[float, float]], title: str, width: int = 480, height: int = 180) -> str:
    """An inline SVG line chart (no plotting dependency)."""
    if len(points) < 2:
        return f"<p>{html.escape(title)}: not enough points</p>"
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    lo, hi = float(ys.min()), float(ys.max()) or 1.0
    sx = lambda x: 40 + (x - xs.min()) / max(xs.max() - xs.min(), 1e-12) * (width - 50)  # noqa: E731
    sy = lambda y: height - 25 - (y - lo) / max(hi - lo, 1e-12) * (height - 45)  # noqa: E731
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">'
        f'<text x="40" y="14" font-size="12">{html.escape(title)}</text>'
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{line}"/>'
        f'<text x="2" y="{sy(hi) + 4:.0f}" font-size="10">{hi:.3g}</text>'
        f'<text x="2" y="{sy(lo) + 4:.0f}" font-size="10">{lo:.3g}</text>'
        f'<text x="40" y="{height - 5}" font-size="10">step {xs.min():.0f}</text>'
        f'<text x="{width - 70}" y="{height - 5}" font-size="10">step {xs.max():.0f}</text></svg>'
    )


def read_curve(tsv: str | Path, column: str) -> list[tuple[float, float]]:
    """(step, value) pairs of a dvclive metric TSV; empty if the file is missing."""
    tsv = Path(tsv)
    if not tsv.is_file():
        return []
    lines = tsv.read_text().splitlines()
    header = lines[0].split("\t")
    step, value = header.index("step"), header.index(column)
    return [(float(cols[step]), float(cols[value])) for cols in (line.split("\t") for line in lines[1:]) if cols]


def _flatten(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        rows += _flatten(value, name + ".") if isinstance(value, dict) else [(name, value)]
    return rows


@dataclass
class Overview:
    """The top of report.html, what a person wants in ten seconds: what was trained on what for
    how long, how well each attribute is followed (beside the judge's own accuracy on real
    images and chance), rows where one attribute varies, real beside generated, and what the
    VAE keeps of real images."""

    lines: list[str] = field(default_factory=list)
    adherence: list[tuple[str, float, float | None, float]] = field(default_factory=list)  # name, gen, real, chance
    attribute_rows: list[tuple[str, Image.Image]] = field(default_factory=list)
    row_heading: str = "only {} varies (same seed)"  # labelled concepts: "{}: real in every style, then samples"
    real_vs_generated: Image.Image | None = None
    bucket_rows: list[tuple[str, Image.Image]] = field(default_factory=list)  # aspect bucket -> real over generated
    reconstructions: Image.Image | None = None
    reconstruction_note: str = ""
    curation: list[str] = field(default_factory=list)  # what dedupe removed, by reason (curation_lines)
    curation_pairs: Image.Image | None = None  # dedupe's near_pairs.png: removed beside kept

    def html(self) -> str:
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in self.lines)
        table = "".join(
            f"<tr><td>{html.escape(name)}</td><td><b>{gen:.3f}</b></td>"
            f"<td>{'' if real is None else f'{real:.3f}'}</td><td>{chance:.3f}</td></tr>"
            for name, gen, real, chance in self.adherence
        )
        table = (
            f"<h2>Prompt adherence</h2><table><tr><th>attribute</th><th>generated</th>"
            f"<th>judge on real val images</th><th>chance</th></tr>{table}</table>"
            if table
            else ""
        )
        rows = "".join(
            f'<h3>{html.escape(self.row_heading.format(name))}</h3><img alt="{html.escape(name)}" '
            f'src="{png_data_uri(image)}">'
            for name, image in self.attribute_rows
        )
        pairs = (
            f"<h2>Real val images (top) and generated for their prompts (bottom)</h2>"
            f'<img alt="real vs generated" src="{png_data_uri(self.real_vs_generated)}">'
            if self.real_vs_generated is not None
            else ""
        )
        if self.bucket_rows:
            pairs += "<h2>Each aspect bucket at its own size: real val images (top), generated (bottom)</h2>" + "".join(
                f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" src="{png_data_uri(image)}">'
                for name, image in self.bucket_rows
            )
        recon = (
            f"<h2>VAE reconstructions</h2><p>{html.escape(self.reconstruction_note)}</p>"
            f'<img alt="reconstructions" src="{png_data_uri(self.reconstructions)}">'
            if self.reconstructions is not None
            else ""
        )
        curation = (
            "<h2>What the training data lost to curation</h2><ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in self.curation)
            + "</ul>"
            + (
                '<img alt="near-duplicate pairs" src="' + png_data_uri(self.curation_pairs) + '">'
                if self.curation_pairs is not None
                else ""
            )
            if self.curation
            else ""
        )
        return f"<ul class='overview'>{lines}</ul>{table}{rows}{pairs}{recon}{curation}"


CURATION_REASONS = {  # dedupe's stats.json key -> what it removed
    "duplicates": "exact duplicates (MD5)",
    "near_duplicate_phash": "near-duplicates by perceptual hash",
    "near_duplicate_embedding": "near-duplicates by CLIP embedding",
    "clip_score_below": "below dedupe.min_clip_score (caption-image CLIP similarity)",
    "aesthetic_below": "below dedupe.min_aesthetic (LAION's aesthetic MLP)",
    "nsfw_above": "above dedupe.max_nsfw (LAION's CLIP-based NSFW detector)",
    "watermark_above": "above dedupe.max_watermark (LAION's watermark detector)",
}


def curation_lines(stats: dict) -> list[str]:
    """Sentences from dedupe's stats.json: how many downloaded rows were kept, and each reason
    a row was removed for, with its count (reasons with none left out)."""
    lines = [f"{stats['kept']:,} of {stats['input']:,} downloaded rows kept for training and validation."]
    lines += [f"{stats[key]:,} removed as {what}." for key, what in CURATION_REASONS.items() if stats.get(key)]
    if stats.get("clip_score_missing"):
        lines.append(f"{stats['clip_score_missing']:,} had no caption to score (kept).")
    return lines


def report_html(
    metrics: dict,
    grid: Image.Image,
    *,
    sweep: Image.Image | None,
    sweep_note: str,
    curves: dict[str, list[tuple[float, float]]],
    params: dict,
    prompts: list[str] = (),
    overview: Overview | None = None,
) -> str:
    """One self-contained page: the overview, metrics, sample grid (with its prompts as escaped
    text: they are captions of scraped data), guidance sweep, training curves."""
    prompt_list = "".join(f"<li>{html.escape(p)}</li>" for p in prompts)
    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>"
        if isinstance(v, float)
        else f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in _flatten(metrics)
    )
    charts = "".join(curve_svg(points, name) for name, points in curves.items())
    sweep_html = (
        f'<h2>Guidance sweep</h2><p>{html.escape(sweep_note)}</p><img alt="guidance sweep" src="{png_data_uri(sweep)}">'
        if sweep is not None
        else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sdlab evaluation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td{{border:1px solid #ccc;padding:2px 8px;font-size:13px}}img{{max-width:100%;image-rendering:pixelated}}</style>
</head><body><h1>sdlab evaluation</h1>
{overview.html() if overview else ""}
<h2>Samples for held-out prompts (fixed seeds)</h2><img alt="samples" src="{png_data_uri(grid)}">
<ol class="prompts">{prompt_list}</ol>
{sweep_html}
<h2>All metrics</h2><p>Sampling: {html.escape(json.dumps(params, sort_keys=True))}</p><table>{table}</table>
<h2>Training curves</h2>{charts or "<p>no training curves found</p>"}
</body></html>
"""


def write_report(
    out: Path,
    metrics: dict,
    *,
    samples: np.ndarray,
    prompts: list[str],
    real: np.ndarray,
    reconstructed: np.ndarray,
    sweep: tuple[Image.Image | None, str],
    curves_dir: Path,
    sampling: dict,
    overview: Overview,
    grid_columns: int,
) -> None:
    """evaluate's pages into `out`: samples.png (a grid of the samples under their prompts) and
    report.html (the overview, real beside generated, the VAE's reconstructions, the guidance
    sweep, the training curves, every metric). `samples[i]` is the sample for `prompts[i]`, whose
    real image is `real[i]`."""
    out.mkdir(parents=True, exist_ok=True)
    grid = sample_grid(samples, prompts, grid_columns)
    grid.save(out / "samples.png")
    pairs = min(grid_columns, len(samples))
    overview.real_vs_generated = sample_grid(
        np.concatenate([real[:pairs], samples[:pairs]]), ["real"] * pairs + ["generated"] * pairs, pairs, label_px=16
    )
    overview.reconstructions = sample_grid(
        np.concatenate([real[:pairs], reconstructed[:pairs]]), ["real"] * pairs + ["VAE"] * pairs, pairs, label_px=16
    )
    overview.reconstruction_note = (
        f"decode(encode(x)) of real val images: PSNR "
        f"{metrics['vae_reconstruction_psnr_db']:.1f} dB on {len(real)} images"
    )
    curves = {
        f"train/{name}": read_curve(curves_dir / "train" / f"{name}.tsv", name)
        for name in ("loss", "lr", "grad_norm", "samples_per_s")
    }
    html_text = report_html(
        metrics,
        grid,
        sweep=sweep[0],
        sweep_note=sweep[1],
        curves=curves,
        params=sampling,
        prompts=prompts,
        overview=overview,
    )
    (out / "report.html").write_text(html_text)


def sheet_of_records(
    path: str | Path, rows: list[dict], label: str, count: int = 32, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS
) -> int:
    """Contact sheet of records that point at local files (`path`); skipped for URL-only sources.
    Returns how many picked images were unreadable (skipped, not drawn)."""
    rows = [r for r in pick_rows(rows, count, seed) if r.get("path")]
    images, skipped = load_local([r["path"] for r in rows], max_pixels=max_pixels)
    unreadable = set(skipped)
    rows = [r for i, r in enumerate(rows) if i not in unreadable]
    write_sheet(path, images, [str(r.get(label) or r.get("title") or "") for r in rows])
    return len(skipped)


def sheet_of_shards(
    path: str | Path,
    rows,
    shards_dir: str | Path,
    label=None,
    count: int = 32,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> int:
    """Contact sheet of packed images: `rows` is an index table (or its parquet path) with `key`
    and `shard`; `label(row)` names each picked image. Only the picked rows become Python dicts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from sdlab.data.shards import iter_images

    if isinstance(rows, (str, Path)):
        wanted = ("key", "shard", "split", "title", "caption")
        rows = pq.read_table(rows, columns=[c for c in wanted if c in pq.read_schema(rows).names])
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    if "shard" in table.column_names:
        table = table.filter(pc.and_(pc.invert(pc.is_null(table["shard"])), pc.not_equal(table["shard"], "")))
    else:
        table = table.slice(0, 0)
    picked = table.take(pa.array(pick_indices(table.num_rows, count, seed))).to_pylist()
    default = lambda r: str(r.get("caption") or r.get("title") or r["key"])  # noqa: E731
    readable = sorted(
        (i, image) for i, image in iter_images(shards_dir, picked, max_pixels) if not isinstance(image, ImageRejected)
    )
    sizes = {image.shape for _, image in readable}
    if len(sizes) > 1:  # aspect buckets: each shown whole on a square cell of the sheet (display only)
        readable = [(i, np.asarray(fit_square(Image.fromarray(image), SHEET_PX))) for i, image in readable]
    images = np.stack([image for _, image in readable]) if readable else np.zeros((0, SHEET_PX, SHEET_PX, 3), np.uint8)
    write_sheet(path, images, [(label or default)(picked[i]) for i, _ in readable])
    return len(picked) - len(readable)


def pairs_sheet(
    path: str | Path,
    removed,
    index: str | Path,
    shards_dir: str | Path,
    unit: str,
    count: int = 16,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> int:
    """Removed near-duplicates beside the rows they duplicate (removed | kept, four pairs to a
    row), so a person can check the threshold; `removed` is curation's table. Returns how many
    picked pairs were unreadable (skipped)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from sdlab.data.shards import iter_images

    near = removed.filter(pc.invert(pc.is_null(removed["duplicate_of"])))
    picked = near.take(pa.array(pick_indices(near.num_rows, count, seed))).to_pylist()
    wanted = {r["key"] for r in picked} | {r["duplicate_of"] for r in picked}
    table = pq.read_table(index, columns=["key", "shard"])
    mine = table.filter(pc.is_in(table["key"], pa.array(sorted(wanted), pa.string())))
    shard_of = dict(zip(mine["key"].to_pylist(), mine["shard"].to_pylist(), strict=True))
    rows = [{"key": k, "shard": shard_of[k]} for r in picked for k in (r["key"], r["duplicate_of"])]
    images = dict(iter_images(shards_dir, rows, max_pixels))
    tiles, labels, unreadable = [], [], 0
    for i, pair in enumerate(picked):
        both = [images.get(2 * i), images.get(2 * i + 1)]
        if any(image is None or isinstance(image, ImageRejected) for image in both):
            unreadable += 1
            continue
        tiles += [np.asarray(fit_square(Image.fromarray(image), SHEET_PX)) for image in both]
        labels += [f"removed {pair['key']} ({pair['distance']:.3g} {unit})", f"kept {pair['duplicate_of']}"]
    if not tiles:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        sheet = Image.new("RGB", (360, 40), "white")
        ImageDraw.Draw(sheet).text((8, 12), "no near-duplicates removed", fill="black")
        sheet.save(path)
        return unreadable
    write_sheet(path, np.stack(tiles), labels)
    return unreadable
