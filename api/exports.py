"""Transcript export formats: JSON, plain text, SubRip (SRT) and WebVTT.

Segments come in spoken order (started_at, ended_at, id), every speaker interleaved. Cue times in text,
SRT and VTT are offsets from the first segment's start; JSON carries wall-clock times and offsets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from db.queries import SessionRow, TranscriptSegment

_SPACE = re.compile(r"\s+")


def speaker_name(segment: TranscriptSegment) -> str:
    return segment.participant_name or segment.participant_identity


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds")


def _offsets(segments: Sequence[TranscriptSegment]) -> list[tuple[float, float]]:
    if not segments:
        return []
    origin = segments[0].started_at
    result = []
    for segment in segments:
        start = max(0.0, (segment.started_at - origin).total_seconds())
        end = max(start, (segment.ended_at - origin).total_seconds())
        result.append((start, end))
    return result


def _one_line(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_json(session: SessionRow, segments: Sequence[TranscriptSegment]) -> dict[str, Any]:
    return {
        "session": {"slug": session.slug, "title": session.title, "status": session.status},
        "segments": [
            {
                "segment_key": segment.segment_key,
                "speaker": {"identity": segment.participant_identity, "name": segment.participant_name},
                "track_sid": segment.track_sid,
                "text": segment.text,
                "language": segment.language,
                "start": _iso(segment.started_at),
                "end": _iso(segment.ended_at),
                "start_offset": round(start, 3),
                "end_offset": round(end, 3),
                "confidence": segment.confidence,
                "words": segment.words,
            }
            for segment, (start, end) in zip(segments, _offsets(segments), strict=True)
        ],
    }


def to_txt(session: SessionRow, segments: Sequence[TranscriptSegment]) -> str:
    lines = [session.title]
    if segments:
        lines.append(f"Started {_iso(segments[0].started_at)}")
    lines.append("")
    for segment, (start, _end) in zip(segments, _offsets(segments), strict=True):
        lines.append(f"[{_clock(start, '.')[:8]}] {speaker_name(segment)}: {_one_line(segment.text)}")
    return "\n".join(lines) + "\n"


def to_srt(segments: Sequence[TranscriptSegment]) -> str:
    cues = []
    for number, (segment, (start, end)) in enumerate(zip(segments, _offsets(segments), strict=True), 1):
        text = f"{_one_line(speaker_name(segment))}: {_one_line(segment.text)}".replace("-->", "->")
        cues.append(f"{number}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n")
    return "\n".join(cues)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(segments: Sequence[TranscriptSegment]) -> str:
    cues = ["WEBVTT\n"]
    for segment, (start, end) in zip(segments, _offsets(segments), strict=True):
        voice = _vtt_escape(_one_line(speaker_name(segment)))
        text = _vtt_escape(_one_line(segment.text))
        cues.append(f"{_clock(start, '.')} --> {_clock(end, '.')}\n<v {voice}>{text}</v>\n")
    return "\n".join(cues)
