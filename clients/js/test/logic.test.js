// The package's pure logic under `node --test`: reconnect decisions, backoff, tickets, PCM.
import assert from "node:assert/strict";
import { test } from "node:test";

import { base64ToPcm16, floatToPcm16, pcm16ToBase64, pcm16ToFloat, Resampler } from "../pcm.js";
import { backoff, decide, mergeConfig, ticketOf } from "../policy.js";

const base = { byClient: false, opened: true, started: true, startError: null, terminating: null, closeCode: 1006 };

const CASES = [
  ["the app closed", { byClient: true }, false, "closed"],
  ["handshake refused or unreachable", { opened: false, started: false }, true, "handshake_failed"],
  ["start refused", { started: false, startError: "unsupported_voice", closeCode: 1000 }, false, "unsupported_voice"],
  ["network drop", {}, true, "connection_lost"],
  ["edge draining", { terminating: "server_shutdown", closeCode: 1012 }, true, "server_shutdown"],
  ["1012 without terminating", { closeCode: 1012 }, true, "connection_lost"],
  ["model failed", { terminating: "upstream_error", closeCode: 1011 }, true, "upstream_error"],
  ["revoked", { terminating: "revoked", closeCode: 1008 }, false, "revoked"],
  ["idle", { terminating: "idle_timeout", closeCode: 1000 }, false, "idle_timeout"],
  ["rate limited", { terminating: "rate_limited", closeCode: 1008 }, false, "rate_limited"],
  ["server closed cleanly", { closeCode: 1000 }, false, "closed_by_server"],
  ["frame too big", { closeCode: 1009 }, false, "protocol_error"],
];

for (const [name, change, retry, code] of CASES) {
  test(`decide: ${name}`, () => {
    assert.deepEqual(decide({ ...base, ...change }), { retry, code });
  });
}

test("backoff doubles from the base, with jitter in the upper half, up to the cap", () => {
  const options = { baseDelayMs: 500, maxDelayMs: 8000 };
  assert.deepEqual([1, 2, 3, 4, 5, 6].map((n) => backoff(n, options, () => 0)), [250, 500, 1000, 2000, 4000, 4000]);
  assert.deepEqual([1, 2, 6].map((n) => backoff(n, options, () => 0.999999)), [500, 1000, 8000]);
});

test("ticketOf takes the string or the mint answer, and refuses what cannot be a subprotocol", () => {
  assert.equal(ticketOf("eyJ.a-b_c.d"), "eyJ.a-b_c.d");
  assert.equal(ticketOf({ client_secret: "eyJ.x", expires_at: "2026-01-01T00:00:00Z" }), "eyJ.x");
  for (const bad of [null, undefined, "", "a b", "a,b", 42, {}, { client_secret: 1 }]) assert.equal(ticketOf(bad), null);
});

test("mergeConfig replaces fields and removes nulls, leaving the original alone", () => {
  const config = { voice: "marin", instructions: "x" };
  assert.deepEqual(mergeConfig(config, { voice: "cedar", instructions: null }), { voice: "cedar" });
  assert.deepEqual(config, { voice: "marin", instructions: "x" });
});

test("PCM16 survives base64 both ways, little-endian", () => {
  const samples = Int16Array.from([0, 1, -1, 32767, -32768, 256]);
  const text = pcm16ToBase64(samples);
  assert.equal(Buffer.from(text, "base64").toString("hex"), "00000100ffffff7f008000" + "01");
  assert.deepEqual(base64ToPcm16(text), samples);
});

test("float and PCM16 convert with clipping", () => {
  assert.deepEqual(floatToPcm16(Float32Array.from([0, 1, -1, 2, -2, 0.5])), Int16Array.from([0, 32767, -32768, 32767, -32768, 16384]));
  assert.deepEqual(pcm16ToFloat(Int16Array.from([-32768, 0, 16384])), Float32Array.from([-1, 0, 0.5]));
});

function resample(from, to, seconds, chunk) {
  const resampler = new Resampler(from, to);
  const input = new Float32Array(from * seconds).map((_, i) => Math.sin((2 * Math.PI * 440 * i) / from));
  const parts = [];
  for (let i = 0; i < input.length; i += chunk) parts.push(resampler.process(input.subarray(i, i + chunk)));
  const out = new Float32Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

for (const [from, to] of [
  [48000, 24000],
  [48000, 16000],
  [44100, 24000],
  [24000, 48000],
  [16000, 44100],
  [24000, 24000],
]) {
  test(`Resampler ${from} -> ${to} Hz keeps the duration and the tone across chunks`, () => {
    const out = resample(from, to, 1, 128);
    assert.ok(Math.abs(out.length - to) <= 2, `${out.length} samples for one second at ${to} Hz`);
    // The 440 Hz tone is still there: count zero crossings (two per period).
    let crossings = 0;
    for (let i = 1; i < out.length; i++) if (out[i - 1] < 0 !== out[i] < 0) crossings++;
    assert.ok(Math.abs(crossings - 880) <= 4, `${crossings} zero crossings`);
  });
}
