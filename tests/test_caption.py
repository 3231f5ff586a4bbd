import pyarrow as pa

from sdlab.caption import CAPTIONERS
from sdlab.config import CaptionConfig


def caption(backend: str, rows: list[dict], tmp_path) -> list[tuple[str, str]]:
    result = CAPTIONERS[backend](pa.Table.from_pylist(rows), CaptionConfig(), tmp_path, tmp_path)
    return list(zip(pa.array(result.captions).to_pylist(), pa.array(result.reasons).to_pylist(), strict=True))


def test_template_caption_reproduces_the_exact_synthetic_caption(blob_records, tmp_path):
    results = caption("template", blob_records, tmp_path)
    assert [c for c, _ in results] == [r["caption"] for r in blob_records]
    assert all(reason == "" for _, reason in results)


def test_missing_attribute_falls_back_to_the_title_and_is_counted(tmp_path):
    rows = [{"key": "a", "title": "blobwave", "head_shape": "round"}, {"key": "b", "title": ""}]
    results = caption("template", rows, tmp_path)
    assert results[0] == ("blobwave emoji", "fallback:missing_eyes")
    assert results[1] == ("", "missing_field:title")


def test_original_backend_keeps_source_captions_and_counts_the_empty_ones(tmp_path):
    rows = [
        {"key": "a", "title": "cat", "caption": "a photo of a cat on a sofa"},
        {"key": "b", "title": "dog", "caption": "  "},
    ]
    results = caption("original", rows, tmp_path)
    assert results == [("a photo of a cat on a sofa", ""), ("dog emoji", "no_original_caption")]
