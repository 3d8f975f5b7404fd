"use strict";
// genforge playground: builds its form from GET /v1/models and calls the OpenAI-compatible API of the
// server it is served from. No dependencies, no build step.

const KEY_STORAGE = "genforge.apiKey";  // sessionStorage: this tab only, never the URL

// Sampling fields every text model takes. A model's own `options` refine them (defaults, ranges) or add more.
const TEXT_OPTIONS = {
  temperature: {type: "float", default: 1.0, min: 0, max: 10,
                help: "Higher is more random; 0 always picks the likeliest token."},
  top_p: {type: "float", default: 1.0, min: 0, max: 1,
          help: "Sample only from the likeliest tokens whose probabilities add up to this."},
  top_k: {type: "int", default: null, min: 1, help: "Sample only from the k likeliest tokens (optional)."},
};

// The encodings /v1/audio/speech may answer in, and their types; raw pcm has no header, so no player takes it.
const AUDIO_TYPES = {wav: "audio/wav", flac: "audio/flac", mp3: "audio/mpeg", pcm: null};

const $ = (id) => document.getElementById(id);
let models = new Map();    // id -> entry of GET /v1/models
let optionInputs = [];     // [{name, spec, input}] for the selected model
let controller = null;     // AbortController of the running request
let modelsRequest = 0;     // only the newest model-list answer is used
let audioUrl = null;       // object URL of the clip in the player (revoked when replaced)

// ---- HTTP ----

function headers() {
  const key = $("api-key").value.trim();
  return key ? {"Authorization": `Bearer ${key}`} : {};
}

async function request(path, body, signal) {
  let resp;
  try {
    resp = await fetch(path, body === undefined ? {headers: headers(), signal}
      : body instanceof FormData ? {method: "POST", headers: headers(), body, signal}  // multipart (edits)
        : {method: "POST", headers: {...headers(), "Content-Type": "application/json"}, body: JSON.stringify(body), signal});
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error(`Could not reach the server (${err.message}).`);
  }
  if (!resp.ok) throw await httpError(resp);
  return resp;
}

// The server answers errors as {"error": {"message", "type", "param", "code"}}.
async function httpError(resp) {
  let message = `HTTP ${resp.status} ${resp.statusText}`.trim();
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch { /* not JSON: keep the status line */ }
  return Object.assign(new Error(message), {status: resp.status});
}

// Yields the `data:` payload of each server-sent event as it arrives.
async function* serverSentEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const {value, done} = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), {stream: !done});
      const events = buffer.split(/\r?\n\r?\n/);
      buffer = done ? "" : events.pop();  // the last piece may be an event still arriving
      for (const event of events) {
        const data = event.split(/\r?\n/).filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (data) yield data;
      }
      if (done) return;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// ---- status and errors ----

function showError(err) {
  const box = $("error");
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.textContent = err.status === 401
    ? `This server needs a valid API key: enter it in the "API key" field above. (Server said: ${err.message})`
    : err.message;
  box.hidden = false;
}

function setStatus(text) {
  $("status").textContent = text;
}

function seconds(started) {
  return `${((performance.now() - started) / 1000).toFixed(2)} s`;
}

// ---- the form ----

function describe(model) {
  const info = model.genforge || {};
  const parts = [info.modality, info.family, info.music_kind, info.image_size,
                 info.sample_rate && `${info.sample_rate} Hz`, info.frames && `${info.frames} frames at ${info.fps} fps`];
  if (info.conditional && info.classes && info.classes.length) parts.push(`${info.classes.length} classes`);
  const voices = (info.voices || []).filter((v) => v !== "default");
  if (voices.length) parts.push(`${voices.length} voice${voices.length === 1 ? "" : "s"}`);
  return parts.filter(Boolean).join(" · ");
}

