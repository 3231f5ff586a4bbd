import pyarrow as pa

from sdlab.config import FilterConfig
from sdlab.data.filter import RULES, filter_records


def records(**overrides):
    rows = [
        {"key": "a", "url": "", "path": "a.png", "title": "blobok", "caption": "fine", "tag": "Blobs"},
        {"key": "b", "url": "", "path": "", "title": "blobnowhere", "caption": "", "tag": "Blobs"},
        {"key": "c", "url": "http://x/c.png", "path": "", "title": "  ", "caption": "", "tag": "Blobs"},
        {"key": "d", "url": "", "path": "d.png", "title": "spammy", "caption": "buy now", "tag": "Blobs"},
        {"key": "e", "url": "", "path": "e.png", "title": "cat", "caption": "x" * 400, "tag": "Cats"},
        {"key": "f", "url": "", "path": "f.png", "title": "dog", "caption": "ok", "tag": "Dogs"},
    ]
    return pa.Table.from_pylist(rows)


def test_each_drop_is_counted_under_the_first_rule_it_fails():
    cfg = FilterConfig(blocklist=["BUY"], allowed_tags=["Blobs", "Cats"], max_caption_chars=300)
    kept, dropped, stats = filter_records(records(), cfg)
    assert kept.column("key").to_pylist() == ["a"]
    assert dict(zip(dropped["key"].to_pylist(), dropped["reason"].to_pylist())) == {
        "b": "missing_location", "c": "title_too_short", "d": "blocklisted",
        "e": "caption_too_long", "f": "tag_not_allowed"}
    assert stats["dropped_by_reason"] == {name: 1 for name in RULES}
    assert stats["input"] == 6 and stats["kept"] == 1 and stats["dropped"] == 5


def test_defaults_keep_everything_that_has_a_title_and_a_location():
    kept, _, stats = filter_records(records(), FilterConfig())
    assert sorted(kept["key"].to_pylist()) == ["a", "d", "f"]
    assert stats["dropped_by_reason"]["caption_too_long"] == 1
