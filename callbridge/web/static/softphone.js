// The callbridge softphone: call the bot from a browser over WebRTC (Opus, and the camera for video bots) or
// the µ-law WebSocket (8 kHz, phone quality), see the turn state, levels, how long each reply took, messages,
// additional outputs and the bot's video.
// Plain ES modules served by the app; nothing to build. `window.softphone` is the live object.

import { Downsampler, base64ToBytes, bytesToBase64, ulawDecode, ulawEncode } from "./g711.js";
import { ReplyTimer } from "./reply-timer.js";

const PHONE_RATE = 8000;
const PHONE_FRAME = 160; // 20 ms at 8 kHz, as Twilio and the server frame it
const PLAYBACK_LEAD = 0.06; // seconds of received phone audio buffered before it plays
const METER_FLOOR_DB = -60;
const METER_FALL_DB = 3; // per 50 ms tick: meters rise at once and fall smoothly, like a VU meter

const TURN_LABELS = {
  idle: "Not in a call",
  connecting: "Connecting…",
  listening: "Listening",
  caller: "Caller speaking",
  bot: "Bot speaking",
};
// Log messages from the server and the turn state each one starts.
const TURN_AFTER_LOG = {
  started_talking: "caller",
  barge_in: "caller",
  pause_detected: "listening",
  response_starting: "bot",
  playback_finished: "listening",
};

const REFUSALS = {
  concurrency_limit_reached: (meta) => `All lines are busy (limit of ${meta.limit} calls). Try again in a moment.`,
  connection_already_exists: () => "A call with this id is already in progress.",
  service_unavailable: () => "The service is not taking calls right now (starting or shutting down).",
};

function refusalText(body, status) {
  const meta = (body && body.meta) || {};
  const describe = REFUSALS[meta.error];
  return describe ? describe(meta) : `Call refused (${meta.error || `HTTP ${status}`}).`;
}

/** Why getUserMedia failed, in words a caller can act on. */
function mediaRefusalText(error, wanted) {
  if (error.name === "NotAllowedError") return `permission for the ${wanted} was refused: allow it in the browser's site settings, or call with audio only`;
  if (error.name === "NotFoundError" || error.name === "OverconstrainedError") return `no ${wanted} found on this device`;
  if (error.name === "NotReadableError") return `the ${wanted} is in use by another program`;
  return `cannot open the ${wanted}: ${error.message}`;
}

