// The page: choose an image and options, stream the upscale's progress, compare before and after.
// Plain browser JavaScript, no build step. Talks to GET /model/metadata and POST /app/upscale.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  limits: null,
  models: [],
  file: null,
  fileUrl: null,
  inputWidth: 0,
  inputHeight: 0,
  controller: null,
  progress: { done: 0, total: null },
  result: null, // { url, width, height, fileName }
  zoom: "fit",
  split: 50,
};

// ---- formatting -------------------------------------------------------------------------------

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function formatSize(width, height) {
  const megapixels = (width * height) / 1e6;
  return `${width} × ${height} px (${megapixels < 0.1 ? megapixels.toFixed(3) : megapixels.toFixed(2)} MP)`;
}

function outputFileName(inputName, model, scale, format) {
  const stem = inputName.replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_") || "image";
  const extension = format === "jpeg" ? "jpg" : format;
  return `${stem}_${model}_x${scale}.${extension}`;
}

function setState(name) {
  document.body.dataset.state = name;
}

function setMessage(text, kind = "") {
  const message = $("message");
  message.textContent = text;
  message.className = `message ${kind}`;
}

// ---- metadata: models, scales, formats and limits ----------------------------------------------

async function loadMetadata() {
  try {
    const response = await fetch("/model/metadata");
    const metadata = await response.json();
    state.limits = metadata.limits;
    fillModels(metadata.models, metadata.default_model);
    fillSelect($("scale"), metadata.limits.scales.map((s) => [s, `${s}x`]), 4);
    fillSelect($("format"), metadata.limits.formats.map((f) => [f, f.toUpperCase()]), "png");
    if (metadata.models.some((m) => m.state === "pending" || m.state === "loading")) {
      setTimeout(refreshModels, 2000); // models load in the background at start-up
    }
  } catch (error) {
    setMessage(`Could not read /model/metadata: ${error}`, "error");
  }
  update();
}

async function refreshModels() {
  const metadata = await (await fetch("/model/metadata")).json();
  fillModels(metadata.models, $("model").value || metadata.default_model);
  if (metadata.models.some((m) => m.state === "pending" || m.state === "loading")) {
    setTimeout(refreshModels, 2000);
  }
  update();
}

function fillModels(models, selected) {
  state.models = models;
  const select = $("model");
  select.replaceChildren(...models.map((model) => {
    const option = new Option(model.state === "ready" ? model.title : `${model.title} (${model.state})`, model.id);
    option.disabled = model.state !== "ready";
    return option;
  }));
  select.value = selected;
}

function fillSelect(select, entries, selected) {
  select.replaceChildren(...entries.map(([value, label]) => new Option(label, value)));
  select.value = String(selected);
}

// ---- the chosen image ------------------------------------------------------------------------

async function chooseFile(file) {
  if (!file) return;
  if (state.fileUrl) URL.revokeObjectURL(state.fileUrl);
  state.file = file;
  state.fileUrl = URL.createObjectURL(file);
  state.inputWidth = state.inputHeight = 0;
  try {
    const bitmap = await createImageBitmap(file);
    state.inputWidth = bitmap.width;
    state.inputHeight = bitmap.height;
    bitmap.close();
    $("thumb").src = state.fileUrl;
    $("thumb").hidden = false;
  } catch {
    $("thumb").hidden = true; // e.g. TIFF: the browser cannot show it, the server can still read it
  }
  $("drop-text").innerHTML = "";
  $("drop-text").append(Object.assign(document.createElement("strong"), { textContent: file.name }),
    document.createElement("br"), `${formatBytes(file.size)} · click or drop to change`);
  setMessage("");
  setState("ready");
  update();
}

function limitWarnings() {
  const limits = state.limits;
  const warnings = [];
  if (!limits || !state.file) return warnings;
  if (state.file.size > limits.max_upload_bytes) {
    warnings.push(`The file is ${formatBytes(state.file.size)}; the server accepts uploads up to ${formatBytes(limits.max_upload_bytes)}.`);
  }
  const pixels = state.inputWidth * state.inputHeight;
  if (pixels > limits.max_input_pixels) {
    warnings.push(`The image has ${pixels.toLocaleString("en")} pixels; the limit is ${limits.max_input_pixels.toLocaleString("en")} input pixels.`);
  }
  const networkPixels = pixels * 16; // the network always makes 4x first, even for 2x and 3x
  if (networkPixels > limits.max_output_pixels) {
    warnings.push(`The 4x output would have ${networkPixels.toLocaleString("en")} pixels; the limit is ${limits.max_output_pixels.toLocaleString("en")} output pixels.`);
  }
  return warnings;
}

