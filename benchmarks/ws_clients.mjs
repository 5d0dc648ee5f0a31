// WebSocket clients for the fan-out benchmark (benchmarks/bench_live.py --client node).
// Node's built-in WebSocket (node >= 20.10 with --experimental-websocket, no npm package):
// a client that costs far less CPU per message than a Python one, so that on a 2-core
// machine the fan-out process, not the clients, is what runs out of CPU.
// Usage: node --experimental-websocket ws_clients.mjs URLS(|-separated) N SECONDS OUT.json
import { writeFileSync } from "node:fs";

const [urlsArg, nArg, secondsArg, out] = process.argv.slice(2);
if (!out) {
  console.error("usage: ws_clients.mjs URLS N SECONDS OUT");
  process.exit(2);
}
const urls = urlsArg.split("|");
const n = Number(nArg);
const seconds = Number(secondsArg);
const lat = [];
let errors = 0;
let bytes = 0;
const firstError = [];
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

function one(url) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    let end = 0;
    let timer = null;
    ws.onopen = () => {
      end = Date.now() + seconds * 1000;
      timer = setTimeout(() => ws.close(), seconds * 1000);
    };
    ws.onmessage = (ev) => {
      const t = nowUs();
      const raw = ev.data;
      const m = JSON.parse(raw);
      // deltas carry only the values that changed: their newest source time is the value
      // just pushed (health-only deltas carry no value); full states are not counted
      let newest = 0;
      for (const u of Object.values(m.units || {})) {
        for (const v of Object.values(u)) if (v[1] > newest) newest = v[1];
      }
      if (newest && !m.full && Date.now() <= end) {
        lat.push((t - newest) / 1000);
        bytes += raw.length;
      }
    };
    ws.onerror = (e) => {
      errors += 1;
      if (firstError.length === 0) firstError.push(String(e.message || e.type || e));
    };
    ws.onclose = () => {
      if (timer) clearTimeout(timer);
      resolve();
    };
  });
}

const all = [];
for (let i = 0; i < n; i++) all.push(one(urls[i % urls.length]));
await Promise.all(all);
writeFileSync(out, JSON.stringify({ lat, errors, bytes, error: firstError }));
