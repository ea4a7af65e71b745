// How long the caller waits for the bot: from the end of their speech (the last window in which the
// microphone was above MIC_SPEECH_DB) to the first window in which the bot's audio is above BOT_AUDIBLE_DB.
// Fed the level windows of level-worklet.js in order; nothing here reads a clock or the DOM, so a test can
// feed it levels directly.

/** dBFS (RMS over a window) the microphone must reach to count as speech: above a quiet room after the
 * browser's noise suppression (about -60), below speech at a headset or laptop microphone (-35 to -15). */
export const MIC_SPEECH_DB = -45;
/** dBFS at which the bot's audio is heard: its silence is digital (µ-law 0xFF, Opus silence), far below. */
export const BOT_AUDIBLE_DB = -45;
/** A quieter stretch than this inside speech is a gap between syllables or words, not its end: a reply that
 * starts within it started while the caller was still speaking, and is not timed (no bot on a network answers
 * this fast after a real end of speech). */
export const SPEECH_GAP_MS = 100;
/** The microphone counts as the caller's speech only once the bot has been quiet this long: its own voice
 * coming back through a loudspeaker (and the room's echo of it) is not a new turn. */
export const BOT_ECHO_MS = 150;

export class ReplyTimer {
  constructor() {
    this.latenciesMs = [];
    this.speechEndedAt = null; // the end of the last speech window of a turn waiting for its reply (seconds)
    this.botAudibleAt = -Infinity;
  }

  /**
   * One level window ending at `time` (seconds, on the audio clock). Returns `{ latencyMs }` when the bot's
   * reply to a finished turn begins in this window, `{ overlapped: true }` when it began while the caller was
   * still speaking (not timed), else null.
   */
  step(time, micDb, botDb) {
    if (botDb >= BOT_AUDIBLE_DB) {
      this.botAudibleAt = time;
      const speechEndedAt = this.speechEndedAt;
      if (speechEndedAt === null) return null; // no turn waiting, or the reply already began
      this.speechEndedAt = null;
      const latencyMs = (time - speechEndedAt) * 1000;
      if (micDb >= MIC_SPEECH_DB || latencyMs < SPEECH_GAP_MS) return { overlapped: true };
      this.latenciesMs.push(latencyMs);
      return { latencyMs };
    }
    if (micDb >= MIC_SPEECH_DB && (time - this.botAudibleAt) * 1000 >= BOT_ECHO_MS) this.speechEndedAt = time;
    return null;
  }

  /** The median of the call's timed replies (ms), or null before the first. */
  medianMs() {
    const sorted = [...this.latenciesMs].sort((a, b) => a - b);
    if (!sorted.length) return null;
    const middle = sorted.length >> 1;
    return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
  }
}