// Everything that depends on the file and the options: sizes, warnings, buttons.
function update() {
  const scale = Number($("scale").value || 4);
  const format = $("format").value;
  const known = state.inputWidth > 0;
  $("input-size").textContent = !state.file ? "–" : known ? formatSize(state.inputWidth, state.inputHeight) : "size shown after upscaling";
  $("output-size").textContent = known ? formatSize(state.inputWidth * scale, state.inputHeight * scale) : "–";
  $("quality-field").hidden = !(format === "jpeg" || format === "webp");
  const model = state.models.find((m) => m.id === $("model").value);
  $("model-hint").textContent = model ? model.use_when : "";

  const warnings = limitWarnings();
  $("warnings").replaceChildren(...warnings.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
  const running = state.controller !== null;
  $("run").disabled = running || !state.file || warnings.length > 0 || !model || model.state !== "ready";
}

// ---- running: one streaming request ------------------------------------------------------------

async function run() {
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  form.append("model", $("model").value);
  form.append("scale", $("scale").value);
  form.append("format", $("format").value);
  form.append("quality", $("quality").value);
  form.append("ensemble", $("ensemble").checked ? "true" : "false");
  const request = { name: state.file.name, model: $("model").value, scale: $("scale").value, format: $("format").value };

  state.controller = new AbortController();
  state.progress = { done: 0, total: null };
  const started = performance.now();
  const timer = setInterval(() => { $("elapsed").textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`; }, 100);
  setState("running");
  setMessage("");
  $("progress-box").hidden = false;
  $("cancel").hidden = false;
  showProgress("Uploading…");
  update();

  try {
    const response = await fetch("/app/upscale", { method: "POST", body: form, signal: state.controller.signal });
    if (!response.ok) {
      const body = await response.json().catch(() => ({ message: response.statusText }));
      throw new Error(body.message);
    }
    const outcome = await readEvents(response.body, handleEvent);
    if (!outcome) throw new Error("the server closed the connection before the result");
    if (outcome.event === "error") throw new Error(outcome.message);
    await showResult(outcome, request, (performance.now() - started) / 1000);
    setState("done");
  } catch (error) {
    if (error.name === "AbortError") {
      const { done, total } = state.progress;
      setMessage(`Cancelled after ${done} of ${total ?? "?"} tiles; the server stopped the work.`, "warning");
      showProgress("Cancelled");
      setState("cancelled");
    } else {
      setMessage(error.message, "error");
      showProgress("Failed");
      setState("error");
    }
  } finally {
    clearInterval(timer);
    $("elapsed").textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`;
    state.controller = null;
    $("cancel").hidden = true;
    update();
  }
}

// Reads newline-delimited JSON; returns the final event (result or error).
// Scans only each new chunk for newlines, so a result of many megabytes stays linear.
async function readEvents(stream, onEvent) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let pending = [];
  let final = null;
  const take = (line) => {
    if (!line.trim()) return;
    const event = JSON.parse(line);
    if (event.event === "result" || event.event === "error") final = event;
    else onEvent(event);
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const pieces = value.split("\n");
    if (pieces.length === 1) {
      pending.push(value);
      continue;
    }
    take(pending.join("") + pieces[0]);
    pieces.slice(1, -1).forEach(take);
    pending = [pieces[pieces.length - 1]];
  }
  take(pending.join(""));
  return final;
}

function handleEvent(event) {
  if (event.event === "start" || event.event === "progress") {
    state.progress = { done: event.done, total: event.total };
  }
  const { done, total } = state.progress;
  if (total === null) {
    showProgress("Starting…");
  } else if (done === total) {
    showProgress(`${done} of ${total} tiles · encoding…`, 1);
  } else {
    showProgress(`${done} of ${total} tiles`, done / total);
  }
}

function showProgress(text, fraction = null) {
  $("progress-text").textContent = text;
  const fill = $("progress-fill");
  fill.classList.toggle("indeterminate", fraction === null && state.controller !== null);
  if (fraction !== null) fill.style.width = `${(fraction * 100).toFixed(1)}%`;
  else if (state.controller !== null) fill.style.width = "";
}

function cancel() {
  if (state.controller) state.controller.abort();
}

// ---- the result: before/after comparison, zoom, download ---------------------------------------

async function showResult(event, request, seconds) {
  const blob = await (await fetch(`data:${event.content_type};base64,${event.image}`)).blob();
  if (state.result) URL.revokeObjectURL(state.result.url);
  const fileName = outputFileName(request.name, event.model, request.scale, request.format);
  state.result = { url: URL.createObjectURL(blob), width: event.width, height: event.height, fileName };

  const after = $("after");
  after.src = state.result.url;
  await after.decode().catch(() => {});
  $("before").src = state.fileUrl;
  $("after-tag").textContent = `After · ${event.model}`;
  const download = $("download");
  download.href = state.result.url;
  download.download = fileName;
  download.title = `Save as ${fileName}`;
  $("result-info").textContent =
    `${fileName} · ${formatSize(event.width, event.height)} from ${formatSize(event.input_width, event.input_height)} · ` +
    `${formatBytes(blob.size)} · ${seconds.toFixed(1)} s`;
  $("result").hidden = false;
  $("placeholder").hidden = true;
  showProgress(`${state.progress.done} of ${state.progress.total} tiles · done`, 1);
  setMessage("");
  layoutStage();
}

function layoutStage() {
  if (!state.result) return;
  const { width, height } = state.result;
  const viewer = $("viewer");
  let scale = Number(state.zoom) / (window.devicePixelRatio || 1);
  if (state.zoom === "fit") {
    const maxHeight = Math.max(240, window.innerHeight * 0.7);
    scale = Math.min(viewer.clientWidth / width, maxHeight / height);
  }
  // Keep the point at the centre of the view where it is while zooming.
  const centreX = (viewer.scrollLeft + viewer.clientWidth / 2) / Math.max(1, viewer.scrollWidth);
  const centreY = (viewer.scrollTop + viewer.clientHeight / 2) / Math.max(1, viewer.scrollHeight);
  const stage = $("stage");
  stage.style.width = `${Math.round(width * scale)}px`;
  stage.style.height = `${Math.round(height * scale)}px`;
  // Beyond one screen pixel per image pixel, show the output's real pixels instead of a blur.
  $("after").classList.toggle("pixelated", scale * (window.devicePixelRatio || 1) > 1.01);
  viewer.scrollLeft = centreX * viewer.scrollWidth - viewer.clientWidth / 2;
  viewer.scrollTop = centreY * viewer.scrollHeight - viewer.clientHeight / 2;
  setSplit(state.split);
}

function setSplit(percent) {
  state.split = Math.min(100, Math.max(0, percent));
  $("before-layer").style.clipPath = `inset(0 ${100 - state.split}% 0 0)`;
  $("divider").style.left = `${state.split}%`;
  $("split").value = String(state.split);
}

function splitFromPointer(event) {
  const box = $("stage").getBoundingClientRect();
  setSplit(((event.clientX - box.left) / box.width) * 100);
}

// Dragging the divider (or anywhere when nothing can scroll) moves the split; otherwise it pans.
function setUpViewer() {
  const viewer = $("viewer");
  let drag = null;
  viewer.addEventListener("pointerdown", (event) => {
    const scrollable = viewer.scrollWidth > viewer.clientWidth || viewer.scrollHeight > viewer.clientHeight;
    const onDivider = event.target.closest("#divider") !== null;
    drag = onDivider || !scrollable
      ? { mode: "split" }
      : { mode: "pan", x: event.clientX, y: event.clientY, left: viewer.scrollLeft, top: viewer.scrollTop };
    viewer.setPointerCapture(event.pointerId);
    if (drag.mode === "split") splitFromPointer(event);
    viewer.classList.toggle("panning", drag.mode === "pan");
  });
  viewer.addEventListener("pointermove", (event) => {
    if (!drag) return;
    if (drag.mode === "split") {
      splitFromPointer(event);
    } else {
      viewer.scrollLeft = drag.left - (event.clientX - drag.x);
      viewer.scrollTop = drag.top - (event.clientY - drag.y);
    }
  });
  const stop = () => { drag = null; viewer.classList.remove("panning"); };
  viewer.addEventListener("pointerup", stop);
  viewer.addEventListener("pointercancel", stop);
  $("split").addEventListener("input", (event) => setSplit(Number(event.target.value)));
}

// The input enlarged by the browser: nearest neighbour shows its real pixels, smooth interpolates.
function showBefore(mode) {
  $("before").classList.toggle("pixelated", mode === "nearest");
  $("before-tag").textContent = `Before · ${mode}`;
}

function setUpSegments(attribute, apply) {
  const buttons = document.querySelectorAll(`[data-${attribute}]`);
  buttons.forEach((button) => button.addEventListener("click", () => {
    buttons.forEach((b) => b.classList.toggle("active", b === button));
    apply(button.dataset[attribute]);
  }));
}

// ---- wiring ------------------------------------------------------------------------------------

function setUpDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => chooseFile(event.target.files[0]));
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    chooseFile(event.dataTransfer.files[0]);
  });
}

function main() {
  setUpDrop();
  setUpViewer();
  setUpSegments("before", showBefore);
  setUpSegments("zoom", (zoom) => { state.zoom = zoom; layoutStage(); });
  showBefore("nearest");
  ["model", "scale", "format"].forEach((id) => $(id).addEventListener("change", update));
  $("quality").addEventListener("input", () => { $("quality-value").textContent = $("quality").value; });
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", cancel);
  window.addEventListener("resize", layoutStage);
  loadMetadata();
}

main();
