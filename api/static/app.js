// roomscribe join page: create or open a session, join its LiveKit room, publish the microphone,
// and show live captions from the `lk.transcription` text streams that the hidden agent publishes.
// No audio processing here: the agent transcribes server-side. Plain ES module, no build step.
import { Room, RoomEvent } from "/vendor/livekit-client.esm.mjs";

const TOPIC = "lk.transcription";
const NAME_KEY = "roomscribe.display_name";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  sessionTitle: $("session-title"),
  create: $("create"),
  createForm: $("create-form"),
  title: $("title"),
  join: $("join"),
  joinForm: $("join-form"),
  displayName: $("display-name"),
  room: $("room"),
  mute: $("mute"),
  leave: $("leave"),
  captions: $("captions"),
  captionsEmpty: $("captions-empty"),
  participants: $("participants"),
  transcript: $("transcript"),
  transcriptList: $("transcript-list"),
  transcriptEmpty: $("transcript-empty"),
  refreshTranscript: $("refresh-transcript"),
};

const state = {
  slug: null,
  room: null,
  leaving: false,
  // segment id -> {li, seq, final}; seq is the order in which the streams' headers arrived.
  segments: new Map(),
  nextSeq: 0,
  transcriptTimer: null,
};

function setStatus(text, kind = "info") {
  ui.status.textContent = text;
  ui.status.dataset.kind = kind;
}

