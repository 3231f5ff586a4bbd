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
    assert dict(zip(dropped["key"].to_pylist(), dropped["reason"].to_pylist(), strict=True)) == {
        "b": "missing_location",
        "c": "title_too_short",
        "d": "blocklisted",
        "e": "caption_too_long",
        "f": "tag_not_allowed",
    }
    assert stats["dropped_by_reason"] == {name: 1 for name in RULES}
    assert stats["input"] == 6 and stats["kept"] == 1 and stats["dropped"] == 5


def test_defaults_keep_everything_that_has_a_title_and_a_location():
    kept, _, stats = filter_records(records(), FilterConfig())
    assert sorted(kept["key"].to_pylist()) == ["a", "d", "f"]
    assert stats["dropped_by_reason"]["caption_too_long"] == 1


def laion_rows() -> pa.Table:
    base = {
        "url": "https://x/1.jpg",
        "path": "",
        "title": "t",
        "caption": "a long enough caption here",
        "width": 800.0,
        "height": 600.0,
        "similarity": 0.3,
        "punsafe": 0.1,
        "pwatermark": 0.1,
        "aesthetic": 7.0,
    }
    changes = {
        "ok": {},
        "ugly": {"aesthetic": 6.4},
        "off": {"similarity": 0.2},
        "nsfw": {"punsafe": 0.5},
        "wm": {"pwatermark": 0.9},
        "small": {"height": 300.0},
        "nullw": {"width": None},
        "thin": {"width": 1300.0, "height": 600.0},
        "short": {"caption": "cat"},
        "ugly_and_small": {"aesthetic": 1.0, "height": 10.0},
    }
    return pa.Table.from_pylist([{"key": key, **base, **change} for key, change in changes.items()])


def test_laion_rules_drop_each_record_under_its_first_failing_rule():
    from sdlab.config import LaionFilterConfig
    from sdlab.data.filter import LAION_RULES, active_rules

    cfg = FilterConfig(laion=LaionFilterConfig())
    assert list(active_rules(cfg)) == ["missing_location", *LAION_RULES, *list(RULES)[1:]]
    kept, dropped, stats = filter_records(laion_rows(), cfg)
    assert kept["key"].to_pylist() == ["ok"]
    assert dict(zip(dropped["key"].to_pylist(), dropped["reason"].to_pylist(), strict=True)) == {
        "ugly": "aesthetic_below_min",
        "off": "similarity_below_min",
        "nsfw": "punsafe_above_max",
        "wm": "pwatermark_above_max",
        "small": "side_below_min",
        "nullw": "side_below_min",
        "thin": "aspect_above_max",
        "short": "caption_length_outside",
        "ugly_and_small": "aesthetic_below_min",
    }
    loose = FilterConfig(laion=LaionFilterConfig(min_aesthetic=None, min_side_px=None, max_aspect_ratio=None))
    assert "ugly" in filter_records(laion_rows(), loose)[0]["key"].to_pylist()


def test_a_laion_threshold_without_its_column_names_both():
    import pytest

    from sdlab.config import LaionFilterConfig
    from sdlab.data.records import DataError

    with pytest.raises(DataError, match=r"filter.laion.min_aesthetic needs the metadata column 'aesthetic'"):
        filter_records(laion_rows().drop_columns(["aesthetic"]), FilterConfig(laion=LaionFilterConfig()))
