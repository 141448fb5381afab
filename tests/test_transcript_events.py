"""Transcript events: wall-clock times across gaps, and messages split to fit LiveKit's limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from agent.engines.base import Hypothesis, Word
from agent.publisher import MAX_DATA_MESSAGE_BYTES, data_messages, split_utf8
from agent.transcript import AudioTimeline, Speaker, TranscriptEvent

SPEAKER = Speaker(room="r", identity="sip:+1 555/ü", name="Zoë", track_sid="TR_1")


def _seconds(moment: datetime) -> float:
    return moment.timestamp()


def test_audio_clock_maps_to_wall_clock_across_a_mute() -> None:
    timeline = AudioTimeline()
    for index in range(100):  # 1 s of 10 ms frames arriving in real time from t=1000
        timeline.advance(0.01, 1000.01 + index * 0.01)
    for index in range(100):  # unmuted 30 s later
        timeline.advance(0.01, 1031.01 + index * 0.01)
    assert abs(_seconds(timeline.wall_time(0.5)) - 1000.5) < 1e-6
    assert abs(_seconds(timeline.wall_time(1.5)) - 1031.5) < 1e-6
    assert abs(timeline.position - 2.0) < 1e-9


def test_jitter_below_the_gap_threshold_keeps_one_anchor() -> None:
    timeline = AudioTimeline()
    timeline.advance(0.01, 1000.01)
    timeline.advance(0.01, 1000.3)  # late by 0.28 s: network jitter, not a gap
    assert abs(_seconds(timeline.wall_time(0.015)) - 1000.015) < 1e-6


def test_segment_ids_and_relative_word_times() -> None:
    timeline = AudioTimeline()
    timeline.advance(5.0, 2000.0)
    hypothesis = Hypothesis(
        "00_00000003",
        "hello world",
        True,
        1.0,
        2.0,
        "en",
        0.9,
        (Word("hello", 1.0, 1.4), Word("world", 1.5, 2.0)),
    )
    event = TranscriptEvent.from_hypothesis(
        hypothesis, segment_prefix="SG_ab", speaker=SPEAKER, timeline=timeline
    )
    assert event.segment_id == "SG_ab_00_00000003"
    assert event.start == datetime.fromtimestamp(1996.0, UTC)
    assert [w["start"] for w in event.words_json()] == [0.0, 0.5]
    message = event.to_message()
    assert message["participant_identity"] == SPEAKER.identity and message["final"] is True


def test_split_utf8_never_cuts_a_character() -> None:
    text = "é" * 10 + "😀" * 10
    pieces = split_utf8(text, 7)
    assert "".join(pieces) == text
    assert all(len(piece.encode()) <= 7 for piece in pieces)


def test_long_text_is_split_into_numbered_messages_and_nothing_is_dropped() -> None:
    text = "It was the best of times, it was the worst of times. ☃ " * 800  # ~45 KB
    event_message = {"type": "transcript", "segment_id": "SG_1", "text": text, "final": True}
    payloads = data_messages(event_message)
    assert len(payloads) > 1
    assert all(len(payload) <= MAX_DATA_MESSAGE_BYTES for payload in payloads)
    parts = [json.loads(payload) for payload in payloads]
    assert [part["part"] for part in parts] == list(range(len(parts)))
    assert {part["parts"] for part in parts} == {len(parts)}
    assert "".join(part["text"] for part in parts) == text


def test_short_text_is_one_message() -> None:
    payloads = data_messages({"type": "transcript", "text": "short"})
    assert len(payloads) == 1 and "part" not in json.loads(payloads[0])