function show(section, visible) {
  section.hidden = !visible;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data?.error?.message ?? `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return data;
}

function slugFromPath() {
  const match = /^\/s\/([^/]+)\/?$/.exec(location.pathname);
  return match ? decodeURIComponent(match[1]) : null;
}

// ---------------------------------------------------------------- session: create / open

async function openSession(slug) {
  state.slug = slug;
  show(ui.create, false);
  setStatus("Opening the session…");
  let session;
  try {
    session = await api("GET", `/api/sessions/${encodeURIComponent(slug)}`);
  } catch (error) {
    setStatus(error.status === 404 ? "No such session. Check the link." : `Could not open the session: ${error.message}`, "error");
    return;
  }
  document.title = `${session.title} · roomscribe`;
  ui.sessionTitle.textContent = session.title;
  show(ui.sessionTitle, true);
  setDownloadLinks(slug);
  show(ui.transcript, true);
  if (session.status && session.status !== "active") {
    setStatus(`This session is ${session.status}.`);
  } else {
    setStatus("Enter your name and join.");
  }
  show(ui.join, true);
  ui.displayName.value = localStorage.getItem(NAME_KEY) ?? "";
  ui.displayName.focus();
  loadTranscript();
}

ui.createForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = ui.createForm.querySelector("button");
  button.disabled = true;
  setStatus("Creating the session…");
  try {
    const session = await api("POST", "/api/sessions", { title: ui.title.value.trim() });
    history.pushState({}, "", session.join_path ?? `/s/${encodeURIComponent(session.slug)}`);
    await openSession(session.slug);
  } catch (error) {
    setStatus(`Could not create the session: ${error.message}`, "error");
  } finally {
    button.disabled = false;
  }
});

// ---------------------------------------------------------------- the room

ui.joinForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = ui.joinForm.querySelector("button");
  const name = ui.displayName.value.trim();
  if (!name) return;
  button.disabled = true;
  try {
    await joinRoom(name);
  } finally {
    button.disabled = false;
  }
});

async function joinRoom(displayName) {
  setStatus("Joining…");
  let grant;
  try {
    grant = await api("POST", `/api/sessions/${encodeURIComponent(state.slug)}/token`, {
      display_name: displayName,
    });
  } catch (error) {
    setStatus(`Could not join: ${error.message}`, "error");
    return;
  }
  localStorage.setItem(NAME_KEY, displayName);

  // Captions only: other people's audio is not played here, so nothing needs subscribing.
  const room = new Room({ adaptiveStream: false, dynacast: false });
  state.room = room;
  state.leaving = false;
  state.segments.clear();
  ui.captions.replaceChildren();
  show(ui.captionsEmpty, true);

  // Registered once per Room: it survives reconnects, so captions keep coming without a reload.
  room.registerTextStreamHandler(TOPIC, (reader, participantInfo) => {
    onTranscriptionStream(room, reader, participantInfo).catch((error) =>
      console.warn("roomscribe: caption stream failed", error),
    );
  });
  room
    .on(RoomEvent.ParticipantConnected, renderParticipants)
    .on(RoomEvent.ParticipantDisconnected, renderParticipants)
    .on(RoomEvent.ParticipantNameChanged, renderParticipants)
    .on(RoomEvent.TrackMuted, renderParticipants)
    .on(RoomEvent.TrackUnmuted, renderParticipants)
    .on(RoomEvent.TrackPublished, renderParticipants)
    .on(RoomEvent.TrackUnpublished, renderParticipants)
    .on(RoomEvent.LocalTrackPublished, renderParticipants)
    .on(RoomEvent.LocalTrackUnpublished, renderParticipants)
    .on(RoomEvent.Reconnecting, () => setStatus("Reconnecting…", "warn"))
    .on(RoomEvent.SignalReconnecting, () => setStatus("Reconnecting…", "warn"))
    .on(RoomEvent.Reconnected, () => {
      setStatus(connectedStatus(room));
      renderParticipants();
    })
    .on(RoomEvent.Disconnected, () => onDisconnected(room));

  try {
    await room.connect(grant.url, grant.token, { autoSubscribe: false });
  } catch (error) {
    state.room = null;
    setStatus(`Could not connect to the room: ${error.message}`, "error");
    return;
  }
  show(ui.join, false);
  show(ui.room, true);
  renderParticipants();
  setStatus(connectedStatus(room));
  ui.leave.focus();

  // The mute button waits for the microphone: a click before it is published would enable it again.
  ui.mute.disabled = true;
  try {
    await room.localParticipant.setMicrophoneEnabled(true);
    setMuteButton(false);
  } catch (error) {
    setMuteButton(true);
    setStatus(`Connected, but the microphone is unavailable (${error.message}). You can still read captions.`, "warn");
  } finally {
    ui.mute.disabled = false;
  }
  renderParticipants();
}

function connectedStatus(room) {
  const name = room.localParticipant.name || room.localParticipant.identity;
  return `Connected as ${name}.`;
}

function onDisconnected(room) {
  if (state.room !== room) return;
  state.room = null;
  show(ui.room, false);
  show(ui.join, true);
  setStatus(state.leaving ? "You left the session." : "Disconnected from the session. Join again to continue.", state.leaving ? "info" : "warn");
  loadTranscript();
}

ui.leave.addEventListener("click", async () => {
  if (!state.room) return;
  state.leaving = true;
  ui.leave.disabled = true;
  try {
    await state.room.disconnect();
  } finally {
    ui.leave.disabled = false;
  }
});

function setMuteButton(muted) {
  ui.mute.setAttribute("aria-pressed", String(muted));
  ui.mute.textContent = muted ? "Unmute microphone" : "Mute microphone";
}

ui.mute.addEventListener("click", async () => {
  const room = state.room;
  if (!room) return;
  const enable = !room.localParticipant.isMicrophoneEnabled;
  ui.mute.disabled = true;
  try {
    await room.localParticipant.setMicrophoneEnabled(enable);
    setMuteButton(!enable);
  } catch (error) {
    setStatus(`Microphone: ${error.message}`, "error");
  } finally {
    ui.mute.disabled = false;
  }
  renderParticipants();
});

// ---------------------------------------------------------------- participants

function renderParticipants() {
  const room = state.room;
  if (!room) return;
  const people = [room.localParticipant, ...room.remoteParticipants.values()];
  const items = people.map((p) => {
    const li = document.createElement("li");
    li.dataset.identity = p.identity;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = p.name || p.identity;
    li.append(name);
    const notes = [];
    if (p === room.localParticipant) notes.push("you");
    const mic = p.getTrackPublication?.("microphone");
    if (!mic || mic.isMuted) notes.push("muted");
    if (notes.length) {
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = ` (${notes.join(", ")})`;
      li.append(note);
    }
    return li;
  });
  ui.participants.replaceChildren(...items);
}

function speakerName(room, attributes, senderIdentity) {
  if (attributes["roomscribe.speaker_name"]) return attributes["roomscribe.speaker_name"];
  const identity = attributes["roomscribe.speaker_identity"] || senderIdentity;
  if (room.localParticipant.identity === identity) return room.localParticipant.name || identity;
  const remote = room.remoteParticipants.get(identity);
  return remote?.name || identity;
}

// ---------------------------------------------------------------- captions

async function onTranscriptionStream(room, reader, participantInfo) {
  const seq = state.nextSeq++;
  const text = await reader.readAll();
  // Attributes from the stream's trailer are merged into info when it closes, so read them now.
  const attributes = reader.info.attributes ?? {};
  const segmentId = attributes["lk.segment_id"] || reader.info.id;
  const final = attributes["lk.transcription_final"] === "true";
  const speakerIdentity = attributes["roomscribe.speaker_identity"] || participantInfo.identity;
  upsertCaption({
    segmentId,
    seq,
    final,
    text,
    speaker: speakerName(room, attributes, participantInfo.identity),
    speakerIdentity,
  });
  if (final) scheduleTranscriptRefresh();
}

function upsertCaption({ segmentId, seq, final, text, speaker, speakerIdentity }) {
  let entry = state.segments.get(segmentId);
  if (entry) {
    // Each update carries the whole text so far: keep the newest, and never turn a final back.
    if (entry.final && !final) return;
    if (!final && seq < entry.seq) return;
  } else {
    const li = document.createElement("li");
    li.dataset.testid = "caption";
    li.dataset.segmentId = segmentId;
    const who = document.createElement("span");
    who.className = "speaker";
    const what = document.createElement("span");
    what.className = "text";
    li.append(who, what);
    entry = { li, seq, final: false };
    state.segments.set(segmentId, entry);
    const stick = isScrolledToEnd(ui.captions);
    ui.captions.append(li);
    show(ui.captionsEmpty, false);
    if (stick) ui.captions.scrollTop = ui.captions.scrollHeight;
  }
  entry.seq = Math.max(entry.seq, seq);
  entry.final = final;
  const { li } = entry;
  li.dataset.final = String(final);
  li.dataset.speaker = speaker;
  li.dataset.speakerIdentity = speakerIdentity;
  // A partial is still changing: ask assistive technology to wait for the final text.
  if (final) li.removeAttribute("aria-busy");
  else li.setAttribute("aria-busy", "true");
  li.querySelector(".speaker").textContent = `${speaker}: `;
  li.querySelector(".text").textContent = text;
}

function isScrolledToEnd(element) {
  return element.scrollHeight - element.scrollTop - element.clientHeight < 40;
}

// ---------------------------------------------------------------- stored transcript

function setDownloadLinks(slug) {
  for (const format of ["txt", "srt", "vtt"]) {
    const link = $(`download-${format}`);
    link.href = `/api/sessions/${encodeURIComponent(slug)}/transcript?format=${format}`;
    link.setAttribute("download", `transcript-${slug}.${format}`);
  }
}

function scheduleTranscriptRefresh() {
  // Finals are stored in batches by the agent: refresh a little after the last one.
  clearTimeout(state.transcriptTimer);
  state.transcriptTimer = setTimeout(loadTranscript, 3000);
}


function formatTime(value) {
  if (value === null || value === undefined || value === "") return "";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

async function loadTranscript() {
  if (!state.slug) return;
  let data;
  try {
    data = await api("GET", `/api/sessions/${encodeURIComponent(state.slug)}/transcript?format=json`);
  } catch (error) {
    ui.transcriptEmpty.textContent = `Could not load the transcript: ${error.message}`;
    show(ui.transcriptEmpty, true);
    return;
  }
  const segments = data?.segments ?? [];
  const items = segments.map((segment) => {
    const li = document.createElement("li");
    li.dataset.testid = "transcript-segment";
    const time = document.createElement("time");
    const start = segment.start;
    if (start !== undefined && start !== null) time.dateTime = String(start);
    time.textContent = formatTime(start);
    const who = document.createElement("span");
    who.className = "speaker";
    // The export's JSON: {session, segments: [{speaker: {identity, name}, text, start, end, ...}]}.
    const speaker = segment.speaker?.name || segment.speaker?.identity || "";
    li.dataset.speaker = speaker;
    who.textContent = `${speaker}: `;
    const what = document.createElement("span");
    what.className = "text";
    what.textContent = segment.text ?? "";
    li.append(time, " ", who, what);
    return li;
  });
  ui.transcriptList.replaceChildren(...items);
  ui.transcriptEmpty.textContent = "No final captions stored yet.";
  show(ui.transcriptEmpty, items.length === 0);
}

ui.refreshTranscript.addEventListener("click", loadTranscript);

// ---------------------------------------------------------------- start

function route() {
  const slug = slugFromPath();
  if (slug) {
    openSession(slug);
  } else {
    state.slug = null;
    show(ui.join, false);
    show(ui.transcript, false);
    show(ui.sessionTitle, false);
    show(ui.create, true);
    setStatus("Create a session, then share its link.");
    ui.title.focus();
  }
}

window.addEventListener("popstate", () => {
  if (!state.room) route();
});

// For tests and debugging: the current Room (read-only use).
Object.defineProperty(window, "roomscribe", {
  value: Object.freeze({
    get room() {
      return state.room;
    },
  }),
});

route();
