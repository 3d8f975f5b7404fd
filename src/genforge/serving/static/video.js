"use strict";
// The video form of the playground (/v1/videos): a request makes a job, the page polls it for its progress, then
// plays its MP4 in the <video> element and shows its spritesheet (the frames side by side). Uses playground.js's
// helpers ($, request, headers, buildOptions, optionValues, setMax, setStatus, seconds, numberOrNothing).

const POLL_MS = 250;
let videoUrls = [];  // object URLs of the clip and spritesheet on the page (revoked when replaced)

// The form from the model's entry: its classes, the clip length within its limits, its options (frames has its
// own field, so it is left out of the generic ones).
function renderVideoFields(info, limits) {
  const classes = (info.conditional && info.classes) || [];
  const picker = $("video-label"), previous = picker.value;
  picker.replaceChildren(...classes.map((c) => new Option(c, c)));
  if (classes.includes(previous)) picker.value = previous;
  $("video-label-field").hidden = classes.length === 0;
  const frames = $("video-frames");
  frames.min = limits.min_frames || 1;
  setMax(frames, limits.max_frames);
  frames.value = info.frames || frames.value;
  frames.dataset.fps = info.fps || "";
  showClipLength();
  const {frames: _ignored, ...options} = info.options || {};
  buildOptions($("video-options"), options);
}

function showClipLength() {
  const fps = Number($("video-frames").dataset.fps), frames = Number($("video-frames").value);
  $("video-length").textContent = fps && frames ? `(${(frames / fps).toFixed(2)} s at ${fps} fps)` : "";
}

function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("Stopped", "AbortError"));
    }, {once: true});
  });
}

async function download(job, variant, signal) {
  return (await request(`/v1/videos/${job.id}/content?variant=${variant}`, undefined, signal)).blob();
}

// Create the job, poll it (Stop deletes it, which cancels it on the server), then show the clip.
async function generateVideo(model, signal, started) {
  const box = $("video"), bar = $("video-progress"), clip = $("clip"), sheet = $("spritesheet");
  for (const el of [clip, sheet, $("video-download")]) el.hidden = true;
  box.hidden = false;
  box.dataset.state = "running";
  bar.value = 0;
  const label = $("video-label").value;
  const body = {model: model.id, prompt: label, label: label || undefined, frames: Number($("video-frames").value),
                seed: numberOrNothing($("video-seed")), ...optionValues()};
  setStatus("Queued…");
  let job = await (await request("/v1/videos", body, signal)).json();
  const cancel = () => fetch(`/v1/videos/${job.id}`, {method: "DELETE", headers: headers()}).catch(() => {});
  signal.addEventListener("abort", cancel, {once: true});
  while (job.status === "queued" || job.status === "in_progress") {
    bar.value = job.progress;
    setStatus(`${job.status === "queued" ? "Queued" : "Generating"}… ${job.progress}%`);
    await pause(POLL_MS, signal);
    job = await (await request(`/v1/videos/${job.id}`, undefined, signal)).json();
  }
  signal.removeEventListener("abort", cancel);
  bar.value = job.progress;
  if (job.status !== "completed") throw new Error((job.error && job.error.message) || `The job ${job.status}.`);
  const [mp4, strip] = await Promise.all([download(job, "video", signal), download(job, "spritesheet", signal)]);
  videoUrls.forEach((url) => URL.revokeObjectURL(url));
  videoUrls = [URL.createObjectURL(mp4), URL.createObjectURL(strip)];
  const loaded = new Promise((resolve, reject) => {
    clip.addEventListener("loadeddata", resolve, {once: true});
    clip.addEventListener("error", () => reject(new Error("This browser could not play the MP4; download it instead.")),
                          {once: true});
  });
  clip.src = videoUrls[0];
  sheet.src = videoUrls[1];
  Object.assign($("video-download"), {href: videoUrls[0], download: `${job.id}.mp4`, hidden: false});
  clip.hidden = sheet.hidden = false;
  await loaded;
  clip.play().catch(() => {});  // muted, so browsers let it start; the controls are there if not
  box.dataset.state = "done";
  const info = job.genforge || {};
  setStatus([`${job.seconds} s · ${info.frames} frames at ${info.fps} fps`, job.size, `seed ${info.seed}`,
             `${(mp4.size / 1024).toFixed(1)} KiB mp4`, seconds(started)].join(" · "));
}

document.addEventListener("DOMContentLoaded", () => $("video-frames").addEventListener("input", showClipLength));
