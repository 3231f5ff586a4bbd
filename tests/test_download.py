import hashlib
import json

import numpy as np
import pyarrow as pa
import webdataset as wds
from conftest import png
from PIL import Image

from sdlab.config import DownloadConfig
from sdlab.data.download import download
from sdlab.data.images import composite_on_white, fit_square
from sdlab.data.shards import load_images


def write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_transparent_pixels_come_out_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((4, 4), (255, 0, 0, 255))
    rgb = np.asarray(composite_on_white(rgba))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[4, 4]) == (255, 0, 0)


def test_palette_transparency_comes_out_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.info["transparency"] = 0
    assert tuple(np.asarray(composite_on_white(image))[0, 0]) == (255, 255, 255)


def test_fit_square_keeps_aspect_and_pads_white():
    wide = Image.new("RGB", (40, 20), (0, 0, 255))
    square = np.asarray(fit_square(wide, 16))
    assert square.shape == (16, 16, 3)
    assert tuple(square[0, 8]) == (255, 255, 255) and tuple(square[8, 8]) == (0, 0, 255)


def test_every_record_gets_an_index_row_and_failures_carry_their_reason(tmp_path):
    good = png(Image.new("RGBA", (24, 24), (0, 128, 0, 255)))
    rows = [
        {"key": "good", "path": write(tmp_path / "good.png", good), "title": "g", "caption": "c"},
        {
            "key": "corrupt",
            "path": write(tmp_path / "bad.png", b"\x89PNG\r\n\x1a\nnot really"),
            "title": "b",
            "caption": "",
        },
        {"key": "missing", "path": str(tmp_path / "nowhere.png"), "title": "m", "caption": ""},
        {
            "key": "tiny",
            "path": write(tmp_path / "tiny.png", png(Image.new("RGB", (2, 2)))),
            "title": "t",
            "caption": "",
        },
        {
            "key": "long",
            "path": write(tmp_path / "long.png", png(Image.new("RGB", (100, 10)))),
            "title": "l",
            "caption": "",
        },
        {"key": "empty", "path": write(tmp_path / "empty.png", b""), "title": "e", "caption": ""},
    ]
    index, stats = download(pa.Table.from_pylist(rows), DownloadConfig(image_px=16, min_side_px=8), tmp_path / "shards")
    assert index.num_rows == len(rows)
    reasons = dict(zip(index["key"].to_pylist(), index["reason"].to_pylist(), strict=True))
    assert reasons == {
        "good": "",
        "corrupt": "decode_error",
        "missing": "missing_file",
        "tiny": "too_small",
        "long": "bad_aspect_ratio",
        "empty": "empty_file",
    }
    assert stats["ok"] == 1 and stats["failed"] == 5
    assert stats["failed_by_reason"]["decode_error"] == 1
    good_row = index.filter(pa.compute.equal(index["key"], "good")).to_pylist()[0]
    assert good_row["md5"] == hashlib.md5(good).hexdigest()
    assert (good_row["width"], good_row["height"]) == (24, 24)


def test_shards_are_webdataset_readable_at_the_training_resolution(blob_records, tmp_path):
    index, stats = download(
        pa.Table.from_pylist(blob_records), DownloadConfig(image_px=16, shard_size=16, processes=2), tmp_path / "shards"
    )
    assert stats["shards"] == 3 and stats["ok"] == 40
    urls = [str(p) for p in sorted((tmp_path / "shards").glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == index["key"].to_pylist()
    assert all(s["png"].shape == (16, 16, 3) for s in samples)
    assert json.loads(json.dumps(samples[0]["json"]))["caption"] == blob_records[0]["caption"]
    images = load_images(tmp_path / "shards", index.to_pylist()[:5])
    assert images.shape == (5, 16, 16, 3) and (images[:, 0, 0] == 255).all()  # corners: white, not black


def test_the_same_samples_make_the_same_shard_bytes_at_any_time(tmp_path):
    """A rerun of download rewrites its tars; their bytes (so encode's fingerprints) must not move."""
    import time

    from sdlab.data.shards import write_shard

    samples = [{"key": "a", "png": png(Image.new("RGB", (4, 4), (1, 2, 3))), "json": b"{}"}]
    write_shard(tmp_path / "one.tar", samples)
    time.sleep(1.1)  # tar mtimes have one-second resolution
    write_shard(tmp_path / "two.tar", samples)
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
