// The hand-written alternative: a Node.js `ws` relay with the legacy protocol.
// GET /<anything>?site=X upgrades to a WebSocket receiving every message published to X;
// POST /publish takes {"site","topic","data"} or an array of them.
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.env.PORT || 8090);
const sites = new Map(); // site -> Set of sockets
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

function deliver(msg) {
  const subs = sites.get(msg.site);
  if (!subs) return;
  const frame = JSON.stringify({ site: msg.site, topic: msg.topic, data: msg.data });
  for (const ws of subs) ws.send(frame);
}

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/publish') { res.writeHead(404).end(); return; }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body;
    try { body = JSON.parse(Buffer.concat(chunks)); } catch { res.writeHead(400).end(); return; }
    const msgs = Array.isArray(body) ? body : [body];
    msgs.forEach(deliver);
    const out = JSON.stringify({ accepted: msgs.length });
    res.writeHead(202, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) }).end(out);
  });
});

server.on('upgrade', (req, socket, head) => {
  const site = new URL(req.url, 'http://x').searchParams.get('site');
  if (!site) { socket.end('HTTP/1.1 400 Bad Request\r\n\r\n'); return; }
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (!sites.has(site)) sites.set(site, new Set());
    sites.get(site).add(ws);
    ws.on('close', () => sites.get(site).delete(ws));
    ws.on('error', () => {});
  });
});

server.listen(port, '127.0.0.1');
