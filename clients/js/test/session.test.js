// RealtimeSession's lifecycle under `node --test`, against a scripted WebSocket (no audio).
import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import { RealtimeSession } from "../index.js";

class FakeSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  static made = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = FakeSocket.CONNECTING;
    this.bufferedAmount = 0;
    this.sent = [];
    FakeSocket.made.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code) {
    this.ended(code ?? 1005);
  }
  // What the edge does:
  open() {
    this.readyState = FakeSocket.OPEN;
    this.onopen();
  }
  receive(event) {
    this.onmessage({ data: JSON.stringify(event) });
  }
  ended(code) {
    if (this.readyState === FakeSocket.CLOSED) return;
    this.readyState = FakeSocket.CLOSED;
    queueMicrotask(() => this.onclose({ code, reason: "" }));
  }
}
globalThis.WebSocket = FakeSocket;

const STARTED = { type: "session.started", session_id: "sess_1", input_sample_rate: 24000, output_sample_rate: 24000 };

async function until(check, what) {
  const deadline = Date.now() + 5000;
  while (!check()) {
    assert.ok(Date.now() < deadline, "timed out waiting for " + what);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

function session(getTicket, options = {}) {
  const made = new RealtimeSession({
    url: "wss://edge.example/v3/realtime",
    getTicket,
    playback: false,
    reconnect: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 2 },
    ...options,
  });
  made.seen = { close: [], reconnecting: [] };
  made.on("close", (event) => made.seen.close.push(event));
  made.on("reconnecting", (event) => made.seen.reconnecting.push(event.code));
  return made;
}

function counting() {
  const get = async () => "T" + ++get.calls;
  get.calls = 0;
  return get;
}

beforeEach(() => {
  FakeSocket.made = [];
});

test("connect offers the ticket subprotocol and starts with the config", async () => {
  const client = session(counting(), { config: { voice: "marin" } });
  const started = client.connect();
  await until(() => FakeSocket.made.length === 1, "a socket");
  const socket = FakeSocket.made[0];
  assert.deepEqual(socket.protocols, ["realtime", "opper-ticket.T1"]);
  assert.equal(client.sendText("early"), false); // not started: nothing sent, nothing queued
  socket.open();
  assert.deepEqual(socket.sent, [{ type: "session.start", config: { voice: "marin" } }]);
  socket.receive(STARTED);
  assert.equal((await started).session_id, "sess_1");
  assert.equal(client.sendText("hi"), true);
  assert.deepEqual(socket.sent.slice(1), [{ type: "text.input", text: "hi" }, { type: "response.create" }]);
});

test("a drop reconnects with a fresh ticket and the config as updated", async () => {
  const client = session(counting(), { config: { voice: "marin", instructions: "x" } });
  const started = client.connect();
  await until(() => FakeSocket.made.length === 1, "a socket");
  FakeSocket.made[0].open();
  FakeSocket.made[0].receive(STARTED);
  await started;
  client.updateConfig({ voice: "cedar", instructions: null });
  FakeSocket.made[0].ended(1006);
  await until(() => FakeSocket.made.length === 2, "a second socket");
  const second = FakeSocket.made[1];
  assert.deepEqual(second.protocols, ["realtime", "opper-ticket.T2"]);
  second.open();
  assert.deepEqual(second.sent, [{ type: "session.start", config: { voice: "cedar" } }]);
  second.receive({ ...STARTED, session_id: "sess_2" });
  assert.deepEqual(client.seen.reconnecting, ["connection_lost"]);
  assert.equal(client.status, "started");
});

test("failed handshakes give up with handshake_failed after maxAttempts", async () => {
  const getTicket = counting();
  const client = session(getTicket);
  const started = client.connect();
  for (let n = 1; n <= 4; n++) {
    await until(() => FakeSocket.made.length === n, "socket " + n);
    FakeSocket.made[n - 1].ended(1006); // never opened
  }
  await assert.rejects(started, { name: "RealtimeSessionError", code: "handshake_failed" });
  assert.equal(getTicket.calls, 4);
  assert.deepEqual(client.seen.reconnecting, ["handshake_failed", "handshake_failed", "handshake_failed"]);
  assert.deepEqual(client.seen.close.map((event) => [event.code, event.closeCode]), [["handshake_failed", 1006]]);
});

test("a start refused by the edge ends with its code and no reconnect", async () => {
  const client = session(counting());
  const started = client.connect();
  await until(() => FakeSocket.made.length === 1, "a socket");
  FakeSocket.made[0].open();
  FakeSocket.made[0].receive({ type: "error", error: { code: "unsupported_voice", message: "no such voice" } });
  await assert.rejects(started, { code: "unsupported_voice", message: "no such voice" });
  assert.equal(FakeSocket.made.length, 1);
  assert.deepEqual(client.seen.reconnecting, []);
});

test("session.terminating revoked ends; server_shutdown reconnects", async () => {
  for (const [code, closeCode, again] of [
    ["revoked", 1008, false],
    ["server_shutdown", 1012, true],
  ]) {
    FakeSocket.made = [];
    const client = session(counting());
    const started = client.connect();
    await until(() => FakeSocket.made.length === 1, "a socket");
    FakeSocket.made[0].open();
    FakeSocket.made[0].receive(STARTED);
    await started;
    FakeSocket.made[0].receive({ type: "session.terminating", error: { code, message: code } });
    FakeSocket.made[0].ended(closeCode);
    if (again) {
      await until(() => FakeSocket.made.length === 2, "a second socket");
      assert.deepEqual(client.seen.reconnecting, [code]);
      client.close();
    } else {
      await until(() => client.status === "closed", "the end");
      assert.deepEqual(client.seen.close, [{ code, message: code, closeCode }]);
    }
  }
});

test("the same ticket twice is ticket_replayed, without a second socket", async () => {
  const client = session(async () => ({ client_secret: "SAME", expires_at: "2026-01-01T00:00:00Z" }));
  const started = client.connect();
  await until(() => FakeSocket.made.length === 1, "a socket");
  FakeSocket.made[0].ended(1006);
  await assert.rejects(started, { code: "ticket_replayed" });
  assert.equal(FakeSocket.made.length, 1);
});

test("a getTicket still pending when the app closes and connects again is ignored", async () => {
  let release;
  const slow = new Promise((resolve) => (release = resolve));
  const tickets = [() => slow, async () => "FRESH"];
  const client = session(() => tickets.shift()());
  client.connect().catch(() => {});
  client.close();
  const started = client.connect();
  await until(() => FakeSocket.made.length === 1, "a socket");
  release("STALE");
  await new Promise((resolve) => setTimeout(resolve, 0)); // every microtask the stale ticket starts has run

  assert.deepEqual(FakeSocket.made.map((socket) => socket.protocols[1]), ["opper-ticket.FRESH"]);
  FakeSocket.made[0].open();
  FakeSocket.made[0].receive(STARTED);
  await started;
});

test("getTicket failing is retried, then ticket_unavailable with its message", async () => {
  const client = session(async () => {
    throw new Error("backend says 401");
  });
  await assert.rejects(client.connect(), { code: "ticket_unavailable", message: "getTicket() failed: backend says 401" });
  assert.deepEqual(client.seen.reconnecting, ["ticket_unavailable", "ticket_unavailable", "ticket_unavailable"]);
  assert.equal(FakeSocket.made.length, 0);
});
