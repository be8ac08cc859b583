"""The HTML report in a real browser: headless Chromium renders it offline and the plots show.

Needs Debian's chromium (scripts/install_chromium.sh). Skipped with the reason when it is absent,
a failure when TINYSTUDENT_REQUIRE_SHARED=1 (as in CI).
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from test_report_study import realistic

from tinystudent.report import render_report


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        reason = "chromium is not installed (run scripts/install_chromium.sh)"
        if os.environ.get("TINYSTUDENT_REQUIRE_SHARED") == "1":
            pytest.fail(f"TINYSTUDENT_REQUIRE_SHARED=1 but {reason}")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    return render_report(realistic(), tmp_path_factory.mktemp("report"))["html"]


TEACHER_RED = (0xB2, 0x18, 0x2B)  # plots.TEACHER_COLOURS[0]
TAB_GREEN = (0x2C, 0xA0, 0x2C)  # matplotlib's tab10 green: the third objective's points


def plot_pixels(rgb: np.ndarray, colour: tuple[int, int, int], tolerance: int = 30) -> int:
    """How many pixels are within `tolerance` (0-255 per channel) of `colour`."""
    target = np.asarray(colour, dtype=np.float32) / 255
    return int((np.abs(rgb - target).max(axis=2) <= tolerance / 255).sum())


def read_png(data: bytes) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(data), format="png")


def screenshot(chromium: str, page, out, profile, width: int = 1200, height: int = 3000) -> np.ndarray:
    """Chromium's screenshot of `page` as an RGB(A) array; no network, no profile left behind."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--screenshot={out}",
        f"--window-size={width},{height}",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert out.is_file(), f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    return read_png(out.read_bytes())


def test_html_renders_in_headless_chromium_with_its_plots(chromium, report_html, tmp_path):
    shot = screenshot(chromium, report_html, tmp_path / "report.png", tmp_path / "profile")
    assert shot.shape[:2] == (3000, 1200)
    rgb = shot[..., :3]
    assert rgb.std() > 0.05, "the screenshot is blank"
    # Colours only the plots use: the measured teacher's line and the rationale:all points.
    assert plot_pixels(rgb, TEACHER_RED) > 600, "the measured teacher's line is not on the page"
    assert plot_pixels(rgb, TAB_GREEN) > 150, "the students' points are not on the page"


def test_page_without_its_plots_looks_different(chromium, report_html, tmp_path):
    """The colour check above really sees the plots: strip them and it fails."""
    bare = tmp_path / "bare.html"
    bare.write_text(
        re.sub(r'src="data:image/png;base64,[^"]+"', 'src=""', report_html.read_text("utf-8")), encoding="utf-8"
    )
    rgb = screenshot(chromium, bare, tmp_path / "bare.png", tmp_path / "profile")[..., :3]
    assert plot_pixels(rgb, TEACHER_RED) < 50 and plot_pixels(rgb, TAB_GREEN) < 50


def test_embedded_plots_decode_to_real_images(report_html):
    sources = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', report_html.read_text("utf-8"))
    assert len(sources) == 3
    for source in sources:
        image = read_png(base64.b64decode(source))
        height, width = image.shape[:2]
        assert width >= 600 and height >= 300
        assert image[..., :3].std() > 0.05