async function loadModels() {
  const mine = ++modelsRequest;
  const select = $("model");
  let list;
  try {
    list = (await (await request("/v1/models")).json()).data;
  } catch (err) {
    if (mine !== modelsRequest) return;
    showError(err);
    if (!models.size) select.replaceChildren(new Option(err.status === 401 ? "enter the API key to list the models" : "no models", ""));
    return;
  }
  if (mine !== modelsRequest) return;
  const previous = select.value;
  models = new Map(list.map((m) => [m.id, m]));
  select.replaceChildren(...list.map((m) => new Option(`${m.id} (${(m.genforge || {}).family || "model"})`, m.id)));
  if (!models.size) select.append(new Option("this server serves no models", ""));
  if (models.has(previous)) select.value = previous;
  showError(null);
  renderModel();
}

function show(fieldset, visible) {
  fieldset.hidden = !visible;
  fieldset.disabled = !visible;  // hidden fields take no part in form validation
}

function setMax(input, max) {
  if (max != null) {
    input.max = max;
    if (Number(input.value) > max) input.value = max;
  } else {
    input.removeAttribute("max");
  }
}

function renderModel() {
  const model = models.get($("model").value);
  const info = (model && model.genforge) || {};
  const limits = info.limits || {};
  const isImage = info.modality === "image", isText = info.modality === "text", isAudio = info.modality === "audio";
  const isVideo = info.modality === "video", isMusic = info.modality === "music";
  const known = isImage || isText || isAudio || isVideo || isMusic;
  show($("image-fields"), isImage);
  show($("text-fields"), isText);
  show($("audio-fields"), isAudio);
  show($("video-fields"), isVideo);
  show($("music-fields"), isMusic);
  $("model-info").textContent = !model ? ""
    : known ? describe(model) : `${describe(model)}: this playground cannot drive this kind of model yet.`;
  $("generate").disabled = !known || controller !== null;
  optionInputs = [];
  if (isImage) {
    setMax($("n"), limits.max_n);
    const classes = (info.conditional && info.classes) || [];
    $("label").replaceChildren(new Option("every class in turn", ""), ...classes.map((c) => new Option(c, c)));
    $("label-field").hidden = classes.length === 0;
    buildOptions($("image-options"), info.options || {});
  } else if (isText) {
    setMax($("max_tokens"), limits.max_tokens);
    const specs = {};
    for (const [name, spec] of Object.entries(TEXT_OPTIONS)) specs[name] = {...spec, ...((info.options || {})[name] || {})};
    buildOptions($("text-options"), {...info.options, ...specs});
  } else if (isAudio) {
    renderSpeechFields(info, limits);
  } else if (isVideo) {
    renderVideoFields(info, limits);  // video.js
  } else if (isMusic) {
    renderMusicFields(info, limits);  // music.js
  }
  renderEditFields(isImage ? info : null, limits);  // edit.js: the edit panel of image models that edit
}

// The speech form from the model's entry: its voices ("default" first: the model's choice), the formats the
// server writes that this browser can play, its limits and its own options.
function renderSpeechFields(info, limits) {
  const voices = info.voices && info.voices.length ? info.voices : ["default"];
  const ordered = voices.includes("default") ? ["default", ...voices.filter((v) => v !== "default")] : voices;
  const previousVoice = $("voice").value;
  $("voice").replaceChildren(...ordered.map((v) => new Option(v === "default" ? "default (the model's choice)" : v, v)));
  if (ordered.includes(previousVoice)) $("voice").value = previousVoice;
  const player = $("player");
  const playable = (info.response_formats || ["wav"]).filter((f) => AUDIO_TYPES[f] && player.canPlayType(AUDIO_TYPES[f]));
  const previousFormat = $("audio-format").value;
  $("audio-format").replaceChildren(...playable.map((f) => new Option(f, f)));
  if (playable.includes(previousFormat)) $("audio-format").value = previousFormat;
  const input = $("speech-input");
  if (limits.max_input_chars) input.maxLength = limits.max_input_chars;
  else input.removeAttribute("maxlength");
  $("speech-limits").textContent = limits.max_digits ? `(at most ${limits.max_digits} digits)` : "";
  buildOptions($("audio-options"), info.options || {});
}

