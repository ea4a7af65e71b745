// Runs on the audio thread: hands each block of microphone samples to the page, which downsamples,
// encodes and sends them. Kept this small on purpose: the audio thread must never wait.
class CaptureProcessor extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}

registerProcessor("capture", CaptureProcessor);
