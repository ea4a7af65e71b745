// G.711 µ-law and an 8 kHz downsampler: what the softphone needs to talk like a phone line.
// The encoder is the one in CPython's audioop (which codec/g711.py uses): 14-bit magnitude, bias 33,
// clip 8159. Both ends therefore agree bit for bit, which the browser test checks.

const BIAS = 0x84;
const SEGMENT_ENDS = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];

/** One 16-bit PCM sample to its µ-law byte. */
export function ulawEncodeSample(sample) {
  let value = Math.max(-32768, Math.min(32767, Math.round(sample))) >> 2;
  let mask = 0xff;
  if (value < 0) {
    value = -value;
    mask = 0x7f;
  }
  value = Math.min(value, 8159) + (BIAS >> 2);
  let segment = 0;
  while (segment < 8 && value > SEGMENT_ENDS[segment]) segment++;
  if (segment >= 8) return 0x7f ^ mask;
  return ((segment << 4) | ((value >> (segment + 1)) & 0x0f)) ^ mask;
}

const DECODE = new Int16Array(256);
for (let byte = 0; byte < 256; byte++) {
  const u = ~byte & 0xff;
  const exponent = (u >> 4) & 0x07;
  const magnitude = ((((u & 0x0f) << 3) + BIAS) << exponent) - BIAS;
  DECODE[byte] = u & 0x80 ? -magnitude : magnitude;
}

/** Int16Array (or plain numbers) to µ-law bytes. */
export function ulawEncode(samples) {
  const out = new Uint8Array(samples.length);
  for (let i = 0; i < samples.length; i++) out[i] = ulawEncodeSample(samples[i]);
  return out;
}

/** µ-law bytes to Int16Array. */
export function ulawDecode(bytes) {
  const out = new Int16Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = DECODE[bytes[i]];
  return out;
}

export function bytesToBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
  return btoa(text);
}

export function base64ToBytes(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/**
 * Streaming resampler from the audio context's rate (usually 48 kHz) down to 8 kHz.
 *
 * A windowed-sinc low-pass at 3.6 kHz comes first, so speech above the phone band does not fold back
 * into it as it would with plain decimation; history is kept between blocks, so block edges do not click.
 */
export class Downsampler {
  constructor(inputRate, outputRate = 8000, taps = 95) {
    this.step = inputRate / outputRate;
    this.kernel = lowPass(taps, (0.45 * outputRate) / inputRate);
    this.buffer = new Float32Array(taps - 1); // zeros: the filter's history before the first block
    this.position = taps - 1; // where the next output sample falls, in `buffer` indices
  }

  /** Float32Array in [-1, 1] at the input rate -> Float32Array at 8 kHz. */
  process(input) {
    const buffer = new Float32Array(this.buffer.length + input.length);
    buffer.set(this.buffer);
    buffer.set(input, this.buffer.length);
    const out = [];
    while (Math.floor(this.position) + 1 < buffer.length) {
      const index = Math.floor(this.position);
      const fraction = this.position - index;
      const a = this.filterAt(buffer, index);
      out.push(fraction ? a + (this.filterAt(buffer, index + 1) - a) * fraction : a);
      this.position += this.step;
    }
    const keep = Math.max(0, Math.floor(this.position) - (this.kernel.length - 1));
    this.buffer = buffer.slice(keep);
    this.position -= keep;
    return Float32Array.from(out);
  }

  filterAt(buffer, index) {
    let sum = 0;
    for (let k = 0; k < this.kernel.length; k++) sum += this.kernel[k] * buffer[index - k];
    return sum;
  }
}

function lowPass(taps, cutoff) {
  const kernel = new Float32Array(taps);
  const middle = (taps - 1) / 2;
  let total = 0;
  for (let k = 0; k < taps; k++) {
    const x = k - middle;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const window = 0.42 - 0.5 * Math.cos((2 * Math.PI * k) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * k) / (taps - 1));
    kernel[k] = sinc * window;
    total += kernel[k];
  }
  for (let k = 0; k < taps; k++) kernel[k] /= total;
  return kernel;
}
