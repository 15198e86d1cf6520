"""The explorer's one page: plain HTML, CSS and JavaScript, no external resources.

It talks to the JSON endpoints of :mod:`betavae.report.explorer`. Slider moves are coalesced: while a
decode request is in flight only the newest slider state is kept, and sent when the answer arrives,
so the image follows the slider without a queue of stale requests.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>betavae explorer</title>
<style>
  :root { --fg: #1d2330; --muted: #5f6b7a; --line: #d9dee5; --accent: #2864c7; --soft: #f5f7fa; }
  * { box-sizing: border-box; }
  body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; }
  header { padding: 14px 24px 10px; border-bottom: 1px solid var(--line); }
  header h1 { font-size: 20px; margin: 0; }
  header p { margin: 2px 0 0; color: var(--muted); font-size: 14px; }
  main { display: flex; flex-wrap: wrap; gap: 28px; padding: 16px 24px; align-items: flex-start; }
  #controls { flex: 1 1 430px; max-width: 560px; }
  #view { flex: 1 1 420px; }
  .buttons { display: flex; gap: 8px; margin-bottom: 10px; flex-wrap: wrap; }
  button { font: inherit; padding: 5px 12px; border: 1px solid var(--line); border-radius: 5px; background: white;
           cursor: pointer; }
  button:hover { border-color: var(--accent); color: var(--accent); }
  .dim { display: grid; grid-template-columns: 44px 1fr 54px 92px; align-items: center; gap: 8px; padding: 3px 0; }
  .dim label { font-weight: 600; font-variant-numeric: tabular-nums; }
  .dim output { text-align: right; font-variant-numeric: tabular-nums; }
  .dim .kl { color: var(--muted); font-size: 13px; }
  .dim input { width: 100%; accent-color: var(--accent); }
  .dim.collapsed { opacity: 0.42; }
  .dim.collapsed input { accent-color: #888; }
  .legend { color: var(--muted); font-size: 13px; margin: 8px 0 0; }
  img.pixel { image-rendering: pixelated; background: var(--soft); border: 1px solid var(--line); }
  #decoded { width: 320px; height: 320px; }
  figure { margin: 0 18px 10px 0; display: inline-block; vertical-align: top; }
  figcaption { color: var(--muted); font-size: 13px; }
  h2 { font-size: 16px; margin: 18px 0 6px; }
  #picker { display: flex; flex-wrap: wrap; gap: 6px; margin: 6px 0 8px; }
  #picker button { padding: 2px; line-height: 0; }
  #picker button.chosen { border: 2px solid var(--accent); }
  #picker img { width: 56px; height: 56px; }
  #chosen { margin-top: 12px; }
  #chosen img { width: 150px; height: 150px; }
  #status { min-height: 1.4em; color: #b00020; font-size: 14px; margin: 6px 0; }
  .row { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
  .row input[type=number] { width: 110px; font: inherit; padding: 3px 6px; }
</style>
</head>
<body>
<header><h1>betavae explorer <span id="run"></span></h1><p id="summary">loading…</p></header>
<main>
  <div id="controls">
    <div class="buttons">
      <button id="reset" title="back to the start: the chosen image's code, or 0 (the prior's mean)">Reset</button>
      <button id="random" title="a draw of the prior N(0, I)">Random sample</button>
    </div>
    <div id="sliders"></div>
    <datalist id="zero"><option value="0"></option></datalist>
    <p class="legend">One slider per latent dim, largest KL first; greyed dims are collapsed (their KL is below the
      threshold), so moving them changes little or nothing.</p>
  </div>
  <div id="view">
    <figure><img id="decoded" class="pixel" alt="image decoded from the sliders"><figcaption>decoded from the sliders</figcaption></figure>
    <div id="status" role="status"></div>
    <h2>Start from a real image</h2>
    <div id="picker-box">
      <div id="picker"></div>
      <div class="row">
        <button id="more">Other images</button>
        <label>index <input id="index" type="number" min="0" step="1"></label>
        <button id="go">Encode</button>
      </div>
      <div id="chosen" hidden>
        <figure><img id="original" class="pixel" alt="chosen image"><figcaption id="original-caption">image</figcaption></figure>
        <figure><img id="reconstruction" class="pixel" alt="its reconstruction"><figcaption>its reconstruction</figcaption></figure>
      </div>
    </div>
  </div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const state = { info: null, sliders: [], outputs: [], start: null, inflight: false, pending: false, pickSeed: 0,
                decodes: 0 };

async function api(path, body) {
  const options = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function showError(error) { $("status").textContent = String(error.message || error); }

function code() { return state.sliders.map((s) => parseFloat(s.value)); }

function setCode(z) {
  const limit = state.info.max_abs;
  z.forEach((value, d) => {
    const slider = state.sliders[d];
    const needed = Math.min(limit, Math.ceil(Math.abs(value) * 10) / 10);
    if (needed > parseFloat(slider.max)) { slider.max = needed; slider.min = -needed; }
    slider.value = value;
    state.outputs[d].textContent = parseFloat(slider.value).toFixed(2);
  });
}

function decode() {
  if (state.inflight) { state.pending = true; return; }
  state.inflight = true;
  api("/api/decode", { z: code() })
    .then((data) => { $("decoded").src = data.image; $("decoded").dataset.decodes = ++state.decodes;
                      $("status").textContent = ""; })
    .catch(showError)
    .finally(() => { state.inflight = false; if (state.pending) { state.pending = false; decode(); } });
}

function buildSliders(info) {
  const box = $("sliders");
  state.sliders = new Array(info.latents);
  state.outputs = new Array(info.latents);
  for (const d of info.order) {
    const row = document.createElement("div");
    row.className = "dim" + (info.collapsed[d] ? " collapsed" : "");
    row.title = info.collapsed[d] ? `collapsed: KL below ${info.collapse_threshold} nats` : "";
    const label = document.createElement("label");
    label.textContent = `z${d}`;
    label.htmlFor = `z${d}`;
    const slider = document.createElement("input");
    Object.assign(slider, { type: "range", id: `z${d}`, min: -info.slider_range, max: info.slider_range, step: 0.05,
                            value: 0 });
    slider.dataset.dim = d;
    slider.setAttribute("list", "zero");  // a tick at 0, the prior's mean
    const output = document.createElement("output");
    output.textContent = "0.00";
    const kl = document.createElement("span");
    kl.className = "kl";
    kl.textContent = `KL ${info.kl_per_dim[d].toFixed(2)}`;
    slider.addEventListener("input", () => { output.textContent = parseFloat(slider.value).toFixed(2); decode(); });
    row.append(label, slider, output, kl);
    box.append(row);
    state.sliders[d] = slider;
    state.outputs[d] = output;
  }
}

async function loadThumbnails() {
  const data = await api(`/api/images?count=12&seed=${state.pickSeed}`);
  const picker = $("picker");
  picker.replaceChildren();
  for (const item of data.images) {
    const button = document.createElement("button");
    button.title = `image ${item.index}`;
    button.dataset.index = item.index;
    const img = document.createElement("img");
    img.className = "pixel";
    img.src = item.image;
    img.alt = `image ${item.index}`;
    button.append(img);
    button.addEventListener("click", () => choose(item.index).catch(showError));
    picker.append(button);
  }
}

async function choose(index) {
  const data = await api("/api/encode", { index: index });
  $("original").src = data.image;
  $("reconstruction").src = data.reconstruction;
  $("original-caption").textContent = `image ${data.index}`;
  $("chosen").hidden = false;
  for (const b of $("picker").children) b.classList.toggle("chosen", Number(b.dataset.index) === data.index);
  state.start = data.z;
  setCode(data.z);
  decode();
}

async function main() {
  const info = await api("/api/info");
  state.info = info;
  $("run").textContent = `· ${info.run}`;
  const active = info.collapsed.filter((c) => !c).length;
  $("summary").textContent = `objective ${info.objective}, ${info.latents} latent dims (${active} active)` +
    (info.dataset ? `, trained on ${info.dataset} (${info.dataset_size.toLocaleString()} images)` : "");
  buildSliders(info);
  $("reset").addEventListener("click", () => { setCode(state.start || new Array(info.latents).fill(0)); decode(); });
  $("random").addEventListener("click", () =>
    api("/api/sample").then((data) => { setCode(data.z); decode(); }).catch(showError));
  if (info.dataset_size > 0) {
    $("index").max = info.dataset_size - 1;
    $("more").addEventListener("click", () => { state.pickSeed += 1; loadThumbnails().catch(showError); });
    $("go").addEventListener("click", () => choose(Number($("index").value)).catch(showError));
    await loadThumbnails();
  } else {
    $("picker-box").textContent = `The run's images are not available: ${info.data_problem}`;
  }
  decode();
}

main().catch(showError);
</script>
</body>
</html>
"""
