// A realtime session in the browser: a ticket from the app's backend, the WebSocket, the session
// protocol's events, microphone capture and playback, and reconnection with fresh tickets.
import { base64ToPcm16, pcm16ToBase64 } from "./pcm.js";
import { backoff, decide, mergeConfig, ticketOf } from "./policy.js";

export { backoff, decide, mergeConfig, ticketOf } from "./policy.js";

const WORKLET = new URL("./worklet.js", import.meta.url).href;
const TICKET_PROTOCOL = "opper-ticket.";
const SESSION_PROTOCOL = "realtime";
const REMEMBERED_TICKETS = 16;

/** Why a session ended for good (`code`), as the `close` event and a rejected `connect()` carry it. */
export class RealtimeSessionError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "RealtimeSessionError";
    this.code = code;
  }
}

export class RealtimeSession {
  /**
   * @param {object} options see index.d.ts (`RealtimeSessionOptions`)
   */
  constructor(options) {
    const { getTicket, url, config = {}, playback = true, bargeIn = true } = options || {};
    if (typeof getTicket !== "function") throw new TypeError("getTicket must be an async function");
    if (typeof url !== "string" || !/^wss?:\/\//.test(url)) throw new TypeError("url must be a ws:// or wss:// URL");
    const reconnect = options.reconnect === false ? { maxAttempts: 0 } : options.reconnect || {};
    this.url = url;
    this.options = {
      playback,
      bargeIn,
      maxAttempts: reconnect.maxAttempts ?? 5,
      baseDelayMs: reconnect.baseDelayMs ?? 500,
      maxDelayMs: reconnect.maxDelayMs ?? 8000,
      maxBufferedBytes: options.maxBufferedBytes ?? 1 << 20,
      maxQueueSeconds: options.maxQueueSeconds ?? 120,
    };
    this.getTicket = getTicket;
    this.config = { ...config };
    this.status = "idle";
    this.session = null; // the last session.started
    this.stats = { sentSamples: 0, droppedSamples: 0, receivedSamples: 0, playedSeconds: 0, reconnects: 0 };
    this._listeners = new Map();
    this._presented = [];
    this._socket = null;
    this._timer = null;
    this._attempts = 0;
    this._context = null;
    this._module = null;
    this._player = null;
    this._playing = false;
    this._responding = false;
    this._mic = null;
    this._pending = null;
    this._run = null;
  }

  /** Listen to a server event by type, or to `status`, `reconnecting`, `interrupted`, `close`, `event`, `sent`. */
  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    const set = this._listeners.get(type);
    if (set) set.delete(listener);
  }

  _emit(type, event) {
    for (const listener of [...(this._listeners.get(type) || [])]) {
      try {
        listener(event);
      } catch (error) {
        setTimeout(() => {
          throw error; // an app listener's bug shows in the console without breaking the session
        });
      }
    }
  }

