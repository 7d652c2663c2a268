// PCM16 helpers shared by the page and the audio worklets: pure functions, no browser API.

/** Streaming sample-rate conversion of mono Float32 audio, one chunk at a time. */
export class Resampler {
  /**
   * @param {number} from input rate (Hz)
   * @param {number} to output rate (Hz)
   */
  constructor(from, to) {
    if (!(from > 0 && to > 0)) throw new RangeError("sample rates must be positive");
    this.step = from / to; // input samples per output sample
    this.phase = 0; // down: input samples gathered toward the next output; up: position past `last`
    this.sum = 0;
    this.count = 0;
    this.last = 0;
  }

  /**
   * Converts one chunk; the state carries over, so chunk boundaries leave no gap or click.
   * @param {Float32Array} input
   * @returns {Float32Array}
   */
  process(input) {
    const step = this.step;
    if (step === 1) return input.slice();
    const out = new Float32Array(Math.ceil(input.length / step) + 2);
    let n = 0;
    if (step > 1) {
      // Down: each output sample is the mean of the input samples it covers (a box filter, enough
      // to keep a 48 kHz microphone's highs from folding into 16 or 24 kHz speech).
      for (let i = 0; i < input.length; i++) {
        this.sum += input[i];
        this.count += 1;
        this.phase += 1;
        if (this.phase >= step) {
          out[n++] = this.sum / this.count;
          this.sum = 0;
          this.count = 0;
          this.phase -= step;
        }
      }
    } else {
      // Up: linear interpolation between consecutive samples, the previous chunk's last one first.
      let position = this.phase;
      let previous = this.last;
      for (let i = 0; i < input.length; i++) {
        const next = input[i];
        while (position < 1) {
          out[n++] = previous + (next - previous) * position;
          position += step;
        }
        position -= 1;
        previous = next;
      }
      this.phase = position;
      this.last = previous;
    }
    return out.slice(0, n);
  }
}

/**
 * Float samples in [-1, 1] to PCM16 (clipped).
 * @param {Float32Array} samples
 * @returns {Int16Array}
 */
export function floatToPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
  }
  return out;
}

/**
 * PCM16 to float samples in [-1, 1).
 * @param {Int16Array} samples
 * @returns {Float32Array}
 */
export function pcm16ToFloat(samples) {
  const out = new Float32Array(samples.length);
  for (let i = 0; i < samples.length; i++) out[i] = samples[i] / 32768;
  return out;
}

/**
 * Little-endian PCM16 to base64, as `audio.append` carries it.
 * @param {Int16Array} samples
 * @returns {string}
 */
export function pcm16ToBase64(samples) {
  const bytes = new Uint8Array(samples.length * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < samples.length; i++) view.setInt16(i * 2, samples[i], true);
  let raw = "";
  for (let i = 0; i < bytes.length; i += 0x8000) raw += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(raw);
}

/**
 * Base64 of little-endian PCM16 (an `audio.delta`) to samples; a trailing odd byte is dropped.
 * @param {string} text
 * @returns {Int16Array}
 */
export function base64ToPcm16(text) {
  const raw = atob(text);
  const out = new Int16Array(raw.length >> 1);
  for (let i = 0; i < out.length; i++) {
    const value = raw.charCodeAt(2 * i) | (raw.charCodeAt(2 * i + 1) << 8);
    out[i] = value >= 0x8000 ? value - 0x10000 : value;
  }
  return out;
}
