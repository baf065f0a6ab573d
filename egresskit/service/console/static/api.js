// Credentials and every call to the service: Twirp, WHIP, WHEP, events, files.
// The key/secret or token lives in this module's memory only (no storage, no cookie).

const encoder = new TextEncoder();
let credentials = null; // {key, secret} or {token}

export function signIn(value) {
  credentials = value;
}

function base64url(bytes) {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// An HS256 access token, signed here as LiveKit's server SDKs sign them.
async function sign(key, secret, identity, video, ttl) {
  const now = Math.floor(Date.now() / 1000);
  const part = (value) => base64url(encoder.encode(JSON.stringify(value)));
  const body = `${part({alg: "HS256", typ: "JWT"})}.${part(
    {iss: key, sub: identity, name: identity, nbf: now, exp: now + ttl, video})}`;
  const hmac = await crypto.subtle.importKey(
    "raw", encoder.encode(secret), {name: "HMAC", hash: "SHA-256"}, false, ["sign"]);
  return `${body}.${base64url(await crypto.subtle.sign("HMAC", hmac, encoder.encode(body)))}`;
}

// A token with `video` grants; a pasted token is used as it is for everything.
export async function token(video, identity = "console", ttl = 600) {
  if (!credentials) throw new Error("sign in first");
  if (credentials.token) return credentials.token;
  return sign(credentials.key, credentials.secret, identity, video, ttl);
}

export const EGRESS = {roomRecord: true};

// A Twirp call in JSON; a failure throws "code: msg" as the service said it.
export async function twirp(service, method, request, grants = EGRESS) {
  const response = await fetch(`/twirp/livekit.${service}/${method}`, {
    method: "POST",
    headers: {"Content-Type": "application/json", Authorization: `Bearer ${await token(grants)}`},
    body: JSON.stringify(request),
  });
  if (!response.ok) throw await twirpError(response);
  return response.json();
}

async function twirpError(response) {
  const body = await response.json().catch(() => null);
  const error = new Error(body && body.code ? `${body.code}: ${body.msg}` : `HTTP ${response.status}`);
  error.status = response.status;
  return error;
}

export const egress = (method, request) => twirp("Egress", method, request);

// Server-sent events of rooms and egress progress, read with fetch so the token
// goes in a header, never in a URL. Calls onEvent(name, data) until the stream ends.
export async function events(onEvent, signal) {
  const bearer = await token({roomList: true, roomRecord: true}, "console", 3600);
  const response = await fetch("/console/events", {
    headers: {Authorization: `Bearer ${bearer}`}, signal,
  });
  if (!response.ok) throw await twirpError(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(name, JSON.parse(data));
    }
  }
}

// The URL of a recorded file for <video> and downloads: the token is a path
// prefix so an HLS playlist's relative segment URLs carry it too.
export async function fileUrl(name) {
  const bearer = await token(EGRESS, "console", 3600);
  const path = name.split("/").map(encodeURIComponent).join("/");
  return `/files/.token/${bearer}/${path}`;
}

function gathered(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const done = () => pc.iceGatheringState === "complete" && resolve();
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000); // send what was gathered so far
  });
}

// Non-trickle offer/answer against WHIP or WHEP; returns the session's resource URL.
async function negotiate(pc, url, bearer) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const response = await fetch(url, {
    method: "POST",
    headers: {"Content-Type": "application/sdp", Authorization: `Bearer ${bearer}`},
    body: pc.localDescription.sdp,
  });
  const answer = await response.text();
  if (response.status !== 201) throw new Error(`${response.status}: ${answer}`);
  await pc.setRemoteDescription({type: "answer", sdp: answer});
  return new URL(response.headers.get("Location"), location.href).href;
}

function session(pc, resource) {
  return {
    pc,
    async stop() {
      await fetch(resource, {method: "DELETE"}).catch(() => {});
      pc.close();
    },
  };
}

// Publish `stream` into `room` as `identity` over WHIP.
export async function publish(room, identity, stream) {
  const bearer = await token({roomJoin: true, room, canPublish: true}, identity);
  const pc = new RTCPeerConnection({iceServers: []});
  for (const track of stream.getTracks()) {
    pc.addTransceiver(track, {direction: "sendonly", streams: [stream]});
  }
  try {
    return session(pc, await negotiate(pc, `/whip/${encodeURIComponent(room)}`, bearer));
  } catch (error) {
    pc.close();
    throw new Error(`WHIP ${error.message}`);
  }
}

// Receive a room's tracks over WHEP; `onStream` gets the MediaStream to show.
export async function watch(room, participant, onStream) {
  const bearer = await token({roomJoin: true, room, canSubscribe: true}, "console-viewer");
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver("video", {direction: "recvonly"});
  pc.addTransceiver("audio", {direction: "recvonly"});
  const stream = new MediaStream();
  pc.addEventListener("track", (event) => {
    stream.addTrack(event.track);
    onStream(stream);
  });
  let url = `/whep/${encodeURIComponent(room)}`;
  if (participant) url += `?participant=${encodeURIComponent(participant)}`;
  try {
    return session(pc, await negotiate(pc, url, bearer));
  } catch (error) {
    pc.close();
    throw new Error(`WHEP ${error.message}`);
  }
}
