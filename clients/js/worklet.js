// The audio worklet module: microphone capture and playback, both resampling against the
// context's own rate (`sampleRate`), so one AudioContext at the device's rate serves any model.
import { floatToPcm16, pcm16ToFloat, Resampler } from "./pcm.js";

/** Microphone in, PCM16 blocks of 100 ms at the model's input rate out (posted to the page). */
class RealtimeCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const rate = options.processorOptions.rate;
    this.resampler = new Resampler(sampleRate, rate);
    this.block = new Float32Array(Math.round(rate / 10));
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (message) => {
      if (message.data.type === "stop") this.running = false;
    };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      const samples = this.resampler.process(channel);
      for (let i = 0; i < samples.length; i++) {
        this.block[this.filled++] = samples[i];
        if (this.filled === this.block.length) {
          const pcm = floatToPcm16(this.block);
          this.port.postMessage(pcm, [pcm.buffer]);
          this.filled = 0;
        }
      }
    }
    return this.running;
  }
}

/** PCM16 chunks at the model's output rate in, the speaker out; `flush` drops what is queued. */
class RealtimePlayback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.rate = options.processorOptions.rate;
    this.resampler = new Resampler(this.rate, sampleRate);
    this.limit = Math.round(sampleRate * options.processorOptions.maxQueueSeconds);
    this.chunks = [];
    this.offset = 0; // read position in chunks[0]
    this.queued = 0;
    this.played = 0;
    this.dropped = 0;
    this.running = true;
    this.port.onmessage = (message) => this.receive(message.data);
  }

  receive(message) {
    if (message.type === "push") {
      const samples = this.resampler.process(pcm16ToFloat(message.samples));
      // Bounded: past the limit a chunk is dropped (and counted) rather than queued.
      if (this.queued + samples.length > this.limit) this.dropped += samples.length;
      else if (samples.length) {
        this.chunks.push(samples);
        this.queued += samples.length;
      }
    } else if (message.type === "flush") {
      this.chunks = [];
      this.offset = 0;
      this.queued = 0;
      this.resampler = new Resampler(this.rate, sampleRate);
    } else if (message.type === "stop") {
      this.running = false;
    }
    this.report();
  }

  report() {
    this.port.postMessage({ queued: this.queued, played: this.played, dropped: this.dropped, rate: sampleRate });
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    const wasQueued = this.queued;
    let written = 0;
    while (written < out.length && this.chunks.length) {
      const chunk = this.chunks[0];
      const take = Math.min(out.length - written, chunk.length - this.offset);
      out.set(chunk.subarray(this.offset, this.offset + take), written);
      written += take;
      this.offset += take;
      if (this.offset === chunk.length) {
        this.chunks.shift();
        this.offset = 0;
      }
    }
    out.fill(0, written);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.queued -= written;
    this.played += written;
    if (wasQueued && !this.queued) this.report(); // drained: the page learns playback ended
    return this.running;
  }
}

registerProcessor("realtime-capture", RealtimeCapture);
registerProcessor("realtime-playback", RealtimePlayback);
