"""White bars in stored training images: `fit: pad` against `fit: bucket` on real photos of mixed
aspect, fetched from a local server by img2dataset (the download stage's http path).

    .venv/bin/python benchmarks/bucket_white_bars.py [--px 32]

The IFCT 2017 food photos, cropped to 1:2, 2:3, 1:1, 3:2, 2:1 (as `make photos`), are served on
127.0.0.1 and downloaded twice. For every stored image, an edge row or column that is all but
white (min channel >= 245) while the same edge of the original is not counts as an added bar;
the stored pixels are read back from the shards. Prints, per fit and per aspect, the images with
an added bar and the share of stored pixels in all-white edge rows/columns, beside the
originals' own share (photos of food on white have some).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from support.local_site import LocalSite, Response  # noqa: E402
from support.photos import PICTURES_TARBALL, photo_folder, white_bars  # noqa: E402

from sdlab.config import DownloadConfig  # noqa: E402
from sdlab.data.download import download  # noqa: E402
from sdlab.data.shards import load_image_list  # noqa: E402


def padding_share(image: np.ndarray) -> float:
    """Share of pixels in all-white edge rows/columns (the letterbox's area)."""
    light = image.min(axis=2) >= 245
    rows, cols = light.all(axis=1), light.all(axis=0)
    top = np.argmin(rows) if not rows.all() else len(rows)
    bottom = np.argmin(rows[::-1]) if not rows.all() else 0
    left = np.argmin(cols) if not cols.all() else len(cols)
    right = np.argmin(cols[::-1]) if not cols.all() else 0
    h, w = light.shape
    return 1 - max(0, h - top - bottom) * max(0, w - left - right) / (h * w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--px", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = photo_folder(REPO / ".cache" / "emoji-tarballs" / PICTURES_TARBALL, tmp / "photos")
        routes = {
            f"/{i}.jpg": Response(Path(p["path"]).read_bytes(), content_type="image/jpeg") for i, p in enumerate(photos)
        }
        originals = [np.asarray(Image.open(p["path"]).convert("RGB")) for p in photos]
        aspect = [f"{p['width'] / p['height']:.2f}" for p in photos]
        own = 100 * float(np.mean([padding_share(o) for o in originals]))
        print(f"the originals themselves: {own:.1f}% of pixels in all-white edge rows/columns (white backgrounds)")
        with LocalSite(routes) as site:
            records = pa.Table.from_pylist(
                [
                    {
                        "key": f"k{i:04d}",
                        "source": "bench",
                        "url": f"{site.url}/{i}.jpg",
                        "path": "",
                        "title": "",
                        "caption": "",
                    }
                    for i in range(len(photos))
                ]
            )
            for fit in ("pad", "bucket"):
                cfg = DownloadConfig(
                    image_px=args.px,
                    fit=fit,
                    max_aspect_ratio=2.1,
                    processes=1,
                    threads=16,
                    shard_size=256,
                    allow_private_networks=True,
                )
                index, stats = download(records, cfg, tmp / fit / "shards", tmp / "cache")
                rows = index.to_pylist()
                stored = load_image_list(tmp / fit / "shards", [r for r in rows if r["status"] == "ok"])
                position = {r["key"]: i for i, r in enumerate(rows)}
                added, padding = Counter(), []
                for row, image in zip([r for r in rows if r["status"] == "ok"], stored, strict=True):
                    i = position[row["key"]]
                    if white_bars(image) > white_bars(originals[i]):
                        added[aspect[i]] += 1
                    padding.append(padding_share(image))
                per_aspect = ", ".join(
                    f"{a}: {added[a]}/{Counter(aspect)[a]}" for a in sorted(Counter(aspect), key=float)
                )
                print(
                    f"fit {fit}: {stats['ok']} stored, {sum(added.values())} with an added white bar ({per_aspect}); "
                    f"padding {100 * float(np.mean(padding)):.1f}% of stored pixels; "
                    f"sizes {sorted(Counter(r['bucket'] for r in rows))}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
