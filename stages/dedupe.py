"""DVC stage `dedupe`: drop exact duplicates by MD5, then (dedupe.near, dedupe.min_clip_score)
near-duplicates and low scores from the embed stage's files; assign the train/val split."""

from pathlib import Path

from sdlab.data.curation import REMOVED_SCHEMA, Curation, curation_active
from sdlab.data.dedupe import SplitRule, dedupe_file
from sdlab.data.records import DataError
from sdlab.io import write_json, write_table
from sdlab.reports import pairs_sheet, sheet_of_shards
from sdlab.stage import parse_args, stage


@stage("dedupe")
def main(args, params):
    out = Path(args.out)
    cfg = params.dedupe
    rule = SplitRule(cfg.val_fraction, cfg.split_column, cfg.unseen_column, cfg.unseen_fraction)
    watermarks = params.embed.watermark_weights is not None
    curation = Curation(Path(args.embeddings), cfg) if curation_active(cfg, watermarks) else None
    stats = dedupe_file(Path(args.index), out / "index.parquet", out / "duplicates.parquet", rule, curation=curation)
    removed = curation.removed if curation else REMOVED_SCHEMA.empty_table()
    models = {
        "embed_clip_score": params.embed.model,
        "embed_aesthetic": cfg.aesthetic_weights,
        "embed_nsfw": cfg.nsfw_weights,
        "embed_watermark": params.embed.watermark_weights,
    }
    if curation and curation.columns:  # the kept index's score columns, each with the model that made it
        stats["score_columns"] = {name: models[name] for name in curation.columns}
    write_table(out / "removed.parquet", removed)  # every row curation dropped, with its reason
    stats["near_pairs_unreadable"] = pairs_sheet(
        Path(args.report) / "near_pairs.png",
        removed,
        args.index,
        args.shards,
        unit="bits" if cfg.near == "phash" else "cosine distance",
        max_pixels=params.download.max_image_pixels,
    )
    stats["sheet_unreadable"] = sheet_of_shards(
        Path(args.report) / "sheet.png",
        out / "index.parquet",
        args.shards,
        lambda r: f"{r['split']}: {r.get('title') or r['key']}",
        max_pixels=params.download.max_image_pixels,
    )
    write_json(Path(args.report) / "stats.json", stats)
    for split in ("train", "val"):
        if stats[split] == 0:
            raise DataError(
                f"dedupe: the {split} split is empty ({stats['kept']} images kept, "
                f"dedupe.val_fraction {params.dedupe.val_fraction}): add images or change val_fraction"
            )
    print(
        f"dedupe: kept {stats['kept']} ({stats['train']} train, {stats['val']} val), {stats['duplicates']} duplicates"
        + "".join(
            f", {stats[k]} {k.replace('_', ' ')}" for k in stats if k.startswith(("near_duplicate_", "clip_score_"))
        )
    )


if __name__ == "__main__":
    main(parse_args(__doc__, "index", "shards", "embeddings", "out", "report"))
