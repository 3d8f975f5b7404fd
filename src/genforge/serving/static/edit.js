"use strict";
// The playground's edit panel (/v1/images/edits and /v1/images/variations): load an image, paint the region to
// change with the pointer (shown as a translucent overlay), pick the edit and its options, see the results. The
// edits and their options come from the model's `edits` in /v1/models, never from family names. Uses
// playground.js's helpers ($, models, request, buildOptions, optionInputs, optionValues, setMax, show, setStatus,
// seconds, numberOrNothing).

const EDIT_ROUTES = {inpaint: "/v1/images/edits", upscale: "/v1/images/edits", vary: "/v1/images/variations"};
const EDIT_NAMES = {inpaint: "inpaint: fill a painted region", vary: "vary: variations of the image",
                    upscale: "upscale: super-resolution"};
const EDIT_HELP = {
  inpaint: "Paint over the region to fill; the rest of the image is kept. Sent as OpenAI's mask: transparent " +
           "where painted.",
  vary: "Variations of the whole image: strength 0 returns it, 1 ignores it.",
  upscale: "The whole image, at the model's size: give a small one (a full-size image is reduced first).",
};
const MASK_COLOUR = "rgb(255, 40, 40)";  // the painted region, drawn at half opacity over the image

let editFile = null;      // the loaded file, sent as it is (the results' provenance names it and its hash)
let editPicture = null;   // its pixels, for the canvas
let maskCanvas = null;    // offscreen, the image's size: opaque where painted
let editInputs = [];      // [{name, spec, input}] of the chosen edit's options
let brushLast = null;     // the pointer's last position (image pixels) while painting, else null
let editUrls = [];        // object URLs of the results on the page (revoked when replaced)

function editTask() {
  return $("edit-fields").hidden ? "" : $("edit-task").value;
}

// The panel from the model's entry (info null: not an image model, no panel).
function renderEditFields(info, limits) {
  const edits = (info && info.edits) || {};
  const tasks = Object.keys(edits);
  show($("edit-fields"), tasks.length > 0);
  const picker = $("edit-task"), previous = picker.value;
  picker.replaceChildren(new Option("none: generate new images", ""),
                         ...tasks.map((t) => new Option(EDIT_NAMES[t] || t, t)));
  if (tasks.includes(previous)) picker.value = previous;
  if (tasks.length) {
    setMax($("edit-n"), limits.max_n);
    const classes = (info.conditional && info.classes) || [];
    $("edit-label").replaceChildren(new Option("none (unconditional)", ""), ...classes.map((c) => new Option(c, c)));
    $("edit-label-field").hidden = classes.length === 0;
  }
  renderEditTask();
}

function renderEditTask() {
  const model = models.get($("model").value);
  const info = (model && model.genforge) || {};
  const task = editTask();
  $("edit-body").hidden = !task;
  if (info.modality === "image") show($("image-fields"), !task);  // editing or generating, not both
  $("generate").textContent = task ? "Edit" : "Generate";
  $("brush-controls").hidden = task !== "inpaint";
  $("edit-help").textContent = EDIT_HELP[task] || "";
  const before = optionInputs.length;  // buildOptions collects into playground.js's list: keep the edit's apart
  buildOptions($("edit-options"), task ? (info.edits || {})[task] || {} : {});
  editInputs = optionInputs.splice(before);
  for (const {input} of editInputs) {  // ids of their own: the generation form has fields of the same names
    input.id = `edit-${input.id}`;
    input.parentElement.querySelector("label").htmlFor = input.id;
    const hint = input.parentElement.querySelector("small");
    if (hint) {
      hint.id = `${input.id}-help`;
      input.setAttribute("aria-describedby", hint.id);
    }
  }
  drawEdit();
}

async function loadEditImage() {
  const file = $("edit-image").files[0];
  if (!file) return;
  let picture;
  try {
    picture = await createImageBitmap(file);
  } catch {
    showError(new Error("This browser cannot read that file as an image: use a PNG, JPEG or WebP."));
    return;
  }
  showError(null);
  editFile = file;
  editPicture = picture;
  const canvas = $("edit-canvas");
  canvas.width = picture.width;
  canvas.height = picture.height;
  maskCanvas = document.createElement("canvas");
  maskCanvas.width = picture.width;
  maskCanvas.height = picture.height;
  const side = Math.max(picture.width, picture.height);
  const brush = $("brush");
  brush.max = Math.max(1, Math.round(side / 2));
  brush.value = Math.max(1, Math.round(side / 7));
  showBrush();
  canvas.hidden = false;
  canvas.dataset.painted = "0";
  drawEdit();
}

function showBrush() {
  $("brush-size").textContent = `(${$("brush").value} px)`;
}

// The image, and over it the painted region at half opacity (inpainting only).
function drawEdit() {
  const canvas = $("edit-canvas");
  if (!editPicture) return;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(editPicture, 0, 0);
  if (editTask() === "inpaint" && maskCanvas) {
    ctx.globalAlpha = 0.5;
    ctx.drawImage(maskCanvas, 0, 0);
    ctx.globalAlpha = 1;
  }
}

