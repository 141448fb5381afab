"""Picks the speech engine from settings; the pipeline knows nothing else about engines."""

from __future__ import annotations

from agent.engines.base import SpeechEngine
from common.settings import Settings


def create_engine(settings: Settings) -> SpeechEngine:
    if settings.chosen_stt_engine == "gladia":
        from agent.engines.gladia import GladiaEngine

        return GladiaEngine.from_settings(settings)
    from agent.engines.local import LocalEngine

    return LocalEngine.from_settings(settings)
