"""Session fixtures for the real components: the LiveKit server, PostgreSQL and the API.

`scripts/test.sh` installs and starts what these need (it builds the pinned LiveKit server and makes sure
PostgreSQL answers at DATABASE_URL); these fixtures then start a LiveKit server of the test session's own
and the API on free loopback ports, and create a fresh database.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from livekit import api as lkapi
from pydantic import SecretStr

from common.settings import Settings
from tests.fakes.gladia_fake import GladiaFake
from tests.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
LIVEKIT_KEY, LIVEKIT_SECRET = "devkey", "secret"
ADMIN_KEY = "test-admin-key"
GLADIA_KEY = "test-gladia-key"
USER_JWT_SECRET = "test-user-secret"


def _ports_free(*ports: int) -> bool:
    for port, kind in zip(ports, (socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_DGRAM), strict=False):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _free_port_block() -> int:
    """A port whose next two are free too: LiveKit's HTTP/signal port, then its RTC TCP and UDP ports."""
    for _ in range(100):
        port = random.randrange(20_000, 60_000)
        if _ports_free(port, port + 1, port + 2):
            return port
    raise RuntimeError("no free ports on loopback")


# Chosen per test session, so that two test sessions (or a running stack) on one machine never collide.
LIVEKIT_PORT = _free_port_block()
API_PORT = _free_port_block()
LOCAL_API_PORT = API_PORT + 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that restart the LiveKit server last: every other test keeps a steady server."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_livekit") is not None)


@dataclass
class LiveKitServer:
    """A `livekit-server --dev` process on loopback, owned by the test session."""

    binary: Path
    config: Path
    log: Path
    port: int = LIVEKIT_PORT
    api_key: str = LIVEKIT_KEY
    api_secret: str = LIVEKIT_SECRET
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(self.binary), "--dev", "--config", str(self.config), stdout=log, stderr=log
            )
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                if self.process.returncode is not None:
                    raise RuntimeError(
                        f"livekit-server exited with {self.process.returncode}; see {self.log}"
                    )
                try:
                    async with http.get(self.http_url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"livekit-server did not answer on {self.http_url}; its log ends:\n{tail}")

    async def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        self.process = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def api(self) -> lkapi.LiveKitAPI:
        return lkapi.LiveKitAPI(self.http_url, self.api_key, self.api_secret)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def livekit_binary() -> Path:
    default = ROOT / ".tools" / "livekit-server-v1.13.5" / "server"
    binary = Path(os.environ.get("ROOMSCRIBE_LIVEKIT_SERVER", default))
    if not binary.exists():
        pytest.fail(f"no LiveKit server at {binary}: run the tests with scripts/test.sh, which builds it")
    return binary


@pytest.fixture(scope="session")
async def livekit_server(livekit_binary: Path, artifacts: Path) -> AsyncIterator[LiveKitServer]:
    config = artifacts / f"livekit-{LIVEKIT_PORT}.yaml"
    webhook = f"http://127.0.0.1:{API_PORT}/api/livekit/webhook"
    writer = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f'source "{ROOT}/scripts/lib.sh" && write_livekit_config "$@"',
        "_",
        str(config),
        str(LIVEKIT_PORT),
        webhook,
        env={**os.environ, "LIVEKIT_API_KEY": LIVEKIT_KEY, "LIVEKIT_API_SECRET": LIVEKIT_SECRET},
    )
    if await writer.wait() != 0:
        pytest.fail("could not write the LiveKit server config")
    server = LiveKitServer(
        binary=livekit_binary, config=config, log=artifacts / f"livekit-{LIVEKIT_PORT}.log"
    )
    await server.start()
    yield server
    await server.stop()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A fresh, migrated database for this test session, dropped at its end."""
    from db.migrate import migrate

    base = os.environ.get("DATABASE_URL", "postgresql://roomscribe:roomscribe@127.0.0.1:5432/roomscribe")
    name = f"roomscribe_test_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(base)
    except (OSError, asyncpg.PostgresError) as error:
        pytest.fail(f"PostgreSQL does not answer at {base} ({error}): run the tests with scripts/test.sh")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(base, name)
    await migrate(url)
    yield url
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def settings(database_url: str, livekit_server: LiveKitServer) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        livekit_url=livekit_server.url,
        livekit_api_key=livekit_server.api_key,
        livekit_api_secret=SecretStr(livekit_server.api_secret),
        database_url=database_url,
        api_host="127.0.0.1",
        api_port=API_PORT,
        roomscribe_api_key=SecretStr(ADMIN_KEY),
        user_jwt_secret=SecretStr(USER_JWT_SECRET),
        public_session_creation=False,
    )


@pytest.fixture(scope="session")
async def api_url(settings: Settings) -> AsyncIterator[str]:
    """The API, running in the test session's event loop."""
    from api.app import create_app

    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, settings.api_host, settings.api_port)
    await site.start()
    yield f"http://{settings.api_host}:{settings.api_port}"
    await runner.cleanup()


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="session")
def fixtures_dir() -> Iterator[Path]:
    yield FIXTURES