  _setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this._emit("status", { status });
  }

  /**
   * Mint (through `getTicket`), connect and start. Call it from a click: it creates the page's
   * AudioContext, which browsers let run only after a user gesture.
   * @returns {Promise<object>} the first `session.started`
   */
  connect() {
    if (this.status !== "idle" && this.status !== "closed") {
      return Promise.reject(new RealtimeSessionError("already_connected", "connect() while the session is " + this.status));
    }
    this._attempts = 0;
    this._closing = false;
    this._run = {}; // this connect()'s token: a getTicket() still pending from an earlier one is ignored
    this.session = null;
    if (this.options.playback) this._audioContext();
    const started = new Promise((resolve, reject) => (this._pending = { resolve, reject }));
    this._open();
    return started;
  }

  /** End the session for good (close 1000); no reconnect follows. */
  close() {
    if (this.status === "closed" || this.status === "idle") return;
    this._closing = true;
    const socket = this._socket;
    this._socket = null; // its close event is no longer this session's business
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000);
    this._finish("closed", "closed by the app", 1000);
  }

  async _open() {
    const run = this._run;
    this._setStatus(this.session ? "reconnecting" : "connecting");
    let value;
    try {
      value = await this.getTicket();
    } catch (error) {
      if (run === this._run && !this._closing) {
        this._retryOrFinish("ticket_unavailable", "getTicket() failed: " + describe(error), null);
      }
      return;
    }
    if (run !== this._run || this._closing) return;
    const ticket = ticketOf(value);
    if (ticket === null) {
      this._finish("invalid_ticket", "getTicket() must return the client_secret string or the mint answer", null);
      return;
    }
    if (this._presented.includes(ticket)) {
      // Presenting it again could only be refused as a replay: say so without the round trip.
      this._finish("ticket_replayed", "getTicket() returned a ticket this session already presented; mint a new one per call", null);
      return;
    }
    this._presented.push(ticket);
    if (this._presented.length > REMEMBERED_TICKETS) this._presented.shift();
    let socket;
    try {
      socket = new WebSocket(this.url, [SESSION_PROTOCOL, TICKET_PROTOCOL + ticket]);
    } catch (error) {
      this._finish("invalid_url", describe(error), null);
      return;
    }
    const state = { opened: false, started: false, startError: null, terminating: null, message: "" };
    this._socket = socket;
    socket.onopen = () => {
      state.opened = true;
      this._send({ type: "session.start", config: this.config });
    };
    socket.onmessage = (message) => {
      if (socket === this._socket) this._receive(state, message.data);
    };
    socket.onclose = (close) => {
      if (socket === this._socket) this._closed(state, close);
    };
  }

  _receive(state, data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    if (!event || typeof event.type !== "string") return;
    switch (event.type) {
      case "session.started": {
        state.started = true;
        this._attempts = 0;
        this.session = event;
        this._setStatus("started");
        if (this.options.playback) this._preparePlayer(event.output_sample_rate);
        if (this._mic && this._mic.rate !== event.input_sample_rate) this._restartCapture(event.input_sample_rate);
        if (this._pending) {
          this._pending.resolve(event);
          this._pending = null;
        }
        break;
      }
      case "error":
        if (!state.started) {
          // A refused session.start: the app's config (or the ticket's binding) is wrong, and a new
          // ticket with the same config would be refused the same way.
          state.startError = (event.error && event.error.code) || "start_refused";
          state.message = (event.error && event.error.message) || "";
          this._socket.close(1000);
        }
        break;
      case "session.terminating":
        state.terminating = (event.error && event.error.code) || "terminating";
        state.message = (event.error && event.error.message) || "";
        break;
      case "response.started":
        this._responding = true;
        break;
      case "response.completed":
        this._responding = false;
        break;
      case "audio.delta":
        this._play(event.audio);
        break;
    }
    this._emit(event.type, event);
    this._emit("event", event);
    if (event.type === "speech.started" && this.options.bargeIn && (this._playing || this._responding)) {
      this._interrupt();
    }
  }

  _closed(state, close) {
    this._socket = null;
    this._responding = false;
    this._flush();
    const decision = decide({
      byClient: this._closing,
      opened: state.opened,
      started: state.started,
      startError: state.startError,
      terminating: state.terminating,
      closeCode: close.code,
    });
    const message = state.message || close.reason || "";
    if (decision.retry) this._retryOrFinish(decision.code, message, close.code);
    else this._finish(decision.code, message, close.code);
  }

  _retryOrFinish(code, message, closeCode) {
    this._attempts += 1;
    if (this._attempts > this.options.maxAttempts) {
      this._finish(code, message || "gave up after " + this.options.maxAttempts + " attempts", closeCode);
      return;
    }
    const delayMs = backoff(this._attempts, this.options);
    this._setStatus("reconnecting");
    this.stats.reconnects += 1;
    this._emit("reconnecting", { attempt: this._attempts, delayMs, code, message, closeCode });
    this._timer = setTimeout(() => {
      this._timer = null;
      if (!this._closing) this._open();
    }, delayMs);
  }

  _finish(code, message, closeCode) {
    if (this.status === "closed") return;
    clearTimeout(this._timer);
    this._timer = null;
    this._closing = true;
    this._releaseMicrophone();
    this._flush();
    if (this._context) this._context.close().catch(() => {});
    this._context = null;
    this._module = null;
    this._player = null;
    this._setStatus("closed");
    const event = { code, message: message || code, closeCode };
    if (this._pending) {
      this._pending.reject(new RealtimeSessionError(code, event.message));
      this._pending = null;
    }
    this._emit("close", event);
  }

  /** Send one client event as it is; false when no session is running (nothing is queued). */
  send(event) {
    if (this.status !== "started" || !this._socket || this._socket.readyState !== WebSocket.OPEN) return false;
    return this._send(event);
  }

  _send(event) {
    this._socket.send(JSON.stringify(event));
    this._emit("sent", event);
    return true;
  }

  /** Add text to the turn and (unless `respond: false`) ask for the answer. */
  sendText(text, { respond = true } = {}) {
    if (!this.send({ type: "text.input", text })) return false;
    return respond ? this.createResponse() : true;
  }

  /** Answer a `tool.call`, then (unless `respond: false`) ask the model to go on. */
  sendToolResult(toolCallId, result, { respond = true } = {}) {
    const text = typeof result === "string" ? result : JSON.stringify(result);
    if (!this.send({ type: "tool.result", tool_call_id: toolCallId, tool_result: text })) return false;
    return respond ? this.createResponse() : true;
  }

  createResponse() {
    return this.send({ type: "response.create" });
  }

  /** Stop the response in flight and drop the audio still queued for the speaker. */
  cancelResponse() {
    this._flush();
    return this.send({ type: "response.cancel" });
  }

  /**
   * Change the running session (`null` removes a field). The change is kept: a reconnect starts
   * the new session with the config as updated.
   */
  updateConfig(update) {
    this.config = mergeConfig(this.config, update);
    return this.send({ type: "session.update", config: update });
  }

  _audioContext() {
    if (!this._context) {
      this._context = new AudioContext();
      this._module = this._context.audioWorklet.addModule(WORKLET);
    }
    if (this._context.state === "suspended") this._context.resume().catch(() => {});
    return this._context;
  }

  _preparePlayer(rate) {
    const context = this._audioContext();
    const previous = this._player;
    this._player = this._module.then(async (node) => {
      const old = previous && (await previous.catch(() => null));
      if (old && old.rate === rate) return old;
      if (old) old.node.port.postMessage({ type: "stop" });
      const player = {
        rate,
        node: new AudioWorkletNode(context, "realtime-playback", {
          outputChannelCount: [1],
          processorOptions: { rate, maxQueueSeconds: this.options.maxQueueSeconds },
        }),
      };
      player.node.port.onmessage = (message) => {
        this._playing = message.data.queued > 0;
        this.stats.playedSeconds = message.data.played / message.data.rate;
      };
      player.node.connect(context.destination);
      return player;
    });
    this._player.catch((error) => this._emit("audio.failed", { message: describe(error) }));
  }

  _play(audio) {
    if (typeof audio !== "string") return;
    const samples = base64ToPcm16(audio);
    this.stats.receivedSamples += samples.length;
    if (!this._player) return;
    this._playing = true;
    this._player.then(
      (player) => player.node.port.postMessage({ type: "push", samples }, [samples.buffer]),
      () => {},
    );
  }

  _flush() {
    this._playing = false;
    if (this._player) this._player.then((player) => player.node.port.postMessage({ type: "flush" }), () => {});
  }

  _interrupt() {
    // The user talks over the model: stop the answer and what is still queued for the speaker.
    if (this._responding) this.send({ type: "response.cancel" });
    this._flush();
    this._emit("interrupted", {});
  }

  /** Capture the microphone and stream it as `audio.append` (PCM16 at the model's input rate). */
  async startMicrophone(constraints = {}) {
    if (this.status !== "started") throw new RealtimeSessionError("not_started", "startMicrophone() needs a started session");
    if (this._mic) return;
    const context = this._audioContext();
    const mic = { rate: this.session.input_sample_rate, stream: null, source: null, node: null };
    this._mic = mic;
    try {
      mic.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, ...constraints },
      });
      await this._module;
    } catch (error) {
      if (mic.stream) mic.stream.getTracks().forEach((track) => track.stop());
      if (this._mic === mic) this._mic = null;
      throw error;
    }
    if (this._mic !== mic) {
      mic.stream.getTracks().forEach((track) => track.stop()); // stopped while it was starting
      return;
    }
    mic.source = context.createMediaStreamSource(mic.stream);
    this._connectCapture(mic);
  }

  _connectCapture(mic) {
    mic.node = new AudioWorkletNode(this._context, "realtime-capture", { processorOptions: { rate: mic.rate } });
    mic.node.port.onmessage = (message) => this._sendAudio(message.data);
    mic.source.connect(mic.node);
  }

  _restartCapture(rate) {
    const mic = this._mic;
    if (!mic.node) return;
    mic.node.port.postMessage({ type: "stop" });
    mic.source.disconnect();
    mic.rate = rate;
    this._connectCapture(mic);
  }

  _sendAudio(samples) {
    const socket = this._socket;
    // Bounded: while the session is down or the socket is backed up, blocks are dropped, not queued.
    if (this.status !== "started" || !socket || socket.bufferedAmount > this.options.maxBufferedBytes) {
      this.stats.droppedSamples += samples.length;
      return;
    }
    this.send({ type: "audio.append", audio: pcm16ToBase64(samples) });
    this.stats.sentSamples += samples.length;
  }

  /** Stop capturing; with `commit` (the default) the audio sent so far ends the user's turn. */
  stopMicrophone({ commit = true } = {}) {
    const had = this._mic && this._mic.node;
    this._releaseMicrophone();
    if (had && commit) this.send({ type: "audio.commit" });
  }

  get microphoneOn() {
    return this._mic !== null;
  }

  _releaseMicrophone() {
    const mic = this._mic;
    if (!mic) return;
    this._mic = null;
    if (mic.node) mic.node.port.postMessage({ type: "stop" });
    if (mic.source) mic.source.disconnect();
    if (mic.stream) mic.stream.getTracks().forEach((track) => track.stop());
  }
}

function describe(error) {
  return error && error.message ? error.message : String(error);
}
