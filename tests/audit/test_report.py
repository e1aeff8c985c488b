"""The HTML report: escaping, and rendering in a real headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from guardrail.audit.report import SessionSeries, build_report

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
ALERT_RED = (217, 45, 32)
AREA_BLUE = (199, 215, 254)
POLICY_ORANGE = (232, 89, 12)


def report_of(events: list[dict]) -> str:
    return build_report(
        lambda wanted, sessions: (
            e
            for e in events
            if e.get("event") in wanted
            and (sessions is None or e.get("session_id") in sessions)
        ),
        sources=["test.jsonl"],
        problems=list,
    )


def test_report_escapes_log_text():
    hostile = "<script>alert(1)</script>"
    events = [
        {
            "event": "request_completed",
            "session_id": hostile,
            "policy": "p",
            "request_id": "r",
            "blocked_mass_max": 0.5,
            "attribution": [
                {"kind": "invented_tool", "name": hostile, "max_mass": 0.4}
            ],
        },
        {
            "event": "blocked_mass_alert",
            "session_id": hostile,
            "kind": "invented_tool",
            "tool": hostile,
            "mass": 0.4,
            "timestamp": "2026-12-04T10:00:00Z",
            "untrusted_result": {"tool": "web", "excerpt": hostile},
        },
    ]

    page = report_of(events)

    assert "<script" not in page
    assert "&lt;script&gt;" in page


def test_series_pools_to_bounded_points():
    series = SessionSeries("s")
    for step in range(5000):
        series.add_step("r", (step % 100) / 100, 0.0)

    assert len(series.values()) <= 600
    assert max(series.values()) == pytest.approx(0.99)
    assert series.steps == 5000


def test_empty_report_renders():
    page = report_of([])

    assert "no decode steps in the selection" in page
    assert "no alerts" in page


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "Chromium is not installed; `make browser` installs Debian's chromium "
        "package (needs apt-get and root)"
    )


def run_chromium(chromium: str, profile: Path, *args: str) -> str:
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def count_near(image, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    return sum(
        count
        for count, pixel in image.getcolors(maxcolors=1 << 20)
        if all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))
    )


@pytest.mark.model
def test_report_renders_in_chromium(generated_events, tmp_path):
    from PIL import Image

    chromium = find_chromium()
    page = tmp_path / "report.html"
    page.write_text(report_of(generated_events), encoding="utf-8")
    screenshot = tmp_path / "report.png"

    run_chromium(
        chromium,
        tmp_path / "profile-shot",
        "--window-size=1280,2000",
        f"--screenshot={screenshot}",
        page.as_uri(),
    )
    dom = run_chromium(chromium, tmp_path / "profile-dom", "--dump-dom", page.as_uri())

    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1280, 2000)
    assert len(image.getcolors(maxcolors=1 << 20)) > 50
    assert count_near(image, AREA_BLUE) > 2000
    assert count_near(image, POLICY_ORANGE) > 100
    assert count_near(image, ALERT_RED) > 100
    assert dom.count("<svg") >= 6
    assert 'class="policy"' in dom