function newCallId() {
  return crypto.randomUUID ? crypto.randomUUID() : `call-${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

/** dBFS of what an analyser currently sees (RMS of its window). */
function levelDb(analyser, scratch) {
  analyser.getFloatTimeDomainData(scratch);
  let sum = 0;
  for (let i = 0; i < scratch.length; i++) sum += scratch[i] * scratch[i];
  const rms = Math.sqrt(sum / scratch.length);
  return rms > 0 ? 20 * Math.log10(rms) : -Infinity;
}

class Softphone {
  constructor(ui) {
    this.ui = ui;
    this.active = false;
    this.turnState = "idle";
    this.stateHistory = [];
    this.messages = [];
    this.outputs = [];
    this.peakMicDb = -Infinity;
    this.peakBotDb = -Infinity;
    this.replyTimer = new ReplyTimer();
  }

  // -- the call ------------------------------------------------------------------------------------

  async call(transport, mode, modality = "audio") {
    this.reset();
    this.active = true;
    this.transport = transport;
    // The µ-law WebSocket carries audio only.
    this.modality = transport === "webrtc" ? modality : "audio";
    this.id = newCallId();
    this.startedAt = performance.now();
    this.ui.callId.textContent = this.id;
    this.setTurnState("connecting");
    this.ui.setInCall(true);
    try {
      this.audio = new AudioContext();
      await this.audio.resume();
      const sending = transport === "websocket" || mode !== "receive";
      if (sending) await this.openMedia(this.modality !== "video", this.modality !== "audio");
      this.botAnalyser = this.audio.createAnalyser();
      this.botAnalyser.fftSize = 1024;
      this.startMeters();
      await this.startReplyTimer();
      if (transport === "webrtc") await this.callOverWebRTC(mode);
      else await this.callOverWebSocket();
    } catch (error) {
      this.note(`error: ${error.message}`, "error");
      this.hangUp(error.message);
    }
  }

  /** The microphone and/or the camera, as the modality needs; the microphone feeds the input meter. */
  async openMedia(audio, video) {
    if (!window.isSecureContext || !navigator.mediaDevices) {
      throw new Error(
        `this browser allows the microphone only on https:// or on localhost, not on ${location.origin}: ` +
          `open http://localhost:${location.port || 80}/ on the server's machine (or through an SSH tunnel: ` +
          `ssh -L ${location.port || 80}:localhost:${location.port || 80} server), or serve callbridge over https`,
      );
    }
    const wanted = [audio && "microphone", video && "camera"].filter(Boolean).join(" and ");
    this.status(`asking for the ${wanted}…`);
    try {
      this.mic = await navigator.mediaDevices.getUserMedia({
        audio: audio && { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
        video: video && { width: { ideal: 640 }, height: { ideal: 480 } },
      });
    } catch (error) {
      throw new Error(mediaRefusalText(error, wanted));
    }
    if (video) this.ui.showLocalVideo(this.mic);
    if (audio) {
      this.micSource = this.audio.createMediaStreamSource(this.mic);
      this.micAnalyser = this.audio.createAnalyser();
      this.micAnalyser.fftSize = 1024;
      this.micSource.connect(this.micAnalyser);
    }
    this.note(`${wanted} on`);
  }

  hangUp(reason = "hung up") {
    if (!this.active) return;
    this.active = false;
    clearInterval(this.meterTimer);
    if (this.ws) {
      if (this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({ event: "stop" }));
        this.ws.close(1000, "hung up");
      }
      this.ws.onclose = null;
    }
    if (this.pc) this.pc.close();
    if (this.mic) this.mic.getTracks().forEach((track) => track.stop());
    if (this.audio) this.audio.close();
    this.ui.remoteAudio.srcObject = null;
    this.ui.clearVideo();
    this.ui.clearMeter(this.ui.micMeter);
    this.ui.clearMeter(this.ui.botMeter);
    this.setTurnState("idle");
    this.status(`call ended: ${reason}`);
    this.note(`call ended: ${reason}`);
    this.ui.setInCall(false);
  }

  reset() {
    Object.assign(this, {
      pc: null, ws: null, mic: null, micSource: null, micAnalyser: null, audio: null, scheduled: new Set(), playAt: 0,
    });
    this.stateHistory = [];
    this.messages = [];
    this.outputs = [];
    this.peakMicDb = this.peakBotDb = -Infinity;
    this.replyTimer = new ReplyTimer();
    this.ui.showReplyLatency(null);
    this.ui.clearLists();
  }

  // -- WebRTC --------------------------------------------------------------------------------------

  async callOverWebRTC(mode) {
    this.status("connecting over WebRTC…");
    // The service's own ICE_SERVERS (none by default: a browser reaches the server directly; README,
    // "WebRTC behind NAT").
    const config = await fetch("/webrtc/config").then((response) => response.json());
    const pc = (this.pc = new RTCPeerConnection({ iceServers: config.iceServers }));
    const channel = pc.createDataChannel("text");
    channel.onmessage = (event) => this.onMessage(JSON.parse(event.data));
    const kinds = { audio: ["audio"], video: ["video"], "audio-video": ["audio", "video"] }[this.modality];
    if (mode === "receive") kinds.forEach((kind) => pc.addTransceiver(kind, { direction: "recvonly" }));
    else this.mic.getTracks().forEach((track) => pc.addTrack(track, this.mic));

    pc.ontrack = (event) => {
      if (event.track.kind === "video") {
        this.ui.showRemoteVideo(new MediaStream([event.track]));
        return;
      }
      const stream = new MediaStream([event.track]);
      // Chromium only decodes a remote stream that plays somewhere: the <audio> element plays it, the
      // analyser (through a muted gain, so it is pulled) measures it.
      this.ui.remoteAudio.srcObject = stream;
      this.ui.remoteAudio.play().catch(() => this.note("click the page to hear the bot", "error"));
      const mute = this.audio.createGain();
      mute.gain.value = 0;
      this.audio.createMediaStreamSource(stream).connect(this.botAnalyser).connect(mute).connect(this.audio.destination);
    };
    pc.onconnectionstatechange = () => {
      const state = pc.connectionState;
      if (state === "connected") this.onConnected();
      else if (state === "failed" || state === "closed") this.hangUp(`connection ${state}`);
    };

    // Candidates found before the answer wait for it: the server only knows the call once it has the offer.
    const early = [];
    let answered = false;
    pc.onicecandidate = ({ candidate }) => {
      const init = candidate ? candidate.toJSON() : { candidate: "", sdpMid: "0", sdpMLineIndex: 0 };
      if (answered) this.trickle(init);
      else early.push(init);
    };
    await pc.setLocalDescription(await pc.createOffer());
    const response = await fetch(`/webrtc/offer?mode=${encodeURIComponent(mode)}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", webrtc_id: this.id, modality: this.modality }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || body.status === "failed") throw new Error(refusalText(body, response.status));
    await pc.setRemoteDescription(body);
    answered = true;
    early.forEach((init) => this.trickle(init));
  }

  trickle(candidate) {
    fetch("/webrtc/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ type: "ice-candidate", webrtc_id: this.id, candidate }),
    }).catch(() => {});
  }

  // -- µ-law WebSocket -----------------------------------------------------------------------------

  async callOverWebSocket() {
    this.status("connecting over the WebSocket…");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = (this.ws = new WebSocket(`${scheme}://${location.host}/websocket/offer`));
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("the WebSocket did not open"));
    });
    ws.onerror = null;
    ws.onmessage = (event) => this.onSocketMessage(JSON.parse(event.data));
    ws.onclose = (event) => this.hangUp(event.code === 1000 ? "the server hung up" : `socket closed (${event.code} ${event.reason})`);
    ws.send(JSON.stringify({ event: "start", websocket_id: this.id }));

    // Bot audio: µ-law 8 kHz chunks scheduled back to back; `clear` stops whatever is scheduled.
    this.playback = this.audio.createGain();
    this.playback.connect(this.botAnalyser).connect(this.audio.destination);

    // Caller audio: the mic at the context's rate -> low-pass + 8 kHz -> µ-law -> 20 ms media events.
    await this.audio.audioWorklet.addModule("/static/capture-worklet.js");
    const capture = new AudioWorkletNode(this.audio, "capture");
    const silent = this.audio.createGain();
    silent.gain.value = 0;
    this.micSource.connect(capture).connect(silent).connect(this.audio.destination);
    const downsampler = new Downsampler(this.audio.sampleRate, PHONE_RATE);
    let pending = new Int16Array(0);
    capture.port.onmessage = (event) => {
      if (ws.readyState !== WebSocket.OPEN) return;
      const narrow = downsampler.process(event.data);
      const joined = new Int16Array(pending.length + narrow.length);
      joined.set(pending);
      for (let i = 0; i < narrow.length; i++) joined[pending.length + i] = Math.max(-1, Math.min(1, narrow[i])) * 32767;
      let start = 0;
      for (; start + PHONE_FRAME <= joined.length; start += PHONE_FRAME) {
        const payload = bytesToBase64(ulawEncode(joined.subarray(start, start + PHONE_FRAME)));
        ws.send(JSON.stringify({ event: "media", media: { payload } }));
      }
      pending = joined.slice(start);
    };
    this.onConnected();
  }

  onSocketMessage(message) {
    if (message.event === "media") this.play(ulawDecode(base64ToBytes(message.media.payload)));
    else if (message.event === "clear") this.clearPlayback();
    else if (message.event) return; // pong
    else if (message.status === "failed") {
      const text = refusalText(message, 0);
      this.note(text, "error");
      this.hangUp(text);
    } else this.onMessage(message);
  }

  play(samples) {
    const buffer = this.audio.createBuffer(1, samples.length, PHONE_RATE);
    const data = buffer.getChannelData(0);
    for (let i = 0; i < samples.length; i++) data[i] = samples[i] / 32768;
    const source = this.audio.createBufferSource();
    source.buffer = buffer;
    source.connect(this.playback);
    const now = this.audio.currentTime;
    if (this.playAt < now) this.playAt = now + PLAYBACK_LEAD; // first chunk, or the queue ran dry
    source.start(this.playAt);
    this.playAt += buffer.duration;
    this.scheduled.add(source);
    source.onended = () => this.scheduled.delete(source);
  }

  clearPlayback() {
    const dropped = this.scheduled.size;
    this.scheduled.forEach((source) => source.stop());
    this.scheduled.clear();
    this.playAt = 0;
    this.note(`clear: dropped ${dropped} queued chunks`);
  }

  // -- messages and state --------------------------------------------------------------------------

  onConnected() {
    const media = this.modality === "audio" ? "" : ` (${this.modality})`;
    this.status(`in a call over ${this.transport === "webrtc" ? "WebRTC" : "the µ-law WebSocket"}${media}`);
    this.note("connected");
    this.setTurnState("listening");
  }

  onMessage(message) {
    this.messages.push(message);
    const data = typeof message.data === "string" ? message.data : JSON.stringify(message.data);
    this.ui.addLog(this.elapsed(), message.type, data, message.type === "error" ? "error" : message.type === "warning" ? "warning" : "");
    if (message.type === "log" && TURN_AFTER_LOG[message.data]) this.setTurnState(TURN_AFTER_LOG[message.data]);
    if (message.type === "fetch_output") {
      this.outputs.push(message.data);
      const said = Array.isArray(message.data) ? message.data[0] : null;
      // A transcript (the assistant's {"role", "text"} outputs) goes to the conversation, the rest to outputs.
      if (said && typeof said.text === "string" && (said.role === "user" || said.role === "assistant")) {
        this.ui.addChat(this.elapsed(), said.role, said.text);
      } else {
        this.ui.addOutput(this.elapsed(), message.data);
      }
    }
  }

  setTurnState(state) {
    this.turnState = state;
    this.stateHistory.push(state);
    this.ui.turnState.dataset.state = state;
    this.ui.turnState.textContent = TURN_LABELS[state];
  }

  startMeters() {
    const scratch = new Float32Array(1024);
    this.meterTimer = setInterval(() => {
      if (this.micAnalyser) {
        const db = levelDb(this.micAnalyser, scratch);
        this.peakMicDb = Math.max(this.peakMicDb, db);
        this.ui.setMeter(this.ui.micMeter, db);
      }
      const db = levelDb(this.botAnalyser, scratch);
      this.peakBotDb = Math.max(this.peakBotDb, db);
      this.ui.setMeter(this.ui.botMeter, db);
    }, 50);
  }

  /**
   * Times each reply as the caller hears it, from this page's own audio: an AudioWorklet (level-worklet.js)
   * taps the microphone and the bot's audio after the analyser, in ~10 ms windows on the audio clock, for
   * both transports (WebRTC's remote track, or the WebSocket's scheduled chunks, playback lead included). So
   * it includes the network, the server, and the browser's jitter buffer, not the sound card's own input and
   * output delay. Resolution: one window at each end (4 render quanta of 128 frames: 10.7 ms at 48 kHz,
   * 11.6 ms at 44.1 kHz), whatever the tab's timers do. The server's log messages are not used: they say what the server saw, not what was heard.
   */
  async startReplyTimer() {
    await this.audio.audioWorklet.addModule("/static/level-worklet.js");
    const levels = new AudioWorkletNode(this.audio, "levels", { numberOfInputs: 2 });
    if (this.micSource) this.micSource.connect(levels, 0, 0);
    this.botAnalyser.connect(levels, 0, 1);
    const silent = this.audio.createGain();
    silent.gain.value = 0;
    levels.connect(silent).connect(this.audio.destination);
    levels.port.onmessage = ({ data }) => this.onLevels(data);
  }

  onLevels({ time, mic, bot }) {
    if (!this.active) return;
    const reply = this.replyTimer.step(time, mic, bot);
    if (!reply) return;
    if (reply.overlapped) {
      this.note("the bot began while you were still speaking: this reply is not timed");
      return;
    }
    const latencyMs = Math.round(reply.latencyMs);
    this.ui.showReplyLatency(latencyMs, Math.round(this.replyTimer.medianMs()), this.replyTimer.latenciesMs.length);
    this.note(`reply after ${latencyMs} ms (end of your speech → first bot audio)`);
  }

  status(text) {
    this.ui.status.textContent = text;
  }

  note(text, kind = "local") {
    this.ui.addLog(this.elapsed(), "page", text, kind);
  }

  elapsed() {
    return this.startedAt ? (performance.now() - this.startedAt) / 1000 : 0;
  }
}

