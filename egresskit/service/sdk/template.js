// egresskit's custom template SDK, for pages that render an embedded egresskit room.
//
// egresskit opens a custom template at `{custom_base_url}?url=...&layout=...&token=...`:
// `url` is egresskit's own address, `layout` the requested layout, `token` a subscribe
// token for the room. This module lists the room's publishers, plays each one over WHEP
// (the browser gets the publisher's own encoded media, nothing is re-encoded) and logs the
// two console lines egresskit records by: START_RECORDING and END_RECORDING.
//
//   import { TemplateRoom, startRecording } from "http://egresskit:7880/sdk/template.js";
//   const room = new TemplateRoom();
//   room.onChange((participants) => { /* draw each participant's .stream */ });
//   await room.connect();
//   startRecording();

const params = new URLSearchParams(location.search);

export const serverUrl = (params.get("url") || "").replace(/\/+$/, "");
export const token = params.get("token") || "";
/** The layout asked for: the start request's, then each UpdateLayout's. */
export let layout = params.get("layout") || params.get("template") || "grid";
const layoutListeners = [];

// egresskit dispatches this event on UpdateLayout
window.addEventListener("egresskit:layout", (event) => {
  layout = event.detail;
  for (const listener of layoutListeners) listener(layout);
});

/** `listener(layout)` on every UpdateLayout of the egress. */
export function onLayoutChanged(listener) {
  layoutListeners.push(listener);
}

function claims(jwt) {
  const part = (jwt.split(".")[1] || "").replace(/-/g, "+").replace(/_/g, "/");
  try {
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

export const roomName = (claims(token).video || {}).room || "";

/** Recording starts here (egresskit waits for this line). */
export function startRecording() {
  console.log("START_RECORDING");
}

/** Recording ends here: the egress completes. */
export function endRecording() {
  console.log("END_RECORDING");
}

function gathered(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
}

function whepUrl(query) {
  return `${serverUrl}/whep/${encodeURIComponent(roomName)}${query}`;
}

async function play(identity, kinds) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  for (const kind of kinds) pc.addTransceiver(kind, { direction: "recvonly" });
  const stream = new MediaStream();
  pc.addEventListener("track", (event) => stream.addTrack(event.track));
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const response = await fetch(whepUrl(`?participant=${encodeURIComponent(identity)}`), {
    method: "POST",
    headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${token}` },
    body: pc.localDescription.sdp,
  });
  const answer = await response.text();
  if (response.status !== 201) {
    pc.close();
    throw new Error(`WHEP answered ${response.status}: ${answer}`);
  }
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  const location = new URL(response.headers.get("Location"), serverUrl).href;
  return { pc, stream, location };
}

/** The room's publishers, each with a MediaStream of its camera and microphone. */
export class TemplateRoom {
  constructor() {
    this.participants = new Map(); // identity -> {identity, name, tracks, stream}
    this._listeners = [];
    this._sessions = new Map(); // identity -> WHEP session
    this._timer = null;
  }

  /** `listener(participants)` after every change, with an array in joining order. */
  onChange(listener) {
    this._listeners.push(listener);
  }

  /** Follow the room: its publishers now, and who joins or leaves, every `intervalMs`. */
  async connect(intervalMs = 1000) {
    await this.refresh();
    this._timer = setInterval(() => this.refresh().catch((e) => console.warn(e)), intervalMs);
  }

  async refresh() {
    const response = await fetch(whepUrl(""), { headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) throw new Error(`listing the room answered ${response.status}`);
    const listed = await response.json();
    let changed = false;
    const present = new Set();
    for (const person of listed) {
      const kinds = [...new Set(person.tracks.map((t) => t.kind))];
      if (!kinds.length) continue;
      present.add(person.identity);
      if (this.participants.has(person.identity)) continue;
      const session = await play(person.identity, kinds);
      this._sessions.set(person.identity, session);
      this.participants.set(person.identity, { ...person, stream: session.stream });
      changed = true;
    }
    for (const identity of [...this.participants.keys()]) {
      if (present.has(identity)) continue;
      this._close(identity);
      changed = true;
    }
    if (changed) {
      const all = [...this.participants.values()];
      for (const listener of this._listeners) listener(all);
    }
  }

  _close(identity) {
    const session = this._sessions.get(identity);
    this._sessions.delete(identity);
    this.participants.delete(identity);
    if (!session) return;
    session.pc.close();
    fetch(session.location, { method: "DELETE" }).catch(() => {});
  }

  disconnect() {
    clearInterval(this._timer);
    for (const identity of [...this.participants.keys()]) this._close(identity);
  }
}
