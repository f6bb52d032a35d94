// The page: choose an image and options, stream the upscale's progress, compare before and after.
// Plain browser JavaScript, no build step. Talks to GET /model/metadata, GET /app/sizes and POST /app/upscale.
// The options' ranges and defaults come from /model/metadata, which publishes the server's schema; every size the
// page shows or checks comes from GET /app/sizes, the server's own arithmetic.
"use strict";

const $ = (id) => document.getElementById(id);

// The page's size choices: preset scales (those the schema allows), a free scale, one target side, or both.
const SCALE_PRESETS = [2, 4, 8];
const SIZE_LABELS = { scale: "Scale", width: "Width (px)", height: "Height (px)", box: "Width (px)" };
// Typing a side asks the server once it pauses, not at every key.
const SIZES_DELAY_MS = 200;

const state = {
  limits: null,
  options: {}, // by name, as /model/metadata publishes them
  models: [],
  file: null,
  fileUrl: null,
  inputWidth: 0,
  inputHeight: 0,
  controller: null,
  progress: { done: 0, total: null },
  // GET /app/sizes asked last: its query (null: nothing to ask), and its answer or why none came, once known.
  sizes: { query: null, answer: null, failure: null, pending: false, timer: null },
  denoise: { model: null, levels: [] }, // the model's denoise levels at the native scale, from the last answer
  result: null, // { url, width, height, model, lanczos, strength, serverBlob, request, ... }
  blendVersion: 0,
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

// e.g. photo_srgan_x4.png, photo_srgan_w1920h1080_cover_s0.5.png, photo_realcugan_x2_denoise-3_ensemble.png,
// photo_srgan_x4_q70.jpg: every option of the request that changes the output, those at their defaults left out.
function outputFileName(request, model, strength) {
  const { name, size, denoise, ensemble, format, quality } = request;
  const defaults = Object.fromEntries(Object.entries(state.options).map(([key, option]) => [key, option.default]));
  const stem = name.replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_") || "image";
  const extension = format === "jpeg" ? "jpg" : format;
  const label = { scale: `x${size.scale}`, width: `w${size.width}`, height: `h${size.height}`,
    box: `w${size.width}h${size.height}` }[size.mode];
  const fit = size.mode === "box" && size.fit !== defaults.fit ? `_${size.fit}` : "";
  const cleaned = denoise === null || denoise === defaults.denoise ? "" : `_denoise-${denoise}`;
  const averaged = ensemble === defaults.ensemble ? "" : "_ensemble";
  const lossy = quality === null || quality === defaults.quality ? "" : `_q${quality}`;
  const blend = strength === defaults.strength ? "" : `_s${strength}`;
  return `${stem}_${model}_${label}${fit}${cleaned}${averaged}${lossy}${blend}.${extension}`;
}

function setState(name) {
  document.body.dataset.state = name;
}

function setMessage(text, kind = "") {
  const message = $("message");
  message.textContent = text;
  message.className = `message ${kind}`;
}

// ---- metadata: input formats, models, options and limits ----------------------------------------

async function loadMetadata() {
  try {
    const response = await fetch("/model/metadata");
    const metadata = await response.json();
    state.limits = metadata.limits;
    state.options = Object.fromEntries(metadata.options.map((option) => [option.name, option]));
    $("file").accept = acceptedFiles(metadata.input_formats);
    fillModels(metadata.models, metadata.default_model);
    fillOptions(state.options);
    if (metadata.models.some((m) => m.state === "pending" || m.state === "loading")) {
      setTimeout(refreshModels, 2000); // models load in the background at start-up
    }
  } catch (error) {
    setMessage(`Could not read /model/metadata: ${error}`, "error");
  }
  update();
}

// The file chooser's filter: each accepted format's media type and file name suffixes.
function acceptedFiles(formats) {
  return formats.flatMap((format) => [format.content_type, ...format.suffixes]).join(",");
}

async function refreshModels() {
  const metadata = await (await fetch("/model/metadata")).json();
  state.options = Object.fromEntries(metadata.options.map((option) => [option.name, option]));
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

function fillOptions(options) {
  const { scale, fit, format, quality, strength, ensemble } = options;
  const presets = SCALE_PRESETS.filter((s) => s >= scale.minimum && s <= scale.maximum);
  fillSelect($("size-mode"), [...presets.map((s) => [`x${s}`, `${s}x`]), ["scale", "Other scale"],
    ["width", "Width"], ["height", "Height"], ["box", "Width and height"]],
  presets.includes(scale.default) ? `x${scale.default}` : "scale");
  fillSelect($("fit"), fit.choices.map((f) => [f, f]), fit.default);
  $("fit-field").title = fit.help;
  $("denoise-field").title = options.denoise.help;
  fillSelect($("format"), format.choices.map((f) => [f, f.toUpperCase()]), format.default);
  setRange($("quality"), quality.minimum, quality.maximum, quality.default);
  $("quality-value").textContent = String(quality.default);
  setRange($("strength"), strength.minimum, strength.maximum, strength.default);
  showStrength();
  $("strength-field").title = strength.help;
  $("ensemble").checked = ensemble.default;
  showSizeField();
}

function setRange(input, minimum, maximum, value) {
  input.min = String(minimum);
  if (maximum !== null) input.max = String(maximum);
  input.value = String(value);
}

// The free values' inputs: a scale within the schema's range, or a side (both sides, and fit) in pixels.
function showSizeField() {
  const mode = $("size-mode").value;
  const free = !mode.startsWith("x");
  $("size-value-field").hidden = !free;
  $("box-height-field").hidden = $("fit-field").hidden = mode !== "box";
  if (!free) return;
  $("size-value-label").textContent = SIZE_LABELS[mode];
  const input = $("size-value");
  setBounds(input, state.options[mode === "box" ? "width" : mode]);
  if (mode === "scale") {
    input.value = input.value && Number(input.value) <= state.options.scale.maximum ? input.value : "1.5";
    return;
  }
  const twice = (side) => String(state.inputWidth && state.inputHeight ? side * 2 : 1024);
  input.value = twice(mode === "height" ? state.inputHeight : state.inputWidth);
  setBounds($("box-height"), state.options.height);
  $("box-height").value = twice(state.inputHeight);
}

function setBounds(input, option) {
  input.min = String(option.minimum);
  input.max = option.maximum === null ? "" : String(option.maximum);
  input.step = option.type === "number" ? "0.1" : "1";
}

// What the size choice asks for: { mode: "scale", scale }, { mode: "width", width }, { mode: "height", height }
// or { mode: "box", width, height, fit }. A field left empty (or holding no number) is NaN.
function chosenSize() {
  const mode = $("size-mode").value;
  if (mode.startsWith("x")) return { mode: "scale", scale: Number(mode.slice(1)) };
  const typed = (id) => ($(id).value === "" ? NaN : Number($(id).value));
  if (mode === "box") return { mode, width: typed("size-value"), height: typed("box-height"), fit: $("fit").value };
  return { mode, [mode]: typed("size-value") };
}

// A size field left empty or holding no number: the server would take it for a field not sent (its default), so
// the page names it. The server's answer names every other problem with a size.
function emptyFields(size) {
  return ["scale", "width", "height"].filter((name) => Number.isNaN(size[name]))
    .map((name) => `${name} must be ${state.options[name].allowed}, and the field is empty or not a number`);
}

// The form fields a size choice sends.
function sizeFields(size) {
  const { mode, ...fields } = size;
  return Object.entries(fields).map(([name, value]) => [name, String(value)]);
}

// The denoise levels the chosen model offers for this request: those of the native scale it will run, as the
// server's last answer on the sizes for this model gave them, or, until one comes, those of any of its scales.
function denoiseLevels(model) {
  if (state.inputWidth && state.denoise.model === model.id) return state.denoise.levels;
  return state.options.denoise.choices_by_model?.[model.id] ?? [state.options.denoise.default];
}

// Denoise is offered for a model with levels to choose from; the choice is kept while the model has it.
function showDenoise(model) {
  const levels = model ? denoiseLevels(model) : [];
  const field = $("denoise-field");
  field.hidden = levels.length < 2;
  if (field.hidden) return;
  const select = $("denoise");
  const kept = levels.includes(select.value) ? select.value : state.options.denoise.default;
  fillSelect(select, levels.map((level) => [level, level]), levels.includes(kept) ? kept : levels[0]);
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
  warnings.push(...emptyFields(chosenSize()));
  const { answer, failure } = state.sizes;
  if (failure) warnings.push(failure);
  else if (answer?.refusal) warnings.push(answer.refusal);
  return warnings;
}

// The question for GET /app/sizes, or null where there is none to ask: the image's size (known once the browser
// decodes it) and the options the upscale would send. The server answers the output's size, whether the output, a
// model pass's result (above the native scale, or of the part of the input fit=cover needs) or the ensemble's
// pixels would pass its limits, and the model's denoise levels at the native scale: its arithmetic decides them.
function sizesQuery(model) {
  if (!state.inputWidth || !state.limits || model?.state !== "ready" || emptyFields(chosenSize()).length) return null;
  // The page's route runs the model at any strength: the slider changes no size.
  const fields = [["input_width", String(state.inputWidth)], ["input_height", String(state.inputHeight)],
    ...optionFields().filter(([name]) => name !== "strength")];
  return new URLSearchParams(fields).toString();
}

// Asks for the sizes of ``query`` once the choices rest; an earlier question's answer, come later, is dropped.
function askSizes(query) {
  clearTimeout(state.sizes.timer);
  state.sizes = { query, answer: null, failure: null, pending: query !== null, timer: null };
  if (query !== null) state.sizes.timer = setTimeout(() => fetchSizes(query), SIZES_DELAY_MS);
}

async function fetchSizes(query) {
  let answer = null;
  let failure = null;
  try {
    const response = await fetch(`/app/sizes?${query}`);
    const body = await response.json().catch(() => ({ message: `${response.status} ${response.statusText}` }));
    if (response.ok) answer = body;
    else failure = body.message;
  } catch (error) {
    failure = `Could not ask the server for the output's size: ${error.message}`;
  }
  if (state.sizes.query !== query) return;
  state.sizes = { ...state.sizes, answer, failure, pending: false };
  if (answer) state.denoise = { model: $("model").value, levels: answer.denoise_levels };
  update();  // the levels may change the denoise choice, and so the question
}

// Everything that depends on the file and the options: sizes, warnings, buttons.
function update() {
  const format = $("format").value;
  const known = state.inputWidth > 0 && state.options.scale !== undefined;
  $("input-size").textContent = !state.file ? "–" : known ? formatSize(state.inputWidth, state.inputHeight) : "size shown after upscaling";
  $("quality-field").hidden = !(format === "jpeg" || format === "webp");
  const model = state.models.find((m) => m.id === $("model").value);
  $("model-hint").textContent = model ? model.use_when : "";
  showDenoise(model);

  const query = known ? sizesQuery(model) : null;
  if (query !== state.sizes.query) askSizes(query);
  const { answer, pending } = state.sizes;
  $("output-size").textContent = pending ? "checking…" : answer?.width ? formatSize(answer.width, answer.height) : "–";
  const warnings = limitWarnings();
  $("warnings").replaceChildren(...warnings.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
  // Busy while the server's answer on the sizes is awaited: a warning may still come.
  $("warnings").setAttribute("aria-busy", String(pending));
  // Not before the server has answered on the sizes asked for these choices: it has checked them then.
  const unchecked = query !== null && answer === null;
  const running = state.controller !== null;
  $("run").disabled = running || !state.file || unchecked || warnings.length > 0 || !model || model.state !== "ready";
  // Another image while one runs would become the "before" of the running one's result.
  $("file").disabled = running;
}

// ---- running: one streaming request ------------------------------------------------------------

// The options the request sends, as [name, value] fields.
function optionFields() {
  const fields = [["model", $("model").value], ...sizeFields(chosenSize())];
  if (!$("denoise-field").hidden) fields.push(["denoise", $("denoise").value]);
  fields.push(["strength", $("strength").value], ["format", $("format").value]);
  if (!$("quality-field").hidden) fields.push(["quality", String(Number($("quality").value))]);  // png has none: a 400
  fields.push(["ensemble", $("ensemble").checked ? "true" : "false"]);
  return fields;
}

async function run() {
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  optionFields().forEach(([name, value]) => form.append(name, value));
  const size = chosenSize();
  const denoise = $("denoise-field").hidden ? null : $("denoise").value;
  const quality = $("quality-field").hidden ? null : Number($("quality").value);
  const request = { name: state.file.name, model: $("model").value, size, denoise, format: $("format").value,
    quality, ensemble: $("ensemble").checked };

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
      const body = await response.json().catch(() => ({ message: `${response.status} ${response.statusText}` }));
      throw serverError(body.message, response.headers.get("Retry-After"));
    }
    const outcome = await readEvents(response.body, handleEvent);
    if (!outcome) throw new Error("the server closed the connection before the result");
    if (outcome.event === "error") throw serverError(outcome.message, outcome.retry_after_s);
    await showResult(outcome, request, (performance.now() - started) / 1000);
    setState("done");
  } catch (error) {
    if (error.name === "AbortError") {
      const { done, total } = state.progress;
      setMessage(total === null ? "Cancelled before the upscale started."
        : `Cancelled after ${done} of ${total} tiles; the server stopped the work.`, "warning");
      showProgress("Cancelled");
      setState("cancelled");
    } else {
      const wait = error.retryAfter ? ` (the server asks to try again in ${error.retryAfter} s)` : "";
      setMessage(`${error.message}${wait}`, "error");
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

// What the server refused or stopped, with the seconds its 503 asks to wait: the Retry-After header of an answer
// refused at once, or the retry_after_s of the error event that ends a stream.
function serverError(message, retryAfter) {
  return Object.assign(new Error(message), { retryAfter: retryAfter ?? null });
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
  const bar = $("progress-bar");
  if (fraction === null) bar.removeAttribute("aria-valuenow");
  else bar.setAttribute("aria-valuenow", (fraction * 100).toFixed(0));
  const fill = $("progress-fill");
  fill.classList.toggle("indeterminate", fraction === null && state.controller !== null);
  if (fraction !== null) fill.style.width = `${(fraction * 100).toFixed(1)}%`;
  else if (state.controller !== null) fill.style.width = "";
}

function cancel() {
  if (state.controller) state.controller.abort();
}

// ---- the result: before/after comparison, zoom, download ---------------------------------------

const base64Bytes = async (text) => (await fetch(`data:application/octet-stream;base64,${text}`)).arrayBuffer();

async function showResult(event, request, seconds) {
  const blob = await (await fetch(`data:${event.content_type};base64,${event.image}`)).blob();
  if (state.result) URL.revokeObjectURL(state.result.url);
  const [model, lanczos] = await Promise.all([event.layers.model, event.layers.lanczos]
    .map(async (layer) => decodePng(await base64Bytes(layer))));
  state.result = { url: null, width: event.width, height: event.height, model, lanczos, strength: event.strength,
    serverBlob: blob, request, modelName: event.model, inputWidth: event.input_width,
    inputHeight: event.input_height, seconds };

  const after = $("after");
  after.width = event.width;
  after.height = event.height;
  $("before").src = state.fileUrl;
  $("after-tag").textContent = `After · ${event.model}`;
  await showBlend();
  $("result").hidden = false;
  $("placeholder").hidden = true;
  showProgress(`${state.progress.done} of ${state.progress.total} tiles · done`, 1);
  setMessage("");
  layoutStage();
}

function showStrength() {
  $("strength-value").textContent = Number($("strength").value).toFixed(2);
}

// The strength slider after an upscale: the new blend at once on the page, then the download to match.
// At the strength the server used, the download is the server's answer itself.
async function showBlend() {
  const result = state.result;
  if (!result) return;
  const strength = Number($("strength").value);
  const version = ++state.blendVersion;
  const samples = blendLayers(result.model, result.lanczos, strength);
  $("after").getContext("2d").putImageData(toImageData(result.model, samples), 0, 0);
  const blob = strength === result.strength ? result.serverBlob : await encodeBlend(result, samples);
  if (version !== state.blendVersion) return; // the slider moved on while this one was encoded
  if (result.url) URL.revokeObjectURL(result.url);
  result.url = URL.createObjectURL(blob);
  const fileName = outputFileName(result.request, result.modelName, strength);
  const download = $("download");
  download.href = result.url;
  download.download = fileName;
  download.title = `Save as ${fileName}`;
  download.dataset.strength = String(strength);
  $("result-info").textContent =
    `${fileName} · ${formatSize(result.width, result.height)} from ${formatSize(result.inputWidth, result.inputHeight)} · ` +
    `${formatBytes(blob.size)} · ${result.seconds.toFixed(1)} s`;
}

// PNG: the page's own encoder, bit for bit the server's layout. JPEG and WebP: the browser's encoder.
async function encodeBlend(result, samples) {
  if (result.request.format === "png") return encodePng(result.model, samples);
  return new Promise((resolve) => $("after").toBlob(resolve, result.serverBlob.type, result.request.quality / 100));
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
    buttons.forEach((b) => {
      b.classList.toggle("active", b === button);
      b.setAttribute("aria-pressed", String(b === button));
    });
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
    event.preventDefault();  // also while running: the browser would open the file in place of the page
    if (!$("file").disabled) chooseFile(event.dataTransfer.files[0]);
  });
}

function main() {
  setUpDrop();
  setUpViewer();
  setUpSegments("before", showBefore);
  setUpSegments("zoom", (zoom) => { state.zoom = zoom; layoutStage(); });
  showBefore("nearest");
  ["model", "format", "fit", "denoise", "ensemble"].forEach((id) => $(id).addEventListener("change", update));
  $("size-mode").addEventListener("change", () => { showSizeField(); update(); });
  ["size-value", "box-height"].forEach((id) => $(id).addEventListener("input", update));
  $("strength").addEventListener("input", () => { showStrength(); showBlend(); });
  $("quality").addEventListener("input", () => { $("quality-value").textContent = $("quality").value; });
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", cancel);
  window.addEventListener("resize", layoutStage);
  loadMetadata();
}

main();