@pytest.fixture(scope="session")
async def gladia_fake() -> AsyncIterator[GladiaFake]:
    fake = GladiaFake(api_key=GLADIA_KEY)
    await fake.start()
    yield fake
    await fake.stop()


@dataclass
class AgentWorker:
    """`python -m agent start` as a child process, as it runs in production."""

    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent", "start", cwd=ROOT, env=self.env, stdout=log, stderr=log
            )
        for _ in range(600):
            if self.process.returncode is not None:
                raise RuntimeError(f"agent worker exited ({self.process.returncode}); see {self.log}")
            with self.log.open("rb") as log:
                log.seek(offset)
                if b"registered worker" in log.read():
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"agent worker did not register; see {self.log}")

    async def stop(self, sig: int = signal.SIGTERM, within: float = 60) -> int:
        """Signal the worker and wait for it to exit; returns its exit code."""
        if self.process is None:
            return 0
        if self.process.returncode is None:
            self.process.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        self.process = None
        return code

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for_log(self, *fragments: str, count: int = 1, within: float = 60) -> None:
        """Wait until `count` log lines contain every one of `fragments`."""
        for _ in range(int(within * 10)):
            lines = self.log_text().splitlines()
            if sum(1 for line in lines if all(fragment in line for fragment in fragments)) >= count:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the agent worker did not log {fragments!r} {count} time(s) within {within} s")


def agent_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LIVEKIT_", "GLADIA_", "STT_", "AGENT_", "LOCAL_", "DATABASE_URL"))
    }
    env.update(
        LIVEKIT_URL=settings.livekit_url,
        LIVEKIT_API_KEY=settings.livekit_api_key,
        LIVEKIT_API_SECRET=settings.livekit_api_secret.get_secret_value(),
        DATABASE_URL=settings.database_url,
        AGENT_NAME=settings.agent_name,
        AGENT_HTTP_PORT="0",
        LOG_LEVEL="INFO",
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
async def database_proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    """The agent worker reaches Postgres through this proxy, so a test can make the database unreachable."""
    parts = urlsplit(database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.stop()


def _through_proxy(database_url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(database_url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}"))


@pytest.fixture(scope="session")
async def agent_worker(
    settings: Settings, gladia_fake: GladiaFake, database_proxy: TcpProxy, api_url: str, artifacts: Path
) -> AsyncIterator[AgentWorker]:
    """The transcription worker, on the Gladia fake, serving every room the test API creates."""
    env = agent_env(
        settings,
        STT_ENGINE="gladia",
        GLADIA_API_KEY=GLADIA_KEY,
        GLADIA_API_URL=gladia_fake.base_url,
        DATABASE_URL=_through_proxy(settings.database_url, database_proxy),
    )
    worker = AgentWorker(env=env, log=artifacts / f"agent-worker-{LIVEKIT_PORT}.log")
    await worker.start()
    yield worker
    await worker.stop()


LOCAL_AGENT_NAME = "roomscribe-local"


@pytest.fixture(scope="session")
async def local_api_url(settings: Settings) -> AsyncIterator[str]:
    """A second API on the same LiveKit server and database, whose rooms go to the offline-engine worker.

    Rooms are dispatched by agent name, so the two workers of the test session never share a room.
    """
    from api.app import create_app

    local_settings = settings.model_copy(
        update={"agent_name": LOCAL_AGENT_NAME, "api_port": LOCAL_API_PORT, "public_session_creation": True}
    )
    runner = web.AppRunner(create_app(local_settings))
    await runner.setup()
    await web.TCPSite(runner, local_settings.api_host, LOCAL_API_PORT).start()
    yield f"http://{local_settings.api_host}:{LOCAL_API_PORT}"
    await runner.cleanup()


@pytest.fixture(scope="session")
async def local_agent_worker(
    settings: Settings, local_api_url: str, artifacts: Path
) -> AsyncIterator[AgentWorker]:
    """The transcription worker on the offline engine (PocketSphinx), as with no Gladia key."""
    env = agent_env(settings, STT_ENGINE="local", AGENT_NAME=LOCAL_AGENT_NAME)
    worker = AgentWorker(env=env, log=artifacts / f"agent-worker-local-{LIVEKIT_PORT}.log")
    await worker.start()
    yield worker
    await worker.stop()
