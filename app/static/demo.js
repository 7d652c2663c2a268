// The demo page: mint through the dev route, open the WebSocket with the ticket subprotocol
// (exactly the one-liner of the API docs), send session.start {config: {}}, show the events,
// and stream the microphone as PCM16 at the session's input rate.
"use strict";

const $ = (id) => document.getElementById(id);
const demo = (window.demo = { events: [], socket: null, session: null, played: 0 });
let capture = null;
let playback = null;
let playAt = 0;
let modelLine = null;

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").className = "status " + (kind || "");
}

function log(direction, event) {
  demo.events.push({ direction, event });
  const item = document.createElement("li");
  const copy = Object.assign({}, event);
  if (copy.audio) copy.audio = "<" + copy.audio.length + " base64 chars>";
  item.textContent = direction + " " + JSON.stringify(copy);
  if (event.type === "error" || event.type === "session.terminating") item.className = "error";
  $("log").appendChild(item);
  $("log").scrollTop = $("log").scrollHeight;
  const counts = {};
  for (const e of demo.events) counts[e.event.type] = (counts[e.event.type] || 0) + 1;
  $("counts").textContent = demo.events.length + " events";
}

function send(event) {
  log("→", event);
  demo.socket.send(JSON.stringify(event));
}

function setConnected(connected) {
  $("connect").disabled = connected;
  $("disconnect").disabled = !connected;
  $("text").disabled = !connected;
  $("send").disabled = !connected;
  $("mic").disabled = !connected;
}

async function mint() {
  const model = $("model").value;
  const response = await fetch("/dev/ticket?model=" + encodeURIComponent(model), { method: "POST" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.code + ": " + body.error.message : response.status);
  demo.upstream = body.upstream;
  return body.client_secret;
}

// Who answers: the built-in test model, the model's own provider, or the relay's upstream.
function answeredBy(model) {
  if (demo.upstream === "providers") return model.split("/")[0] + " (the real provider)";
  if (demo.upstream === "relay") return "the relayed upstream";
  return "the built-in test model";
}

// Only the models this deployment serves (with real providers: those with a key).
async function loadModels() {
  const response = await fetch("/v3/models?type=realtime");
  if (!response.ok) return;
  const models = (await response.json()).data.map((model) => model.id);
  $("model").replaceChildren(...models.map((id) => new Option(id, id)));
}

function wsUrl() {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v3/realtime";
}

async function connect() {
  setStatus("minting…");
  let clientSecret;
  try {
    clientSecret = await mint();
  } catch (error) {
    setStatus("mint failed: " + error.message, "error");
    return;
  }
  demo.ticket = clientSecret;
  setStatus("connecting…");
  const socket = new WebSocket(wsUrl(), ["opper-ticket." + clientSecret]);
  demo.socket = socket;
  socket.onopen = () => {
    setStatus("open", "open");
    setConnected(true);
    send({ type: "session.start", config: {} });
  };
  socket.onmessage = (message) => onEvent(JSON.parse(message.data));
  socket.onclose = (close) => {
    setStatus("closed (" + close.code + (close.reason ? " " + close.reason : "") + ")", close.code === 1000 ? "" : "error");
    setConnected(false);
    stopMic();
  };
}

function onEvent(event) {
  log("←", event);
  switch (event.type) {
    case "session.started":
      demo.session = event;
      $("session").textContent =
        event.session_id + " · " + event.model + " · voice " + event.voice +
        " · in " + event.input_sample_rate + " Hz · out " + event.output_sample_rate + " Hz" +
        " · answered by " + answeredBy(event.model);
      break;
    case "response.started":
      modelLine = document.createElement("span");
      modelLine.className = "model";
      $("answer").appendChild(modelLine);
      break;
    case "text.delta":
      if (!modelLine) onEvent({ type: "response.started" });
      modelLine.textContent += event.delta;
      break;
    case "response.completed":
      modelLine = null;
      break;
    case "audio.delta":
      play(event.audio);
      break;
    case "tool.call":
      send({ type: "tool.result", tool_call_id: event.tool_call_id, tool_result: "42" });
      send({ type: "response.create" });
      break;
  }
}

function say(text) {
  const line = document.createElement("span");
  line.className = "user";
  line.textContent = "you: " + text;
  $("answer").appendChild(line);
  send({ type: "text.input", text });
  send({ type: "response.create" });
}

function base64ToInt16(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return new Int16Array(bytes.buffer, 0, bytes.length >> 1);
}

function int16ToBase64(samples) {
  const bytes = new Uint8Array(samples.buffer);
  let raw = "";
  for (let i = 0; i < bytes.length; i += 0x8000) raw += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(raw);
}

function play(audio) {
  const rate = demo.session ? demo.session.output_sample_rate : 24000;
  if (!playback) playback = new AudioContext({ sampleRate: rate });
  const samples = base64ToInt16(audio);
  const buffer = playback.createBuffer(1, samples.length, rate);
  const channel = buffer.getChannelData(0);
  for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
  const source = playback.createBufferSource();
  source.buffer = buffer;
  source.connect(playback.destination);
  playAt = Math.max(playAt, playback.currentTime);
  source.start(playAt);
  playAt += buffer.duration;
  demo.played += samples.length;
}

async function startMic() {
  const rate = demo.session ? demo.session.input_sample_rate : 24000;
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
  const context = new AudioContext({ sampleRate: rate });
  await context.audioWorklet.addModule("/static/pcm-worklet.js");
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, "pcm-capture");
  node.port.onmessage = (message) => {
    if (!demo.socket || demo.socket.readyState !== WebSocket.OPEN) return;
    const block = message.data;
    const samples = new Int16Array(block.length);
    let energy = 0;
    for (let i = 0; i < block.length; i++) {
      samples[i] = Math.max(-1, Math.min(1, block[i])) * 32767;
      energy += block[i] * block[i];
    }
    demo.level = Math.sqrt(energy / block.length);
    demo.levels = (demo.levels || []).concat([Math.round(demo.level * 1000) / 1000]).slice(-40);
    demo.socket.send(JSON.stringify({ type: "audio.append", audio: int16ToBase64(samples) }));
    demo.sentAudio = (demo.sentAudio || 0) + samples.length;
  };
  source.connect(node);
  capture = { stream, context };
  $("mic").textContent = "Stop microphone";
  $("mic").classList.add("on");
}

function stopMic() {
  if (!capture) return;
  // Whatever the detector has not cut into a turn yet is committed now: stop means "my turn ended".
  if (demo.socket && demo.socket.readyState === WebSocket.OPEN) send({ type: "audio.commit" });
  capture.stream.getTracks().forEach((track) => track.stop());
  capture.context.close();
  capture = null;
  $("mic").textContent = "Start microphone";
  $("mic").classList.remove("on");
}

loadModels().catch(() => {});
$("connect").onclick = connect;
$("disconnect").onclick = () => demo.socket && demo.socket.close(1000);
$("mic").onclick = () => (capture ? stopMic() : startMic().catch((error) => setStatus("microphone: " + error.message, "error")));
$("say").onsubmit = (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (text) say(text);
  $("text").value = "";
};
