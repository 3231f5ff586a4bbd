"""Contact sheets and the evaluation report page, including a real headless-Chromium render."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
from PIL import Image

from sdlab.reports import Overview, curation_lines, curve_svg, read_curve, report_html, sheet_of_records


def blob_grid(records, count=8):
    from sdlab.reports import load_local

    return load_local([r["path"] for r in records[:count]])[0]


def test_sheet_of_records_shows_sampled_images_with_titles(blob_records, tmp_path):
    sheet = tmp_path / "sheet.png"
    sheet_of_records(sheet, blob_records, label="title", count=16)
    image = np.asarray(Image.open(sheet).convert("RGB"))
    assert image.shape[1] == 8 * 120 and image.shape[0] == 2 * (64 + 56)  # 64 px thumbnails
    assert (np.abs(image.astype(int) - 255).sum(-1) > 200).mean() > 0.05  # colored blobs, not blank


def test_records_without_local_files_write_a_note_instead_of_a_sheet(tmp_path):
    # URL-only sources (discord, laion) have nothing to show before download, but DVC
    # declares the sheet as a plot and needs the file
    sheet_of_records(tmp_path / "sheet.png", [{"key": "a", "url": "http://x/a.png", "path": ""}], label="title")
    from PIL import Image

    assert Image.open(tmp_path / "sheet.png").size == (360, 40)


def test_curves_are_read_from_dvclive_tsv_and_drawn(tmp_path):
    (tmp_path / "loss.tsv").write_text("step\tloss\n10\t1.0\n20\t0.5\n30\t0.25\n")
    points = read_curve(tmp_path / "loss.tsv", "loss")
    assert points == [(10.0, 1.0), (20.0, 0.5), (30.0, 0.25)]
    assert "<polyline" in curve_svg(points, "train/loss")
    assert read_curve(tmp_path / "missing.tsv", "loss") == []


def make_report(blob_records, tmp_path) -> str:
    grid_images = blob_grid(blob_records)
    from sdlab.reports import sample_grid

    grid = sample_grid(grid_images, [r["caption"] for r in blob_records[:8]], 4)
    sweep = sample_grid(grid_images[:4], ["guidance 1", "guidance 3", "guidance 5", "guidance 7.5"], 4, label_px=16)
    metrics = {"heldout_loss": 0.031, "adherence": {"skin_color": 0.98}, "fid_blob_judge": 12.5}
    page = report_html(
        metrics,
        grid,
        sweep=sweep,
        sweep_note="row 1: a prompt",
        curves={"train/loss": [(10, 1.0), (20, 0.5)]},
        params={"scheduler": "dpm_solver_multistep", "guidance_scale": 5.0},
    )
    (tmp_path / "report.html").write_text(page)
    return page


def test_report_is_one_self_contained_page(blob_records, tmp_path):
    page = make_report(blob_records, tmp_path)
    assert page.count("data:image/png;base64,") == 2
    assert not re.search(r'src="(?!data:)', page)  # nothing fetched from elsewhere
    assert "adherence.skin_color" in page and "0.98" in page and "<svg" in page


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed: `make install` installs it (Debian package chromium)"
    return found


def screenshot(page, tmp_path, name: str) -> np.ndarray:
    (tmp_path / f"{name}.html").write_text(page)
    shot = tmp_path / f"{name}.png"
    result = subprocess.run(
        [
            chromium(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            f"--user-data-dir={tmp_path / name}-profile",
            "--window-size=1100,1800",
            f"--screenshot={shot}",
            (tmp_path / f"{name}.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), result.stderr[-2000:]
    return np.asarray(Image.open(shot).convert("RGB")).astype(int)


def test_report_renders_in_headless_chromium_with_its_images(blob_records, tmp_path):
    page = make_report(blob_records, tmp_path)
    broken = re.sub(r"base64,[A-Za-z0-9+/=]{200}", "base64,AAAA", page)  # the same page, images undecodable
    saturated = {}
    for name, html in (("report", page), ("broken", broken)):
        pixels = screenshot(html, tmp_path, name)
        assert pixels.shape[:2] == (1800, 1100)
        saturated[name] = ((pixels.max(-1) - pixels.min(-1)) > 80).mean()  # the blobs' colors
    assert saturated["report"] > 0.005 and saturated["report"] > 10 * saturated["broken"]


def test_the_overview_says_what_curation_removed_by_reason():
    stats = {"input": 1200, "kept": 1000, "duplicates": 150, "near_duplicate_phash": 0}
    stats |= {"near_duplicate_embedding": 40, "clip_score_below": 10, "clip_score_missing": 3}
    lines = curation_lines(stats)
    assert lines == [
        "1,000 of 1,200 downloaded rows kept for training and validation.",
        "150 removed as exact duplicates (MD5).",
        "40 removed as near-duplicates by CLIP embedding.",
        "10 removed as below dedupe.min_clip_score (caption-image CLIP similarity).",
        "3 had no caption to score (kept).",
    ]
    page = Overview(curation=lines, curation_pairs=Image.new("RGB", (8, 4))).html()
    assert "What the training data lost to curation" in page and 'alt="near-duplicate pairs"' in page
    assert "curation" not in Overview().html()  # no dedupe report: no section
