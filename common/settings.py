"""Configuration, read from the environment (and an optional `.env` file).

Every variable here is listed, with its default, in `.env.example`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # LiveKit
    livekit_url: str = "ws://127.0.0.1:7880"
    livekit_api_key: str = "devkey"
    livekit_api_secret: SecretStr = SecretStr("secret")
    # URL handed to browsers in token responses; defaults to LIVEKIT_URL.
    livekit_public_url: str | None = None
    # Agent name used for explicit dispatch: the API dispatches this agent to each room it creates.
    agent_name: str = "roomscribe-transcriber"

    # Agent worker: health/status HTTP port (0 = any free port), how many rooms one worker serves at
    # most, and how long it waits for an engine's finals when a track ends or the worker stops.
    agent_http_port: int = 8081
    agent_max_rooms: int = Field(default=50, ge=1)
    agent_flush_timeout: float = 5.0

    # Postgres
    database_url: str = "postgresql://roomscribe:roomscribe@127.0.0.1:5432/roomscribe"

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # Server-to-server key for management routes (Authorization: Bearer <key>). Unset: those routes refuse.
    roomscribe_api_key: SecretStr | None = None
    # HS256 secret the host application uses to vouch for signed-in users (JWT with sub and name).
    user_jwt_secret: SecretStr | None = None
    # Let anyone create sessions (the reference join page on a local machine). Off in production.
    public_session_creation: bool = False
    max_body_bytes: int = 64 * 1024
    token_ttl_seconds: int = 6 * 3600

    # Speech-to-text engine: gladia | local; unset picks gladia when GLADIA_API_KEY is set, else local.
    stt_engine: Literal["gladia", "local"] | None = None
    stt_languages: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["en"])
    stt_code_switching: bool = False
    stt_endpointing: float = 0.3
    stt_custom_vocabulary: Annotated[list[str], NoDecode] = Field(default_factory=list)

    gladia_api_key: SecretStr | None = None
    gladia_api_url: str = "https://api.gladia.io"
    gladia_region: str | None = None

    # Offline engine (PocketSphinx). Unset model path: the US English model shipped with pocketsphinx.
    local_model_path: str | None = None
    local_language: str = "en-us"
    # Decoder processes shared by all tracks of a room; each decodes on about one core.
    local_decoder_processes: int = 1

    log_level: str = "INFO"

    @field_validator("stt_languages", "stt_custom_vocabulary", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def public_livekit_url(self) -> str:
        return self.livekit_public_url or self.livekit_url

    @property
    def chosen_stt_engine(self) -> Literal["gladia", "local"]:
        if self.stt_engine is not None:
            return self.stt_engine
        return "gladia" if self.gladia_api_key is not None else "local"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