function imagePoint(event) {
  const canvas = $("edit-canvas"), box = canvas.getBoundingClientRect();
  return {x: (event.clientX - box.left) * canvas.width / box.width,
          y: (event.clientY - box.top) * canvas.height / box.height};
}

function paint(event) {
  const at = imagePoint(event), ctx = maskCanvas.getContext("2d"), width = Number($("brush").value);
  ctx.strokeStyle = ctx.fillStyle = MASK_COLOUR;
  ctx.lineWidth = width;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  if (brushLast) {
    ctx.moveTo(brushLast.x, brushLast.y);
    ctx.lineTo(at.x, at.y);
    ctx.stroke();
  } else {
    ctx.arc(at.x, at.y, width / 2, 0, 2 * Math.PI);
    ctx.fill();
  }
  brushLast = at;
  drawEdit();
}

// Where the mask edits: painted pixels (alpha >= 128, the server's threshold too, so the overlay's soft edge
// is judged by its middle).
function maskPixels() {
  const {width, height} = maskCanvas;
  const rgba = maskCanvas.getContext("2d").getImageData(0, 0, width, height).data;
  const edit = new Uint8Array(width * height);
  for (let i = 0; i < edit.length; i++) edit[i] = rgba[4 * i + 3] >= 128 ? 1 : 0;
  return edit;
}

function countPainted() {
  $("edit-canvas").dataset.painted = String(maskPixels().reduce((a, b) => a + b, 0));
}

// OpenAI's mask: a PNG of the image's size, transparent where to edit, opaque elsewhere (null: nothing painted).
async function maskBlob() {
  const edit = maskPixels();
  if (!edit.some((e) => e)) return null;
  const {width, height} = maskCanvas;
  const out = new ImageData(width, height);
  for (let i = 0; i < edit.length; i++) out.data[4 * i + 3] = edit[i] ? 0 : 255;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").putImageData(out, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

// Submit the edit as a multipart form (what the openai client sends) and show the results.
async function generateEdit(model, signal, started) {
  const task = editTask(), box = $("edit-results");
  if (!editFile) throw new Error("Load an image to edit first (the Image field of the edit panel).");
  box.dataset.state = "running";
  const form = new FormData();
  form.append("model", model.id);
  form.append("image", editFile, editFile.name || "image.png");
  if (task === "inpaint") {
    const mask = await maskBlob();  // none painted: the server uses the image's own transparency, or says what is missing
    if (mask) form.append("mask", mask, "mask.png");
  }
  const saved = optionInputs;
  optionInputs = editInputs;
  let options;
  try {
    options = optionValues();
  } finally {
    optionInputs = saved;
  }
  const fields = {n: Number($("edit-n").value), seed: numberOrNothing($("edit-seed")),
                  label: $("edit-label-field").hidden ? undefined : $("edit-label").value || undefined,
                  response_format: "b64_json", ...options};
  for (const [name, value] of Object.entries(fields)) if (value !== undefined) form.append(name, String(value));
  setStatus(`${task === "vary" ? "Varying" : task === "upscale" ? "Upscaling" : "Inpainting"}…`);
  const result = await (await request(EDIT_ROUTES[task], form, signal)).json();
  editUrls.forEach((url) => URL.revokeObjectURL(url));
  editUrls = [URL.createObjectURL(editFile)];
  const source = new Image();
  source.className = "source";
  source.alt = "the image edited";
  source.src = editUrls[0];
  box.replaceChildren(source, ...result.data.map((item, i) => {
    const img = new Image();
    img.className = "sample";
    img.alt = `edited image ${i + 1}`;
    img.src = `data:image/png;base64,${item.b64_json}`;
    return img;
  }));
  box.hidden = false;
  box.dataset.state = "done";
  const count = result.data.length;
  setStatus([`${count} image${count === 1 ? "" : "s"}`, result.task, `seed ${result.seed}`, ...(result.notices || []),
             seconds(started)].join(" · "));
}

document.addEventListener("DOMContentLoaded", () => {
  const canvas = $("edit-canvas");
  $("edit-task").addEventListener("change", renderEditTask);
  $("edit-image").addEventListener("change", loadEditImage);
  $("brush").addEventListener("input", showBrush);
  $("clear-mask").addEventListener("click", () => {
    if (!maskCanvas) return;
    maskCanvas.getContext("2d").clearRect(0, 0, maskCanvas.width, maskCanvas.height);
    canvas.dataset.painted = "0";
    drawEdit();
  });
  canvas.addEventListener("pointerdown", (event) => {
    if (editTask() !== "inpaint" || !maskCanvas || event.button !== 0) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    brushLast = null;
    paint(event);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (brushLast) paint(event);
  });
  for (const type of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(type, () => {
      if (!brushLast) return;
      brushLast = null;
      countPainted();
    });
  }
});
