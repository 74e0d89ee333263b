// The page: record or pick a file, upload it, follow its stages, show the picture or what went wrong.
import { ApiError, createApi, uploadFile } from "./api.js";
import { initAuth } from "./auth.js";
import { Recorder, recordingSupported } from "./recorder.js";

const STEPS = [
  ["uploaded", "Uploaded"],
  ["transcribing", "Transcribing"],
  ["waiting", "Waiting for the GPU"],
  ["generating", "Generating the picture"],
  ["done", "Done"],
];
const POLL_MS = 1000;
const EXTENSIONS = { "audio/webm": "webm", "audio/ogg": "ogg", "audio/mp4": "m4a" };

const $ = (id) => document.getElementById(id);
let api;
let config;
let recorder = null;
let following = 0; // bumped to stop polling an upload the page no longer shows

function show(id, visible) {
  $(id).hidden = !visible;
}

function formatSeconds(seconds) {
  const whole = Math.floor(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

function setBusy(busy) {
  $("record").disabled = busy || !recordingSupported();
  $("file").disabled = busy;
}

function resetResult() {
  following += 1;
  show("error-card", false);
  show("result-card", false);
  show("progress-card", false);
  show("upload-progress", false);
}

function showError(error) {
  $("error-reason").textContent = error.reason || error.message || String(error);
  $("error-action").textContent = error.action || "try again";
  show("error-card", true);
  setBusy(false);
  $("try-again").focus();
}

function renderStages(view) {
  const list = $("stages");
  list.replaceChildren();
  const current = STEPS.findIndex(([stage]) => stage === view.stage);
  for (const [index, [stage, label]] of STEPS.entries()) {
    const item = document.createElement("li");
    item.textContent = label;
    if (view.stage === "failed") {
      if (index === 0) item.className = "passed";
    } else if (index < current || view.stage === "done") {
      item.className = "passed";
    }
    if (stage === view.stage) item.setAttribute("aria-current", "step");
    list.append(item);
  }
  if (view.stage === "failed") {
    const item = document.createElement("li");
    item.className = "failed";
    item.textContent = "Failed";
    item.setAttribute("aria-current", "step");
    list.append(item);
  }
}

function renderStatus(view) {
  const retry = view.retrying ? " (a step is being retried)" : "";
  $("status").textContent = `${view.stageLabel} · ${view.elapsedSeconds.toFixed(1)} s${retry}`;
  renderStages(view);
  show("progress-card", true);
}

function renderResult(view) {
  $("transcript").textContent = view.transcript || "(nothing was heard)";
  $("image").src = view.links.image;
  $("image").alt = view.transcript ? `Picture of: ${view.transcript}` : "The generated picture";
  $("link-image").href = view.links.image;
  $("link-metadata").href = view.links.metadata;
  $("link-html").href = view.links.html;
  const parameters = $("parameters");
  parameters.replaceChildren();
  for (const [name, value] of Object.entries(view.parameters || {})) {
    const term = document.createElement("dt");
    term.textContent = name.replaceAll("_", " ");
    const detail = document.createElement("dd");
    detail.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
    parameters.append(term, detail);
  }
  const notices = $("notices");
  notices.replaceChildren(...(view.notices || []).map((text) => Object.assign(document.createElement("li"), { textContent: text })));
  show("result-card", true);
  setBusy(false);
}

async function follow(id) {
  const ticket = ++following;
  show("error-card", false);
  show("result-card", false);
  while (ticket === following) {
    let view;
    try {
      view = await api.getUpload(id);
    } catch (error) {
      if (ticket === following) showError(error);
      return;
    }
    if (ticket !== following) return;
    renderStatus(view);
    if (view.stage === "done") {
      renderResult(view);
      refreshHistory();
      return;
    }
    if (view.stage === "failed") {
      showError(view.error || {});
      refreshHistory();
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function submit(blob, fileName) {
  resetResult();
  setBusy(true);
  try {
    const answer = await api.createUpload({ contentType: blob.type, size: blob.size, fileName });
    show("upload-progress", true);
    $("upload-bar").value = 0;
    await uploadFile(answer.upload, blob, fileName, (fraction) => {
      $("upload-bar").value = Math.round(fraction * 100);
    });
    show("upload-progress", false);
    refreshHistory();
    await follow(answer.id);
  } catch (error) {
    show("upload-progress", false);
    showError(error instanceof ApiError ? error : { reason: error.message, action: "try again" });
  }
}

async function startRecording() {
  resetResult();
  recorder = new Recorder({
    maxSeconds: config.maxRecordingSeconds || 60,
    onTick: (seconds) => {
      $("timer").textContent = formatSeconds(seconds);
    },
    onLevel: (level) => {
      $("level").value = level;
    },
  });
  try {
    await recorder.start();
  } catch (error) {
    recorder = null;
    showError({
      reason: `the microphone cannot be used (${error.name || error.message})`,
      action: "allow microphone access for this page, or pick an audio file instead",
    });
    return;
  }
  setBusy(true);
  $("stop").disabled = false;
  $("stop").focus();
  const blob = await recorder.finished;
  recorder = null;
  $("stop").disabled = true;
  const extension = EXTENSIONS[blob.type.split(";")[0]] || "webm";
  await submit(blob, `recording.${extension}`);
}

async function refreshHistory() {
  let uploads;
  try {
    ({ uploads } = await api.listUploads());
  } catch {
    return; // the history is a convenience: a failed refresh leaves the last one shown
  }
  const list = $("history");
  list.replaceChildren(...uploads.map(historyItem));
  show("history-empty", uploads.length === 0);
}

function historyItem(view) {
  const item = document.createElement("li");
  item.className = view.stage;
  const button = document.createElement("button");
  button.type = "button";
  const when = new Date(view.uploadedAt).toLocaleString();
  let picture;
  if (view.links?.image) {
    picture = Object.assign(document.createElement("img"), { src: view.links.image, alt: "", loading: "lazy" });
  } else {
    picture = Object.assign(document.createElement("span"), { className: "placeholder", textContent: view.stageLabel });
  }
  const caption = document.createElement("small");
  caption.textContent = `${view.stageLabel} · ${when}`;
  button.setAttribute("aria-label", `${view.stageLabel}, uploaded ${when}: show`);
  button.append(picture, caption);
  button.addEventListener("click", () => follow(view.id));
  item.append(button);
  return item;
}

async function main() {
  config = await (await fetch("config.json", { cache: "no-store" })).json();
  const auth = await initAuth(config);
  api = createApi(config, auth);
  $("max-seconds").textContent = config.maxRecordingSeconds || 60;
  if (auth.enabled) {
    show("account", true);
    $("account-name").textContent = auth.user || "";
    show("sign-in", !auth.user);
    show("sign-out", Boolean(auth.user));
    $("sign-in").addEventListener("click", () => auth.signIn());
    $("sign-out").addEventListener("click", () => auth.signOut());
  }
  setBusy(false);
  if (!recordingSupported()) $("limits").textContent = "This browser cannot record here: pick an audio file.";
  $("record").addEventListener("click", startRecording);
  $("stop").addEventListener("click", () => recorder?.stop());
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) submit(file, file.name);
    $("file").value = "";
  });
  const again = () => {
    resetResult();
    setBusy(false);
    $("record").focus();
  };
  $("try-again").addEventListener("click", again);
  $("another").addEventListener("click", again);
  if (!auth.enabled || auth.user) await refreshHistory();
}

main().catch((error) => showError({ reason: `the page could not start: ${error.message}`, action: "reload the page" }));
