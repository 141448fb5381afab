"""Transcript events: what the pipeline publishes to the room and stores, in wall-clock time.

Engines report times on a track's audio clock (seconds of audio pushed). `AudioTimeline` maps that clock
to wall-clock time: audio arrives in real time, except across gaps (mute, a republished track, a
reconnect) where no frames come; each gap starts a new anchor, so one participant stays on one timeline.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.engines.base import Hypothesis, Word

DATA_TOPIC = "roomscribe.transcript"


class AudioTimeline:
    """Maps a stream's audio clock to wall-clock time."""

    #: A frame arriving this much later than the audio clock predicts starts a new anchor.
    GAP_THRESHOLD_S = 0.5
    _MAX_ANCHORS = 512

    def __init__(self) -> None:
        self._audio_positions: list[float] = []
        self._wall_times: list[float] = []
        self._position = 0.0

    @property
    def position(self) -> float:
        """Seconds of audio pushed so far."""
        return self._position

    def advance(self, duration: float, arrived_at: float) -> None:
        """Record `duration` seconds of audio whose last sample arrived at POSIX time `arrived_at`."""
        start_wall = arrived_at - duration
        if not self._wall_times or start_wall - self._predicted(self._position) > self.GAP_THRESHOLD_S:
            self._audio_positions.append(self._position)
            self._wall_times.append(start_wall)
            if len(self._audio_positions) > self._MAX_ANCHORS:
                del self._audio_positions[0], self._wall_times[0]
        self._position += duration

    def _predicted(self, audio_time: float) -> float:
        index = max(bisect.bisect_right(self._audio_positions, audio_time) - 1, 0)
        return self._wall_times[index] + (audio_time - self._audio_positions[index])

    def wall_time(self, audio_time: float) -> datetime:
        if not self._wall_times:
            return datetime.now(UTC)
        return datetime.fromtimestamp(self._predicted(audio_time), UTC)


@dataclass(frozen=True, slots=True)
class Speaker:
    room: str
    identity: str
    name: str
    track_sid: str


@dataclass(frozen=True, slots=True)
class TranscriptEvent:
    """A partial or final transcript of one utterance, as the room and the database see it."""

    segment_id: str
    speaker: Speaker
    text: str
    final: bool
    language: str | None
    start: datetime
    end: datetime
    confidence: float | None
    #: Word times in seconds from `start`.
    words: tuple[Word, ...]

    @classmethod
    def from_hypothesis(
        cls, hypothesis: Hypothesis, *, segment_prefix: str, speaker: Speaker, timeline: AudioTimeline
    ) -> TranscriptEvent:
        return cls(
            segment_id=f"{segment_prefix}_{hypothesis.utterance_id}",
            speaker=speaker,
            text=hypothesis.text,
            final=hypothesis.is_final,
            language=hypothesis.language,
            start=timeline.wall_time(hypothesis.start),
            end=timeline.wall_time(max(hypothesis.end, hypothesis.start)),
            confidence=hypothesis.confidence,
            words=tuple(
                Word(
                    word.text,
                    round(word.start - hypothesis.start, 3),
                    round(word.end - hypothesis.start, 3),
                    word.confidence,
                )
                for word in hypothesis.words
            ),
        )

    def words_json(self) -> list[dict[str, Any]]:
        return [
            {"word": word.text, "start": word.start, "end": word.end, "confidence": word.confidence}
            for word in self.words
        ]

    def to_message(self) -> dict[str, Any]:
        """The JSON message sent on the `roomscribe.transcript` data topic (before any splitting)."""
        return {
            "type": "transcript",
            "segment_id": self.segment_id,
            "room": self.speaker.room,
            "participant_identity": self.speaker.identity,
            "participant_name": self.speaker.name,
            "track_sid": self.speaker.track_sid,
            "language": self.language,
            "text": self.text,
            "final": self.final,
            "start": self.start.isoformat(timespec="milliseconds"),
            "end": self.end.isoformat(timespec="milliseconds"),
        }
