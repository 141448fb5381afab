"""The roomscribe HTTP API (aiohttp): sessions, tokens, participants, transcripts, LiveKit webhooks."""
