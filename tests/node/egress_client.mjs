// Drives egresskit with the Node server SDK, unchanged: start, list, stop a room composite.
import { EgressClient, EncodedFileOutput } from 'livekit-server-sdk';

const [url, key, secret, room] = process.argv.slice(2);
const client = new EgressClient(url, key, secret);
const info = await client.startRoomCompositeEgress(room, {
  file: new EncodedFileOutput({ filepath: 'node/{room_name}.mp4' }),
});
let active = false;
for (let i = 0; i < 100 && !active; i++) {
  const [current] = await client.listEgress({ egressId: info.egressId });
  active = current && current.status === 1;
  if (!active) await new Promise((r) => setTimeout(r, 100));
}
await new Promise((r) => setTimeout(r, 2000));
const listed = (await client.listEgress({ roomName: room })).some((e) => e.egressId === info.egressId);
const stopped = await client.stopEgress(info.egressId);
console.log(JSON.stringify({ egress_id: info.egressId, listed, active, stopped_status: stopped.status }));
