// Runs on the audio thread: the RMS level of the microphone (input 0) and of the bot's audio (input 1) over
// windows of whole render quanta, about 10 ms each, stamped with the audio clock at the window's end. The
// audio clock advances with the samples themselves, so the stamps stay exact to the window even when the
// browser throttles the page's timers (a background tab runs setInterval once a second, and
// requestAnimationFrame not at all): the page may read the messages late, never mistimed.
const WINDOW_SECONDS = 0.01;

class LevelsProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.windowFrames = Math.round(sampleRate * WINDOW_SECONDS);
    this.start();
  }

  start() {
    this.frames = 0;
    this.sums = [0, 0];
  }

  process(inputs) {
    let frames = 128; // a render quantum, when neither input is connected
    for (let input = 0; input < 2; input++) {
      const channel = inputs[input] && inputs[input][0];
      if (!channel) continue;
      frames = channel.length;
      let sum = 0;
      for (let i = 0; i < channel.length; i++) sum += channel[i] * channel[i];
      this.sums[input] += sum;
    }
    this.frames += frames;
    if (this.frames >= this.windowFrames) {
      const db = (sum) => (sum > 0 ? 10 * Math.log10(sum / this.frames) : -Infinity);
      this.port.postMessage({ time: (currentFrame + frames) / sampleRate, mic: db(this.sums[0]), bot: db(this.sums[1]) });
      this.start();
    }
    return true;
  }
}

registerProcessor("levels", LevelsProcessor);
