"""Cutting the caption stream into events, and the budget that bounds what reaches the SD card."""

from __future__ import annotations

import numpy as np

from daemon.captioner import CaptionResult
from daemon.history.events import EventBudget, EventTracker, encode_thumbnail
from daemon.imaging import decode_png

IMAGE = np.zeros((4, 4, 3), np.uint8)


def feed(tracker: EventTracker, captions: str) -> list[tuple[str, str, int, float, float]]:
    """Captions as letters, one frame each 0.5 s; (change, caption, frames, start, end) of what came out."""
    out = []
    for i, letter in enumerate(captions):
        result = CaptionResult(letter, [1], [letter], -0.1)
        for change, event in tracker.observe(i + 1, 100 + i * 0.5, IMAGE, result):
            out.append((change, event.caption, event.frames, event.start, event.end))
    return out


def test_a_one_frame_flicker_makes_no_event():
    tracker = EventTracker(hold_frames=2)
    assert feed(tracker, "AAABAA") == [("opened", "A", 1, 100.0, 100.0)]
    assert tracker.current.frames == 6 and tracker.current.end == 102.5


def test_every_new_caption_of_a_scene_stream_is_an_event_one_frame_later():
    out = feed(EventTracker(hold_frames=2), "ABCD")
    assert out == [("opened", "A", 1, 100.0, 100.0),
                   ("closed", "A", 1, 100.0, 100.5), ("opened", "B", 1, 100.5, 100.5),
                   ("closed", "B", 1, 100.5, 101.0), ("opened", "C", 1, 101.0, 101.0)]


def test_a_caption_held_for_hold_frames_starts_an_event_where_it_appeared():
    out = feed(EventTracker(hold_frames=3), "AAABBBA")
    assert out[1:] == [("closed", "A", 3, 100.0, 101.5), ("opened", "B", 3, 101.5, 102.5)]
    assert feed(EventTracker(hold_frames=3), "AABBA") == [("opened", "A", 1, 100.0, 100.0)]  # 2 < 3: a flicker


def test_event_ids_grow_even_when_the_clock_goes_back():
    tracker = EventTracker(hold_frames=1, first_id=10**13)
    ids = [e.event_id for change, e in
           (c for i, letter in enumerate("ABC")
            for c in tracker.observe(i, 50.0 - i, IMAGE, CaptionResult(letter, [1], [letter], 0.0)))
           if change == "opened"]
    assert ids == [10**13 + 1, 10**13 + 2, 10**13 + 3]


def test_budget_lets_ten_through_at_once_then_the_hourly_rate():
    now = [0.0]
    budget = EventBudget(events_per_hour=120, frame_bytes_per_day=86_400_000, clock=lambda: now[0])
    assert sum(budget.take_event() for _ in range(50)) == 10
    now[0] = 300.0  # five minutes: 10 more at 120 an hour
    assert sum(budget.take_event() for _ in range(50)) == 10
    assert budget.take_frame_bytes(3_600_000) and not budget.take_frame_bytes(1)  # an hour's worth, then none
    now[0] += 1.0
    assert budget.take_frame_bytes(1000) and not budget.take_frame_bytes(1)


def test_the_thumbnail_is_a_small_jpeg_of_the_frame():
    rgb = np.zeros((224, 224, 3), np.uint8)
    rgb[:, :112] = (255, 0, 0)
    thumb = decode_png(encode_thumbnail(rgb, 128))  # OpenCV reads a JPEG as it reads a PNG
    assert thumb.shape == (128, 128, 3) and thumb[64, 10, 0] > 200 and thumb[64, 120, 0] < 50
