// The demo page: the browser client package (clients/js, served at /client/ in dev mode) with a
// getTicket that mints through the dev route; this file only draws what the session reports.
const $ = (id) => document.getElementById(id);
const demo = (window.demo = { events: [], session: null, client: null, upstream: null });
Object.defineProperty(demo, "sentAudio", { get: () => (demo.client ? demo.client.stats.sentSamples : 0) });
Object.defineProperty(demo, "played", { get: () => (demo.client ? demo.client.stats.playedSeconds : 0) });
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
  $("counts").textContent = demo.events.length + " events";
}

function setConnected(connected) {
  $("connect").disabled = connected;
  $("disconnect").disabled = !connected;
  $("text").disabled = !connected;
  $("send").disabled = !connected;
  $("mic").disabled = !connected;
}

// The app's own backend call: here the dev route, which mints without an API key on loopback.
async function getTicket() {
  const response = await fetch("/dev/ticket?model=" + encodeURIComponent($("model").value), { method: "POST" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.code + ": " + body.error.message : String(response.status));
  demo.upstream = body.upstream;
  return body;
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

function showSession(event) {
  demo.session = event;
  $("session").textContent =
    event.session_id + " · " + event.model + " · voice " + event.voice +
    " · in " + event.input_sample_rate + " Hz · out " + event.output_sample_rate + " Hz" +
    " · answered by " + answeredBy(event.model);
}

function connect() {
  const client = new RealtimeSession({ url: wsUrl(), getTicket, config: {} });
  demo.client = client;
  client.on("sent", (event) => event.type !== "audio.append" && log("→", event));
  client.on("event", (event) => log("←", event));
  client.on("session.started", showSession);
  client.on("status", ({ status }) => {
    setStatus(status === "started" ? "open" : status + "…", status === "started" ? "open" : "");
    setConnected(status === "started");
  });
  client.on("reconnecting", ({ code, attempt, delayMs }) =>
    setStatus("reconnecting (" + code + ", attempt " + attempt + " in " + delayMs + " ms)…"));
  client.on("close", ({ code, message }) => {
    setStatus("closed (" + code + (message && message !== code ? ": " + message : "") + ")", code === "closed" ? "" : "error");
    setConnected(false);
    micLabel(false);
  });
  client.on("response.started", startLine);
  client.on("text.delta", (event) => {
    if (!modelLine) startLine();
    modelLine.textContent += event.delta;
  });
  client.on("response.completed", () => (modelLine = null));
  client.on("tool.call", (event) => client.sendToolResult(event.tool_call_id, "42"));
  client.connect().catch(() => {}); // the close event already says why
}

function startLine() {
  modelLine = document.createElement("span");
  modelLine.className = "model";
  $("answer").appendChild(modelLine);
}

function say(text) {
  const line = document.createElement("span");
  line.className = "user";
  line.textContent = "you: " + text;
  $("answer").appendChild(line);
  demo.client.sendText(text);
}

function micLabel(on) {
  $("mic").textContent = on ? "Stop microphone" : "Start microphone";
  $("mic").classList.toggle("on", on);
}

async function toggleMic() {
  const client = demo.client;
  if (client.microphoneOn) {
    client.stopMicrophone(); // stop means "my turn ended": the audio sent so far is committed
    micLabel(false);
    return;
  }
  micLabel(true);
  try {
    await client.startMicrophone();
  } catch (error) {
    micLabel(false);
    setStatus("microphone: " + error.message, "error");
  }
}

loadModels().catch(() => {});
let RealtimeSession = null;
try {
  ({ RealtimeSession } = await import("/client/index.js"));
} catch {
  setStatus("the browser package is served in dev mode only (REALTIME_DEV=true)", "error");
  $("connect").disabled = true;
}
$("connect").onclick = connect;
$("disconnect").onclick = () => demo.client && demo.client.close();
$("mic").onclick = toggleMic;
$("say").onsubmit = (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (text) say(text);
  $("text").value = "";
};
