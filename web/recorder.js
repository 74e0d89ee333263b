// The microphone: MediaRecorder for the recording, an AnalyserNode for the level meter.

// In order of preference; Chromium records WebM/Opus, Firefox Ogg or WebM, Safari MP4 (FACTS.md "Browser").
const TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/mp4"];

export function recordingSupported() {
  return Boolean(navigator.mediaDevices?.getUserMedia && window.MediaRecorder);
}

/**
 * Record until `stop()` or `maxSeconds`; `onTick(seconds)` and `onLevel(0..1)` about ten times a second.
 * `start()` resolves once recording runs; `finished` resolves with the recording as a Blob.
 */
export class Recorder {
  constructor({ maxSeconds, onTick, onLevel }) {
    this.maxSeconds = maxSeconds;
    this.onTick = onTick;
    this.onLevel = onLevel;
    this.finished = null;
  }

  async start() {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const mimeType = TYPES.find((type) => MediaRecorder.isTypeSupported(type));
    const recorder = new MediaRecorder(stream, mimeType ? { mimeType } : {});
    const chunks = [];
    recorder.ondataavailable = (event) => {
      if (event.data.size) chunks.push(event.data);
    };
    const context = new AudioContext();
    const analyser = context.createAnalyser();
    analyser.fftSize = 1024;
    context.createMediaStreamSource(stream).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    const started = performance.now();
    this.finished = new Promise((resolve) => {
      recorder.onstop = () => {
        clearInterval(this.ticker);
        stream.getTracks().forEach((track) => track.stop());
        context.close();
        this.onLevel(0);
        resolve(new Blob(chunks, { type: recorder.mimeType || mimeType || "audio/webm" }));
      };
    });
    this.ticker = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      const rms = Math.sqrt(samples.reduce((sum, value) => sum + value * value, 0) / samples.length);
      // Speech sits around 0.05-0.3 RMS: a square root spreads it over the meter.
      this.onLevel(Math.min(1, Math.sqrt(rms * 3)));
      const seconds = (performance.now() - started) / 1000;
      this.onTick(seconds);
      if (seconds >= this.maxSeconds) this.stop();
    }, 100);
    // Chunks every second, so a long recording is not held in one buffer until the end.
    recorder.start(1000);
    this.recorder = recorder;
  }

  stop() {
    if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
  }
}
