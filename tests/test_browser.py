"""The join page in a real browser (Debian's Chromium, driven by Playwright) against the real LiveKit
server, the API and the offline-engine agent: a speaker's microphone is a WAV fixture, and every page in
the room shows that speaker's captions, partials turning final, from the `lk.transcription` text streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import api as lkapi
from playwright.async_api import Browser, BrowserContext, Locator, Page, async_playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from tests.conftest import AgentWorker, LiveKitServer

pytestmark = [pytest.mark.browser, pytest.mark.livekit]

CHROMIUM = Path("/usr/bin/chromium")
# Words of the fixture's opening ("It was the best of times, it was the worst of times, it was the age of
# wisdom..."). The offline engine is imperfect: any one of them in a final is enough.
FIXTURE_WORDS = ("times", "best", "worst", "wisdom")
ANY_FIXTURE_WORD = re.compile(r"\b(" + "|".join(FIXTURE_WORDS) + r")\b", re.IGNORECASE)

# Records what the caption list and the status line went through, so that short-lived states (a partial
# before its final, "Reconnecting…") can be asserted after the fact.
OBSERVE = """() => {
  const seen = { partial: [], final: [], statuses: [] };
  const record = (li) => {
    const id = li.dataset.segmentId;
    if (!id) return;
    const list = li.dataset.final === "true" ? seen.final : seen.partial;
    if (!list.includes(id)) list.push(id);
  };
  new MutationObserver(() => {
    document.querySelectorAll('[data-testid="caption"]').forEach(record);
  }).observe(document.querySelector('[data-testid="captions"]'), {
    subtree: true, childList: true, attributes: true, attributeFilter: ["data-final"], characterData: true,
  });
  const status = document.querySelector('[data-testid="status"]');
  new MutationObserver(() => seen.statuses.push(status.textContent)).observe(status, {
    subtree: true, childList: true, characterData: true,
  });
  window.__seen = seen;
}"""


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run the tests with scripts/test.sh, which installs it")
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium: Path, fixtures_dir: Path) -> AsyncIterator[Browser]:
    wav = fixtures_dir / "two_cities_48k.wav"  # 48 kHz mono 16-bit, played in a loop
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}",
                # Chrome's strict policy, stated explicitly: the page must not depend on autoplay
                # (the old browser-capture design stalled on it).
                "--autoplay-policy=document-user-activation-required",
            ],
        )
        yield browser
        await browser.close()


async def new_page(browser: Browser, contexts: list[BrowserContext], problems: list[str]) -> Page:
    """A page in a browser context of its own (its own storage: another person), collecting page errors."""
    context = await browser.new_context(viewport={"width": 1100, "height": 760})
    contexts.append(context)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
    return page


async def join(page: Page, url: str, name: str) -> None:
    await page.goto(url)
    await page.get_by_label("Your name").fill(name)
    await page.get_by_role("button", name="Join").click()
    await expect(page.get_by_test_id("status")).to_have_text(f"Connected as {name}.")
    await page.evaluate(OBSERVE)


def captions(page: Page, speaker: str, *, final: bool) -> Locator:
    return page.locator(
        f'[data-testid="caption"][data-speaker="{speaker}"][data-final="{str(final).lower()}"]'
    )


async def wait_for_transcriber(livekit_server: LiveKitServer, room: str, within: float = 10) -> None:
    """The hidden agent is in the room (the server's API lists hidden participants too)."""
    async with livekit_server.api() as livekit:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            listing = await livekit.room.list_participants(lkapi.ListParticipantsRequest(room=room))
            if any(p.kind == lkapi.ParticipantInfo.AGENT for p in listing.participants):
                return
            await asyncio.sleep(0.2)
    raise AssertionError(
        f"no transcriber joined room {room} within {within} s; see the agent worker's and LiveKit's logs"
        " in test-artifacts/"
    )


async def wait_for_final_with_fixture_word(page: Page, speaker: str, within: float) -> str:
    """The text of `speaker`'s first final caption on `page` that has a word of the fixture."""
    finals = captions(page, speaker, final=True)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for text in await finals.locator(".text").all_text_contents():
            if ANY_FIXTURE_WORD.search(text):
                return text
        await page.wait_for_timeout(250)
    texts = await page.get_by_test_id("captions").inner_text()
    raise AssertionError(f"no final caption of {speaker} with a fixture word within {within} s: {texts!r}")


async def test_page_shows_live_captions_to_everyone_across_a_reconnect_and_the_transcript(
    browser: Browser,
    local_api_url: str,
    local_agent_worker: AgentWorker,
    livekit_server: LiveKitServer,
    artifacts: Path,
) -> None:
    contexts: list[BrowserContext] = []
    problems: list[str] = []
    try:
        # Ada creates a session from the start page and joins it: her microphone is the fixture.
        ada = await new_page(browser, contexts, problems)
        await ada.goto(f"{local_api_url}/")
        await ada.get_by_label("Title").fill("Browser test")
        await ada.get_by_role("button", name="Create session").click()
        await expect(ada).to_have_url(re.compile(r"/s/[A-Za-z0-9_-]+$"))
        session_url = ada.url
        await expect(ada.get_by_test_id("session-title")).to_have_text("Browser test")
        await wait_for_transcriber(livekit_server, session_url.rsplit("/", 1)[1])
        await join(ada, session_url, "Ada")

        # Grace opens the link in her own browser context, joins and mutes: she only reads.
        grace = await new_page(browser, contexts, problems)
        await join(grace, session_url, "Grace")
        await grace.get_by_role("button", name="Mute microphone").click()
        await expect(grace.get_by_role("button", name="Unmute microphone")).to_have_attribute(
            "aria-pressed", "true"
        )

        # Both see both people, and only them: the transcribing agent is hidden.
        for page in (ada, grace):
            people = page.get_by_test_id("participants").locator("li")
            await expect(people).to_have_count(2)
            await expect(people.filter(has_text="Ada")).to_have_count(1)
            await expect(people.filter(has_text="Grace")).to_have_count(1)

        # Ada's captions, named for her, reach her page and Grace's; partials turn final in place.
        await wait_for_final_with_fixture_word(ada, "Ada", within=45)
        await wait_for_final_with_fixture_word(grace, "Ada", within=10)
        for page in (ada, grace):
            captions_list = page.get_by_test_id("captions")
            await expect(captions_list).to_have_attribute("aria-live", "polite")
            seen = await page.evaluate("window.__seen")
            assert seen["partial"], "no partial caption was shown"
            assert set(seen["partial"]) & set(seen["final"]), "no partial turned final in place"
            ids = await captions_list.locator('[data-testid="caption"]').evaluate_all(
                "items => items.map(li => li.dataset.segmentId)"
            )
            assert len(ids) == len(set(ids)), "a segment is shown twice"

        # Grace's connection drops and comes back (the SDK's own reconnect simulation: the signal socket
        # closes and the client rejoins): her page says so, then captions continue without a reload.
        await grace.evaluate("window.roomscribe.room.simulateScenario('full-reconnect')")
        await grace.wait_for_function("window.__seen.statuses.includes('Reconnecting…')")
        await expect(grace.get_by_test_id("status")).to_have_text("Connected as Grace.")
        ada_finals = captions(grace, "Ada", final=True)
        segment_ids = "items => items.map(li => li.dataset.segmentId)"
        before = set(await ada_finals.evaluate_all(segment_ids))
        deadline = time.monotonic() + 30
        while not set(await ada_finals.evaluate_all(segment_ids)) - before:
            assert time.monotonic() < deadline, "no new final caption of Ada after the reconnect"
            await grace.wait_for_timeout(250)
        await expect(grace.get_by_test_id("participants").locator("li")).to_have_count(2)

        # The picture shows what a person sees mid-sentence: finals and, most of the time, a partial.
        with contextlib.suppress(PlaywrightTimeoutError):
            await captions(ada, "Ada", final=False).first.wait_for(timeout=5_000)
        await ada.screenshot(path=str(artifacts / "browser-captions.png"), full_page=True)

        # Ada leaves; her page shows the stored transcript: her finals, under her name.
        await ada.get_by_role("button", name="Leave").click()
        await expect(ada.get_by_test_id("status")).to_have_text("You left the session.")
        await expect(grace.get_by_test_id("participants").locator("li")).to_have_count(1)
        transcript = ada.get_by_test_id("transcript").locator('[data-testid="transcript-segment"]')
        ada_segments = transcript.and_(ada.locator('[data-speaker="Ada"]'))
        deadline = time.monotonic() + 15
        while not await ada_segments.filter(has_text=ANY_FIXTURE_WORD).count():
            assert time.monotonic() < deadline, await ada.get_by_test_id("transcript").inner_text()
            await ada.wait_for_timeout(500)
            await ada.get_by_role("button", name="Refresh transcript").click()
        speakers = await transcript.evaluate_all("items => items.map(li => li.dataset.speaker)")
        assert "Ada" in speakers and set(speakers) <= {"Ada", "Grace"}, speakers
        for fmt in ("txt", "srt", "vtt"):
            href = await ada.get_by_test_id(f"download-{fmt}").get_attribute("href")
            assert href and href.endswith(f"/transcript?format={fmt}"), href
            response = await ada.request.get(f"{local_api_url}{href}")
            assert response.ok and "Ada" in await response.text(), fmt
        assert not problems, problems
    finally:
        for context in contexts:
            await context.close()