// One labelled input per option the server describes: {type, default, min, max, step?, choices?, help}.
function buildOptions(container, specs) {
  container.replaceChildren();
  for (const [name, spec] of Object.entries(specs)) {
    const input = optionInput(spec);
    input.id = `opt-${name}`;
    const label = document.createElement("label");
    label.htmlFor = input.id;
    label.textContent = name;
    const field = document.createElement("div");
    field.append(label, input);
    if (spec.help) {
      input.title = label.title = spec.help;
      const hint = document.createElement("small");
      hint.className = "hint";
      hint.id = `${input.id}-help`;
      hint.textContent = spec.help;
      input.setAttribute("aria-describedby", hint.id);
      field.append(hint);
    }
    container.append(field);
    optionInputs.push({name, spec, input});
  }
}

function optionInput(spec) {
  const type = String(spec.type || "").toLowerCase();
  const choices = spec.choices || spec.enum;
  if (Array.isArray(choices)) {
    const select = document.createElement("select");
    select.append(...choices.map((c) => new Option(String(c), String(c), false, c === spec.default)));
    return select;
  }
  const input = document.createElement("input");
  if (type === "bool" || type === "boolean") {
    input.type = "checkbox";
    input.checked = Boolean(spec.default);
  } else if (["int", "integer", "float", "number"].includes(type)) {
    input.type = "number";
    if (spec.min != null) input.min = spec.min;
    if (spec.max != null) input.max = spec.max;
    input.step = spec.step != null ? spec.step : type.startsWith("int") ? 1 : "any";
    if (spec.default != null) input.value = spec.default;
    else input.placeholder = "optional";
  } else {
    input.type = "text";
    input.value = spec.default != null ? spec.default : "";
  }
  return input;
}

function optionValues() {
  const values = {};
  for (const {name, spec, input} of optionInputs) {
    const choices = spec.choices || spec.enum;
    if (Array.isArray(choices)) values[name] = choices.find((c) => String(c) === input.value);
    else if (input.type === "checkbox") values[name] = input.checked;
    else if (input.value === "") continue;  // empty: the server's default
    else values[name] = input.type === "number" ? Number(input.value) : input.value;
  }
  return values;
}

function numberOrNothing(input) {
  return input.value === "" ? undefined : Number(input.value);  // undefined fields are left out of the JSON
}

// ---- generation ----

async function generateImages(model, signal, started) {
  const grid = $("images");
  grid.replaceChildren();
  grid.dataset.state = "running";
  const body = {model: model.id, n: Number($("n").value), seed: numberOrNothing($("image-seed")),
                label: $("label").value || undefined, response_format: "b64_json", ...optionValues()};
  setStatus(`Generating ${body.n} image${body.n === 1 ? "" : "s"}…`);
  const result = await (await request("/v1/images/generations", body, signal)).json();
  grid.replaceChildren(...result.data.map((item, i) => {
    const img = new Image();
    img.className = "sample";
    img.alt = `generated image ${i + 1}`;
    img.src = `data:image/png;base64,${item.b64_json}`;
    return img;
  }));
  grid.dataset.state = "done";
  setStatus(`${result.data.length} image${result.data.length === 1 ? "" : "s"} in ${seconds(started)}`);
}

// The clip arrives whole (the body is the audio file); the player gets it as an object URL.
async function generateSpeech(model, signal, started) {
  const box = $("speech"), player = $("player");
  box.dataset.state = "running";
  const format = $("audio-format").value || "wav";
  const body = {model: model.id, input: $("speech-input").value, voice: $("voice").value || "default",
                speed: Number($("speed").value), response_format: format, seed: numberOrNothing($("speech-seed")),
                ...optionValues()};
  setStatus("Speaking…");
  const resp = await request("/v1/audio/speech", body, signal);
  const rate = resp.headers.get("X-Sample-Rate"), seed = resp.headers.get("X-Seed");
  const blob = await resp.blob();
  if (audioUrl) URL.revokeObjectURL(audioUrl);
  audioUrl = URL.createObjectURL(blob);
  const loaded = new Promise((resolve, reject) => {
    player.addEventListener("loadedmetadata", resolve, {once: true});
    player.addEventListener("error", () => reject(new Error("This browser could not play the audio; download it instead.")),
                            {once: true});
  });
  player.src = audioUrl;
  $("download").href = audioUrl;
  $("download").download = `speech.${format}`;
  box.hidden = false;
  await loaded;
  box.dataset.state = "done";
  const parts = [`${player.duration.toFixed(2)} s of audio`];
  if (rate) parts.push(`${rate} Hz`);
  if (seed) parts.push(`seed ${seed}`);
  parts.push(`${(blob.size / 1024).toFixed(1)} KiB ${format}`, seconds(started));
  setStatus(parts.join(" · "));
}

