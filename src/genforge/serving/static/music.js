"use strict";
// The music form of the playground, for models whose /v1/models entry says modality "music": the model composes
// through /v1/completions (echo: the answer is the whole tune, its header in the model's normal form), then the
// page asks /v1/music/render for the tune's piano roll (PNG), its audio (WAV, in the player) and its MIDI. What the
// form offers comes from the entry (music_kind, max_tokens_default, limits). Uses playground.js's helpers ($,
// request, setMax, setStatus, seconds, numberOrNothing).

// The example prompt and the help line for each kind of music text.
const MUSIC_KINDS = {
  abc: {example: "M:6/8\nK:D", suffix: "abc",
        help: "ABC header fields in any order: M:6/8 (metre), K:D or K:Ador (key), R:reel (rhythm). Empty: the model "
              + "chooses. The tune ends at its first blank line."},
  events: {example: "", suffix: "txt",
           help: "Note events: a header line such as M:4/4 K:0 (metre, sharps in the key), then bars. Empty: the "
                 + "model chooses. The piece ends at its first blank line."},
};
let musicUrls = [];     // object URLs of the tune's files on the page (revoked when replaced)
let musicModel = null;  // the model the form was last filled for (its defaults are set once per model)

function renderMusicFields(info, limits) {
  const kind = MUSIC_KINDS[info.music_kind] ? info.music_kind : "abc";
  const {example, help} = MUSIC_KINDS[kind];
  const tokens = $("music-max-tokens");
  setMax(tokens, limits.max_tokens);
  if (musicModel !== $("model").value) {  // a new model: its example and its length; the user's edits stay otherwise
    musicModel = $("model").value;
    $("music-prompt").value = example;
    if (info.max_tokens_default) tokens.value = Math.min(info.max_tokens_default, limits.max_tokens || Infinity);
  }
  $("music-help").textContent = help;
}

function keepUrl(blob) {
  const url = URL.createObjectURL(blob);
  musicUrls.push(url);
  return url;
}

// One file of the tune from /v1/music/render: [blob, the music's length in seconds].
async function renderTune(model, text, format, seed, signal) {
  const resp = await request("/v1/music/render", {model: model.id, text, format, seed}, signal);
  return [await resp.blob(), resp.headers.get("X-Music-Seconds")];
}

async function generateMusic(model, signal, started) {
  const box = $("music"), player = $("music-player"), roll = $("piano-roll");
  const kind = MUSIC_KINDS[(model.genforge || {}).music_kind] ? model.genforge.music_kind : "abc";
  box.dataset.state = "running";
  for (const url of musicUrls) URL.revokeObjectURL(url);
  musicUrls = [];
  for (const id of ["piano-roll", "music-player", "tune-download", "midi-download", "wav-download"]) $(id).hidden = true;
  $("tune").textContent = "";
  // the page draws the seed when none is given, so it can show it and record it in the rendered files
  const seed = numberOrNothing($("music-seed")) ?? Math.floor(Math.random() * 2 ** 31);
  const body = {model: model.id, prompt: $("music-prompt").value, max_tokens: Number($("music-max-tokens").value),
                temperature: Number($("music-temperature").value), seed, echo: true};
  setStatus("Composing…");
  const result = await (await request("/v1/completions", body, signal)).json();
  const choice = result.choices[0];
  const text = choice.text.replace(/\s+$/, "");
  $("tune").textContent = text;
  box.hidden = false;
  const textLink = $("tune-download");
  textLink.href = keepUrl(new Blob([text + "\n"], {type: "text/plain"}));
  textLink.download = `tune.${MUSIC_KINDS[kind].suffix}`;
  textLink.textContent = kind === "abc" ? "ABC" : "Event text";
  textLink.hidden = false;

  setStatus("Rendering…");
  const [[png], [wav, length], [mid]] = await Promise.all(
    ["png", "wav", "mid"].map((format) => renderTune(model, text, format, seed, signal)));
  roll.src = keepUrl(png);
  await roll.decode();
  roll.hidden = false;
  const loaded = new Promise((resolve, reject) => {
    player.addEventListener("loadedmetadata", resolve, {once: true});
    player.addEventListener("error", () => reject(new Error("This browser could not play the audio; download it instead.")),
                            {once: true});
  });
  player.src = $("wav-download").href = keepUrl(wav);
  $("midi-download").href = keepUrl(mid);
  for (const id of ["music-player", "midi-download", "wav-download"]) $(id).hidden = false;
  await loaded;
  box.dataset.state = "done";
  const parts = [`${Number(length).toFixed(1)} s of music`, `seed ${seed}`, `finish reason: ${choice.finish_reason}`];
  if (choice.finish_reason === "length") parts.push("the tune did not end within max tokens");
  if (result.usage) parts.push(`${result.usage.completion_tokens} tokens`);
  parts.push(seconds(started));
  setStatus(parts.join(" · "));
}
