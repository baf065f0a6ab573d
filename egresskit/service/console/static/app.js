// The console's page logic: panels for rooms, publish, watch, record and recordings.
import * as api from "./api.js";

const $ = (id) => document.getElementById(id);
const ENDED = new Set(["EGRESS_COMPLETE", "EGRESS_FAILED", "EGRESS_ABORTED", "EGRESS_LIMIT_REACHED"]);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function showError(error) {
  $("error").textContent = error instanceof Error ? error.message : String(error);
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// Run a user action: its error, Twirp's text included, is shown instead of thrown.
function action(run) {
  return async (event) => {
    if (event) event.preventDefault();
    clearError();
    try {
      await run(event);
    } catch (error) {
      showError(error);
    }
  };
}

function bytes(count) {
  if (!count) return "0 B";
  const units = ["B", "kB", "MB", "GB"];
  const power = Math.min(units.length - 1, Math.floor(Math.log10(count) / 3));
  return `${(count / 1000 ** power).toFixed(power ? 1 : 0)} ${units[power]}`;
}

// --- rooms ---------------------------------------------------------------------------

function renderRooms(rooms) {
  const list = $("room-list");
  list.replaceChildren();
  if (!rooms.length) list.append(el("li", {class: "empty"}, "no rooms yet"));
  for (const {room, participants} of rooms) {
    const people = el("ul", {class: "participants"});
    for (const participant of participants) {
      const tracks = participant.tracks.map((t) =>
        el("li", {class: "track", "data-sid": t.sid},
          `${t.source.toLowerCase()} ${t.mime_type}${t.muted ? " (muted)" : ""} `,
          el("code", {}, t.sid)));
      people.append(el("li", {class: "participant", "data-identity": participant.identity},
        el("strong", {}, participant.identity), " ",
        el("button", {type: "button", onclick: () => {
          $("watch-room").value = room.name;
          $("watch-participant").value = participant.identity;
        }}, "watch"),
        el("ul", {}, ...tracks)));
    }
    list.append(el("li", {class: "room", "data-room": room.name},
      el("strong", {}, room.name), ` ${participants.length} participant(s)`, people));
  }
}

let following = null; // AbortController of the current event stream

async function followEvents() {
  following?.abort();
  const controller = following = new AbortController();
  while (!controller.signal.aborted) {
    try {
      await api.events((name, data) => {
        if (name === "rooms") renderRooms(data);
        else if (name === "egress") showProgress(data);
      }, controller.signal);
    } catch (error) {
      if (controller.signal.aborted) return;
      showError(error);
      if (error.status === 401) return; // signing in again restarts the stream
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// --- publish -------------------------------------------------------------------------

let publishing = null;

$("publish-form").addEventListener("submit", action(async () => {
  const stream = await navigator.mediaDevices.getUserMedia({
    video: {width: 1280, height: 720}, audio: true,
  });
  try {
    const session = await api.publish($("publish-room").value, $("publish-identity").value, stream);
    publishing = {session, stream};
  } catch (error) {
    stream.getTracks().forEach((track) => track.stop());
    throw error;
  }
  $("preview").srcObject = stream;
  $("publish-status").textContent = `publishing into ${$("publish-room").value}`;
  for (const id of ["publish-stop", "mute-audio", "mute-video"]) $(id).disabled = false;
  $("publish-start").disabled = true;
}));

$("publish-stop").addEventListener("click", action(async () => {
  if (!publishing) return;
  await publishing.session.stop();
  publishing.stream.getTracks().forEach((track) => track.stop());
  publishing = null;
  $("preview").srcObject = null;
  $("publish-status").textContent = "stopped";
  for (const id of ["publish-stop", "mute-audio", "mute-video"]) $(id).disabled = true;
  $("publish-start").disabled = false;
}));

function muteButton(id, kind, label) {
  $(id).addEventListener("click", () => {
    if (!publishing) return;
    const tracks = publishing.stream.getTracks().filter((t) => t.kind === kind);
    const muted = tracks.some((t) => t.enabled);
    tracks.forEach((t) => { t.enabled = !muted; });
    $(id).textContent = `${muted ? "Unmute" : "Mute"} ${label}`;
  });
}
muteButton("mute-audio", "audio", "mic");
muteButton("mute-video", "video", "camera");

// --- watch ---------------------------------------------------------------------------

let watching = null;

$("watch-form").addEventListener("submit", action(async () => {
  if (watching) await watching.stop();
  watching = await api.watch($("watch-room").value, $("watch-participant").value,
    (stream) => { $("watch-video").srcObject = stream; });
  $("watch-status").textContent = `watching ${$("watch-room").value}`;
  $("watch-stop").disabled = false;
}));

$("watch-stop").addEventListener("click", action(async () => {
  if (watching) await watching.stop();
  watching = null;
  $("watch-video").srcObject = null;
  $("watch-status").textContent = "";
  $("watch-stop").disabled = true;
}));

// --- record --------------------------------------------------------------------------

function outputs() {
  const output = $("record-output").value;
  if (output === "mp4") return {file_outputs: [{file_type: "MP4", filepath: "{room_name}-{time}.mp4"}]};
  if (output === "hls") {
    return {segment_outputs: [{filename_prefix: "{room_name}-{time}/segment",
      playlist_name: "playlist.m3u8"}]};
  }
  if (output === "images") {
    return {image_outputs: [{capture_interval: 5, filename_prefix: "{room_name}-{time}/image"}]};
  }
  return {stream_outputs: [{protocol: "RTMP", urls: [$("record-url").value]}]};
}

function showKind() {
  const kind = $("record-kind").value;
  document.querySelectorAll(".room-only").forEach((n) => { n.hidden = kind !== "room"; });
  document.querySelectorAll(".participant-only").forEach((n) => { n.hidden = kind !== "participant"; });
  document.querySelectorAll(".track-only").forEach((n) => { n.hidden = kind !== "track"; });
  document.querySelectorAll(".not-track").forEach((n) => { n.hidden = kind === "track"; });
}
$("record-kind").addEventListener("change", showKind);
showKind();

$("record-form").addEventListener("submit", action(async () => {
  const kind = $("record-kind").value;
  const room_name = $("record-room").value;
  const preset = $("record-preset").value;
  if (kind === "room") {
    await api.egress("StartRoomCompositeEgress",
      {room_name, layout: $("record-layout").value, preset, ...outputs()});
  } else if (kind === "participant") {
    await api.egress("StartParticipantEgress",
      {room_name, identity: $("record-identity").value, preset, ...outputs()});
  } else {
    await api.egress("StartTrackEgress", {room_name, track_id: $("record-track").value,
      file: {filepath: "{room_name}-{track_id}-{time}"}});
  }
  await refreshEgresses();
}));

let active = new Map(); // egress_id -> EgressInfo (JSON) of running egresses
let progress = new Map(); // egress_id -> latest progress event

async function refreshEgresses() {
  const listed = await api.egress("ListEgress", {active: true});
  active = new Map((listed.items || []).map((item) => [item.egress_id, item]));
  renderEgresses();
}

function showProgress(items) {
  const before = [...progress.keys()].sort().join();
  progress = new Map(items.map((item) => [item.egress_id, item]));
  const changed = before !== [...progress.keys()].sort().join()
    || items.some((item) => active.get(item.egress_id)?.status !== item.status);
  if (changed) {
    refreshEgresses().catch(showError);
    refreshRecordings().catch(showError);
  } else {
    renderEgresses();
  }
}

function egressKind(info) {
  if (info.room_composite) return "room";
  if (info.participant) return "participant";
  if (info.track) return "track";
  return "other";
}

// Rows are built once per egress and then updated in place, so a layout being
// chosen or a URL being typed survives the progress updates.
function egressRow(id, info) {
  const controls = el("span");
  if (info.room_composite) {
    const layout = el("select", {class: "layout"},
      ...["grid", "speaker", "single-speaker", "grid-light", "speaker-light"].map((name) =>
        el("option", name === info.room_composite.layout ? {selected: ""} : {}, name)));
    controls.append(layout, el("button", {type: "button", class: "update-layout",
      onclick: action(async () => {
        await api.egress("UpdateLayout", {egress_id: id, layout: layout.value});
        await refreshEgresses();
      })}, "update"));
  }
  if ((info.stream_results || []).length) {
    const url = el("input", {class: "stream-url", placeholder: "rtmp://..."});
    const update = (field) => action(async () => {
      await api.egress("UpdateStream", {egress_id: id, [field]: [url.value]});
      await refreshEgresses();
    });
    controls.append(el("span", {class: "streams"}), url,
      el("button", {type: "button", onclick: update("add_output_urls")}, "add"),
      el("button", {type: "button", onclick: update("remove_output_urls")}, "remove"));
  }
  const cell = (name) => el("td", {class: name});
  return el("tr", {id: `egress-${id}`, "data-egress": id},
    el("td", {}, el("code", {}, id)), el("td", {}, egressKind(info)),
    cell("status"), cell("elapsed"), cell("bytes"), cell("dropped"),
    el("td", {}, controls),
    el("td", {}, el("button", {type: "button", class: "stop", onclick: action(async () => {
      await api.egress("StopEgress", {egress_id: id});
      await refreshEgresses();
    })}, "stop")));
}

function renderEgresses() {
  const list = $("egress-list");
  for (const row of [...list.children]) {
    if (!active.has(row.dataset.egress)) row.remove();
  }
  for (const [id, info] of active) {
    let row = document.getElementById(`egress-${id}`);
    if (!row) list.append(row = egressRow(id, info));
    const now = progress.get(id);
    const started = Number(now?.started_at || info.started_at || 0) / 1e6;
    const text = (name, value) => { row.querySelector(`.${name}`).textContent = value; };
    text("status", (now?.status || info.status).replace("EGRESS_", ""));
    text("elapsed", started ? `${((Date.now() - started) / 1000).toFixed(0)} s` : "");
    text("bytes", bytes(now?.bytes));
    text("dropped", String(now?.dropped_frames ?? 0));
    const streams = row.querySelector(".streams");
    if (streams) streams.textContent = (info.stream_results || []).map((s) => s.url).join(" ");
  }
}

// --- recordings ----------------------------------------------------------------------

async function play(name) {
  $("player").src = await api.fileUrl(name);
  await $("player").play();
}

async function download(name) {
  const link = el("a", {href: await api.fileUrl(name), download: name.split("/").pop()});
  document.body.append(link);
  link.click();
  link.remove();
}

function fileItem(name, detail) {
  return el("li", {class: "file", "data-file": name}, el("code", {}, name), ` ${detail} `,
    el("button", {type: "button", class: "play", onclick: action(() => play(name))}, "play"),
    el("button", {type: "button", class: "download", onclick: action(() => download(name))},
      "download"));
}

async function refreshRecordings() {
  const listed = await api.egress("ListEgress", {});
  const ended = (listed.items || []).filter((item) => ENDED.has(item.status));
  // An egress that left the progress events while still finishing (ENDING, uploads)
  // is listed once it has ended: look again shortly rather than wait for an event.
  const finishing = (listed.items || []).some(
    (item) => !ENDED.has(item.status) && !progress.has(item.egress_id));
  if (finishing) setTimeout(() => refreshRecordings().catch(showError), 1000);
  ended.sort((a, b) => Number(b.ended_at) - Number(a.ended_at));
  $("recording-list").replaceChildren(...ended.map((item) => {
    const files = [
      ...(item.file_results || []).map((f) =>
        fileItem(f.filename, `${bytes(Number(f.size))}, ${(Number(f.duration) / 1e9).toFixed(1)} s`)),
      ...(item.segment_results || []).map((s) =>
        fileItem(s.playlist_name, `HLS, ${s.segment_count} segments`)),
    ];
    return el("li", {class: "recording", "data-egress": item.egress_id},
      el("strong", {}, item.room_name), ` ${item.status.replace("EGRESS_", "").toLowerCase()} `,
      el("code", {}, item.egress_id), item.error ? el("span", {class: "failed"}, ` ${item.error}`) : "",
      el("ul", {}, ...files));
  }));
}
$("recordings-refresh").addEventListener("click", action(refreshRecordings));

// --- start ---------------------------------------------------------------------------

async function start() {
  $("auth").hidden = true;
  followEvents();
  await refreshEgresses();
  await refreshRecordings();
}

$("auth-form").addEventListener("submit", action(async () => {
  const pasted = $("token").value.trim();
  api.signIn(pasted ? {token: pasted} : {key: $("api-key").value, secret: $("api-secret").value});
  $("who").textContent = pasted ? "signed in with a token" : `API key ${$("api-key").value}`;
  for (const id of ["api-secret", "token"]) $(id).value = "";
  await start();
}));

async function init() {
  const settings = await (await fetch("/console/config.json")).json();
  if (settings.dev) {
    api.signIn({key: settings.api_key, secret: settings.api_secret});
    $("who").textContent = `dev mode, API key ${settings.api_key}`;
    await start();
  } else {
    $("auth").hidden = false;
  }
}

init().catch(showError);