async function generateText(model, signal, started) {
  const out = $("output");
  out.textContent = "";
  out.dataset.chunks = "0";
  out.dataset.state = "running";
  const stop = $("stop").value.split(/\r?\n/).filter((s) => s !== "");
  const stream = $("stream").checked;
  const body = {model: model.id, prompt: $("prompt").value, max_tokens: Number($("max_tokens").value),
                seed: numberOrNothing($("text-seed")), stop: stop.length ? stop : undefined, stream,
                stream_options: stream ? {include_usage: true} : undefined, ...optionValues()};
  setStatus(stream ? "Streaming…" : "Generating…");
  const resp = await request("/v1/completions", body, signal);
  let finish = null, usage = null, provenance = null;
  if (!stream) {
    const result = await resp.json();
    out.textContent = result.choices[0].text;
    out.dataset.chunks = "1";
    finish = result.choices[0].finish_reason;
    usage = result.usage;
    provenance = result.provenance;
  } else {
    let finished = false;
    for await (const data of serverSentEvents(resp.body)) {
      if (data === "[DONE]") {
        finished = true;
        break;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = (chunk.choices || [])[0] || {};
      if (choice.text) {
        out.append(choice.text);  // shown as it arrives
        out.dataset.chunks = String(Number(out.dataset.chunks) + 1);
        out.scrollTop = out.scrollHeight;
      }
      finish = choice.finish_reason || finish;
      usage = chunk.usage || usage;
      provenance = chunk.provenance || provenance;  // the last event's: what made the text, whether it is marked
    }
    if (!finished) throw new Error("The server closed the stream before it finished; the text above is partial.");
  }
  out.dataset.state = "done";
  out.dataset.provenance = provenance ? JSON.stringify(provenance) : "";
  const parts = [`finish reason: ${finish || "unknown"}`];
  if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
  else if (stream) parts.push(`${out.dataset.chunks} chunks`);
  if (provenance) parts.push(provenance.mark ? `carries the keyed text mark (key ${provenance.mark})` : "no text mark");
  parts.push(seconds(started));
  setStatus(parts.join(" · "));
}

async function generate(event) {
  event.preventDefault();
  const model = models.get($("model").value);
  if (!model || controller) return;
  const modality = (model.genforge || {}).modality;
  controller = new AbortController();
  $("generate").disabled = true;
  $("stop-button").disabled = false;
  $("model").disabled = true;
  $("results").setAttribute("aria-busy", "true");
  showError(null);
  const started = performance.now();
  const [target, run] = {text: [$("output"), generateText], audio: [$("speech"), generateSpeech],
                         video: [$("video"), generateVideo], music: [$("music"), generateMusic]}[modality]
    || (editTask() ? [$("edit-results"), generateEdit] : [$("images"), generateImages]);  // edit.js
  try {
    await run(model, controller.signal, started);
  } catch (err) {
    if (err.name === "AbortError") {
      target.dataset.state = "stopped";
      setStatus(`Stopped after ${seconds(started)}.`);
    } else {
      target.dataset.state = "error";
      showError(err);
      setStatus("");
    }
  } finally {
    controller = null;
    $("generate").disabled = false;
    $("stop-button").disabled = true;
    $("model").disabled = false;
    $("results").removeAttribute("aria-busy");
  }
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  let timer = null;
  key.addEventListener("input", () => {
    const value = key.value.trim();
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
    clearTimeout(timer);
    timer = setTimeout(loadModels, 300);  // list the models again with the new key
  });
  $("model").addEventListener("change", renderModel);
  $("form").addEventListener("submit", generate);
  $("stop-button").addEventListener("click", () => controller && controller.abort());
  for (const id of ["prompt", "speech-input", "music-prompt"]) {
    $(id).addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("form").requestSubmit();
    });
  }
  loadModels();
});
