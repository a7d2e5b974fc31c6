// Minimal caBLE relay on Node.js `ws` (with the native bufferutil add-on): a reference point for
// the relay benchmark, not a production relay. It implements the subset the benchmark drives:
// /cable/new/<tid> (routing ID in X-caBLE-Routing-ID), /cable/connect/<rid>/<tid>, binary
// forwarding both ways and close propagation. No TTLs, quotas or contact tunnels.
//
// usage: node relay.js [--host 127.0.0.1] [--port 0]
// Logs one JSON line {"event": "listening", "port": P} on stderr once it accepts connections.
'use strict';

const http = require('http');
const crypto = require('crypto');
const { WebSocketServer } = require('ws');

const SUBPROTOCOL = 'fido.cable';
const NEW_RE = /^\/cable\/new\/([0-9A-Fa-f]{32})$/;
const CONNECT_RE = /^\/cable\/connect\/([0-9A-Fa-f]{6})\/([0-9A-Fa-f]{32})$/;
const MAX_BUFFERED = 6;

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = arg('--host', '127.0.0.1');
const port = Number(arg('--port', '0'));
const routingId = crypto.randomBytes(3).toString('hex').toUpperCase();
const pending = new Map(); // upper-case tunnel ID -> {ws, buffered}

const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  maxPayload: 1 << 20,
  handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
});

wss.on('headers', (headers, req) => {
  if (NEW_RE.test(req.url)) headers.push(`X-caBLE-Routing-ID: ${routingId}`);
});

function reject(socket, status, reason) {
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}

function offeredCable(req) {
  const header = req.headers['sec-websocket-protocol'] || '';
  return header.split(',').some((p) => p.trim() === SUBPROTOCOL);
}

// Joins two sockets: every binary message goes to the peer, a close on one side closes the other.
function join(a, b, bufferedFromA) {
  for (const msg of bufferedFromA) b.send(msg, { binary: true });
  const pipe = (src, dst) => {
    src.on('message', (data, isBinary) => {
      if (!isBinary) {
        src.close(1003);
        dst.close(1001);
        return;
      }
      dst.send(data, { binary: true });
    });
    src.on('close', (code) => dst.close(code === 1000 ? 1000 : 1001));
    src.on('error', () => dst.terminate());
  };
  pipe(a, b);
  pipe(b, a);
}

const server = http.createServer((req, res) => {
  res.writeHead(426);
  res.end();
});

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => socket.destroy());
  if (req.method !== 'GET' || !offeredCable(req)) return reject(socket, 400, 'Bad Request');
  let m = NEW_RE.exec(req.url);
  if (m) {
    const tid = m[1].toUpperCase();
    if (pending.has(tid)) return reject(socket, 409, 'Conflict');
    wss.handleUpgrade(req, socket, head, (ws) => {
      const entry = { ws, buffered: [] };
      pending.set(tid, entry);
      // Until the desktop joins, keep a few early messages and drop the tunnel on close.
      ws.on('message', (data) => {
        if (entry.buffered.length >= MAX_BUFFERED) ws.close(1008);
        else entry.buffered.push(data);
      });
      ws.on('close', () => {
        if (pending.get(tid) === entry) pending.delete(tid);
      });
      ws.on('error', () => {});
    });
    return;
  }
  m = CONNECT_RE.exec(req.url);
  if (m) {
    const tid = m[2].toUpperCase();
    const entry = pending.get(tid);
    if (!entry) return reject(socket, 404, 'Not Found');
    pending.delete(tid);
    wss.handleUpgrade(req, socket, head, (ws) => {
      entry.ws.removeAllListeners('message');
      entry.ws.removeAllListeners('close');
      if (entry.ws.readyState !== entry.ws.OPEN) {
        ws.close(1001);
        return;
      }
      join(entry.ws, ws, []);
      for (const msg of entry.buffered) ws.send(msg, { binary: true });
    });
    return;
  }
  reject(socket, 404, 'Not Found');
});

server.listen(port, host, () => {
  const addr = server.address();
  process.stderr.write(JSON.stringify({ event: 'listening', host: addr.address, port: addr.port }) + '\n');
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