// -- the page ----------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  callId: $("call-id"),
  turnState: $("turn-state"),
  replyLatency: $("reply-latency"),
  micMeter: $("mic-meter"),
  botMeter: $("bot-meter"),
  remoteAudio: $("remote-audio"),
  remoteVideo: $("remote-video"),
  localVideo: $("local-video"),
  videoCard: $("video-card"),
  log: $("log"),
  outputs: $("outputs"),
  chat: $("chat"),
  callButton: $("call"),
  hangUpButton: $("hang-up"),

  setInCall(inCall) {
    this.callButton.disabled = inCall;
    this.hangUpButton.disabled = !inCall;
    document.querySelectorAll("#settings input, #settings select").forEach((input) => (input.disabled = inCall));
    if (!inCall) syncMode();
  },
  setMeter(meter, db) {
    const shown = Number(meter.dataset.shown ?? -Infinity);
    db = Math.max(db, shown - METER_FALL_DB);
    meter.dataset.shown = Number.isFinite(db) && db > METER_FLOOR_DB ? db : -Infinity;
    const fraction = Number.isFinite(db) ? Math.max(0, Math.min(1, (db - METER_FLOOR_DB) / -METER_FLOOR_DB)) : 0;
    meter.querySelector(".fill").style.width = `${(fraction * 100).toFixed(1)}%`;
    meter.dataset.db = Number.isFinite(db) ? db.toFixed(1) : "-inf";
  },
  showRemoteVideo(stream) {
    this.videoCard.hidden = false;
    this.remoteVideo.srcObject = stream;
    this.remoteVideo.play().catch(() => {});
  },
  showLocalVideo(stream) {
    this.videoCard.hidden = false;
    this.localVideo.srcObject = new MediaStream(stream.getVideoTracks());
    this.localVideo.play().catch(() => {});
  },
  clearVideo() {
    this.remoteVideo.srcObject = null;
    this.localVideo.srcObject = null;
  },
  showReplyLatency(latencyMs, medianMs, turns) {
    this.replyLatency.textContent = latencyMs === null
      ? "No reply timed yet"
      : `Reply after ${latencyMs} ms · median ${medianMs} ms over ${turns} turn${turns === 1 ? "" : "s"}`;
  },
  clearMeter(meter) {
    delete meter.dataset.shown;
    this.setMeter(meter, -Infinity);
  },
  addLog(seconds, type, text, kind) {
    const item = document.createElement("li");
    item.className = kind || "";
    item.dataset.type = type;
    item.innerHTML = `<time>${seconds.toFixed(2)}s</time><b></b><span></span>`;
    item.querySelector("b").textContent = type;
    item.querySelector("span").textContent = text;
    this.log.prepend(item);
  },
  addOutput(seconds, values) {
    const item = document.createElement("li");
    item.innerHTML = `<time>${seconds.toFixed(2)}s</time><code></code>`;
    const shown = Array.isArray(values) && values.length === 1 ? values[0] : values;
    item.querySelector("code").textContent = typeof shown === "string" ? shown : JSON.stringify(shown, null, 1);
    this.outputs.prepend(item);
    $("outputs-empty").hidden = true;
  },
  addChat(seconds, role, text) {
    const item = document.createElement("li");
    item.className = role;
    item.innerHTML = `<time>${seconds.toFixed(2)}s</time><b></b><span></span>`;
    item.querySelector("b").textContent = role === "user" ? "you" : "bot";
    item.querySelector("span").textContent = text;
    this.chat.append(item);
    this.chat.scrollTop = this.chat.scrollHeight;
    $("chat-empty").hidden = true;
  },
  clearLists() {
    this.log.replaceChildren();
    this.outputs.replaceChildren();
    this.chat.replaceChildren();
    $("outputs-empty").hidden = false;
    $("chat-empty").hidden = false;
  },
};

function chosenTransport() {
  return document.querySelector("input[name=transport]:checked").value;
}

function syncMode() {
  // The µ-law WebSocket always carries both directions of audio only; modes and video are WebRTC features.
  $("mode").disabled = $("modality").disabled = chosenTransport() !== "webrtc";
}

const params = new URLSearchParams(location.search);
if (params.get("transport")) document.querySelector(`input[name=transport][value="${params.get("transport")}"]`).checked = true;
if (params.get("mode")) $("mode").value = params.get("mode");
if (params.get("modality")) $("modality").value = params.get("modality");
syncMode();
document.querySelectorAll("input[name=transport]").forEach((input) => input.addEventListener("change", syncMode));

const softphone = new Softphone(ui);
window.softphone = softphone;
ui.callButton.addEventListener("click", () => softphone.call(chosenTransport(), $("mode").value, $("modality").value));
ui.hangUpButton.addEventListener("click", () => softphone.hangUp("you hung up"));
window.addEventListener("pagehide", () => softphone.hangUp("page closed"));
