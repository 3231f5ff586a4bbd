from sdlab.caption import CAPTIONERS
from sdlab.config import CaptionConfig


def test_template_caption_reproduces_the_exact_synthetic_caption(blob_records, tmp_path):
    results = CAPTIONERS["template"](blob_records, CaptionConfig(), tmp_path, tmp_path).captions
    assert [c for c, _ in results] == [r["caption"] for r in blob_records]
    assert all(reason == "" for _, reason in results)


def test_missing_attribute_falls_back_to_the_title_and_is_counted(tmp_path):
    rows = [{"key": "a", "title": "blobwave", "head_shape": "round"}, {"key": "b", "title": ""}]
    results = CAPTIONERS["template"](rows, CaptionConfig(), tmp_path, tmp_path).captions
    assert results[0] == ("blobwave emoji", "fallback:missing_eyes")
    assert results[1] == ("", "missing_field:title")


def test_original_backend_keeps_source_captions_and_counts_the_empty_ones(tmp_path):
    rows = [{"key": "a", "title": "cat", "caption": "a photo of a cat on a sofa"},
            {"key": "b", "title": "dog", "caption": "  "}]
    results = CAPTIONERS["original"](rows, CaptionConfig(), tmp_path, tmp_path).captions
    assert results == [("a photo of a cat on a sofa", ""), ("dog emoji", "no_original_caption")]
