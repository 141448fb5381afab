"""Room publisher: sends each transcript event to everyone in the room, on two channels.

- JSON on the data-channel topic `roomscribe.transcript` (reliable; split into numbered parts when a
  message would exceed LiveKit's reliable packet limit, never dropped);
- a LiveKit `lk.transcription` text stream attributed to the speaker, with the standard attributes, so
  LiveKit's own front-end components show captions with no custom code. Each partial and the final are a
  new stream carrying the whole text so far, with the same `lk.segment_id`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from livekit import rtc

from agent.transcript import DATA_TOPIC, Speaker, TranscriptEvent

logger = logging.getLogger("roomscribe.publisher")

TRANSCRIPTION_TOPIC = "lk.transcription"
ATTR_SEGMENT_ID = "lk.segment_id"
ATTR_TRACK_ID = "lk.transcribed_track_id"
ATTR_FINAL = "lk.transcription_final"
# Not LiveKit's: the speaker, for clients that want it without looking at the sender.
ATTR_SPEAKER_IDENTITY = "roomscribe.speaker_identity"
ATTR_SPEAKER_NAME = "roomscribe.speaker_name"

#: LiveKit's reliable data packets carry at most 15 KiB; keep headroom for the JSON envelope.
MAX_DATA_MESSAGE_BYTES = 14_000


def split_utf8(text: str, max_bytes: int) -> list[str]:
    """Split `text` into pieces of at most `max_bytes` UTF-8 bytes, never inside a character."""
    pieces: list[str] = []
    encoded = text.encode()
    while len(encoded) > max_bytes:
        cut = max_bytes
        while cut > 0 and (encoded[cut] & 0xC0) == 0x80:  # continuation byte: back up to a boundary
            cut -= 1
        pieces.append(encoded[:cut].decode())
        encoded = encoded[cut:]
    pieces.append(encoded.decode())
    return pieces


def data_messages(message: dict[str, Any]) -> list[bytes]:
    """Encode a message, splitting its text into numbered parts when it is too large for one packet."""
    whole = json.dumps(message, ensure_ascii=False).encode()
    if len(whole) <= MAX_DATA_MESSAGE_BYTES:
        return [whole]
    envelope = len(whole) - len(message["text"].encode()) + 64  # room for "part"/"parts"
    pieces = split_utf8(message["text"], MAX_DATA_MESSAGE_BYTES - envelope)
    return [
        json.dumps(
            {**message, "text": piece, "part": index, "parts": len(pieces)}, ensure_ascii=False
        ).encode()
        for index, piece in enumerate(pieces)
    ]


class RoomPublisher:
    """Publishes transcript events from the (hidden) agent to every participant of the room."""

    def __init__(self, room: rtc.Room) -> None:
        self._room = room

    async def publish(self, event: TranscriptEvent) -> bool:
        """Send the event on both channels; False (and a log line) if the room could not take it."""
        context = _log_context(event.speaker)
        try:
            for payload in data_messages(event.to_message()):
                await self._room.local_participant.publish_data(payload, reliable=True, topic=DATA_TOPIC)
            writer = await self._room.local_participant.stream_text(
                topic=TRANSCRIPTION_TOPIC,
                sender_identity=event.speaker.identity,
                attributes={
                    ATTR_SEGMENT_ID: event.segment_id,
                    ATTR_TRACK_ID: event.speaker.track_sid,
                    ATTR_FINAL: "true" if event.final else "false",
                    ATTR_SPEAKER_IDENTITY: event.speaker.identity,
                    ATTR_SPEAKER_NAME: event.speaker.name,
                },
            )
            await writer.write(event.text)
            await writer.aclose()
        except Exception as error:  # the FFI raises plain exceptions while the room is reconnecting
            logger.warning(
                "transcript not published",
                extra={**context, "segment": event.segment_id, "final": event.final, "error": str(error)},
            )
            return False
        return True

    async def publish_gap(self, speaker: Speaker, *, start: str, end: str, reason: str) -> None:
        """Tell the room that audio of this speaker was lost and will not be transcribed."""
        message = {
            "type": "gap",
            "room": speaker.room,
            "participant_identity": speaker.identity,
            "participant_name": speaker.name,
            "track_sid": speaker.track_sid,
            "start": start,
            "end": end,
            "reason": reason,
        }
        try:
            await self._room.local_participant.publish_data(
                json.dumps(message, ensure_ascii=False), reliable=True, topic=DATA_TOPIC
            )
        except Exception as error:
            logger.warning("gap not published", extra={**_log_context(speaker), "error": str(error)})


def _log_context(speaker: Speaker) -> dict[str, str]:
    return {"room": speaker.room, "participant": speaker.identity, "track": speaker.track_sid}
