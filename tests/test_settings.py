"""Configuration: .env.example documents every setting, and lists are read from comma-separated values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.settings import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_engine_choice_follows_the_gladia_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STT_ENGINE", raising=False)
    monkeypatch.delenv("GLADIA_API_KEY", raising=False)
    assert Settings(_env_file=None).chosen_stt_engine == "local"  # type: ignore[call-arg]
    monkeypatch.setenv("GLADIA_API_KEY", "k")
    assert Settings(_env_file=None).chosen_stt_engine == "gladia"  # type: ignore[call-arg]
    monkeypatch.setenv("STT_ENGINE", "local")
    assert Settings(_env_file=None).chosen_stt_engine == "local"  # type: ignore[call-arg]


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_LANGUAGES", "en, fr,,de")
    monkeypatch.setenv("STT_CUSTOM_VOCABULARY", "LiveKit,Gladia")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.stt_languages == ["en", "fr", "de"]
    assert settings.stt_custom_vocabulary == ["LiveKit", "Gladia"]
