// Reader page of the visual Turing test. The token comes from the URL fragment (never sent to the
// server by the browser) and travels in an Authorization header. Volumes arrive as uint16 arrays on a
// common isotropic grid; window/level is applied here so scrolling and windowing need no round trips.
"use strict";
(function () {
  const token = decodeURIComponent(location.hash.replace(/^#/, ""));
  const VIEWS = ["axial", "coronal", "sagittal"];
  const NAV_KEYS = ["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "PageUp", "PageDown", "Home", "End"];
  const $ = (id) => document.getElementById(id);
  const state = {
    display: null, dims: null, items: [], queue: [], done: 0, current: null, vol: null,
    pos: { axial: 0, coronal: 0, sagittal: 0 }, active: "axial",
    win: { center: 0, width: 1, colormap: "gray" }, preset: 0,
    answer: null, confidence: null, busy: false, prefetch: null,
    visibleMs: 0, since: null,
  };
  const panes = {};
  const lut = new Uint8ClampedArray(65536);
  let cmap = makeColormap("gray");

  function api(path, opts) {
    opts = opts || {};
    const headers = Object.assign({ Authorization: "Bearer " + token }, opts.headers || {});
    return fetch(path, Object.assign({}, opts, { headers: headers, cache: "no-store" }));
  }

  function message(title, text) {
    $("message-title").textContent = title;
    $("message-text").textContent = text;
    $("message").hidden = false;
  }

  // ---- display ------------------------------------------------------------------------------------
  function makeColormap(name) {
    const m = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const t = i / 255;
      let r = i, g = i, b = i;
      if (name === "gray_inverted") { r = g = b = 255 - i; }
      else if (name === "hot") { r = 255 * Math.min(1, 3 * t); g = 255 * Math.max(0, Math.min(1, 3 * t - 1)); b = 255 * Math.max(0, 3 * t - 2); }
      m[3 * i] = r; m[3 * i + 1] = g; m[3 * i + 2] = b;
    }
    return m;
  }

  function updateLut() {
    const d = state.display;
    const lo = state.win.center - state.win.width / 2;
    const k = 255 / state.win.width;
    for (let u = 0; u < 65536; u++) lut[u] = (d.offset + d.scale * u - lo) * k;
    cmap = makeColormap(state.win.colormap);
    const digits = state.win.width < 20 ? 2 : 0;
    $("win-width").textContent = state.win.width.toFixed(digits);
    $("win-level").textContent = state.win.center.toFixed(digits);
  }

  function viewSize(view) {
    const [nz, ny, nx] = state.dims;
    return view === "axial" ? [nx, ny] : view === "coronal" ? [nx, nz] : [ny, nz];
  }

  function depth(view) {
    const [nz, ny, nx] = state.dims;
    return view === "axial" ? nz : view === "coronal" ? ny : nx;
  }

  function render(view) {
    const p = panes[view];
    if (!state.vol) return;
    const [w, h] = viewSize(view);
    const [nz, ny, nx] = state.dims;
    const s = state.pos[view], vol = state.vol, out = p.img.data;
    let o = 0;
    for (let r = 0; r < h; r++) {
      for (let c = 0; c < w; c++) {
        let idx;
        if (view === "axial") idx = (s * ny + r) * nx + c;                       // anterior up, patient right on the left
        else if (view === "coronal") idx = ((nz - 1 - r) * ny + s) * nx + c;     // superior up
        else idx = ((nz - 1 - r) * ny + c) * nx + s;                             // superior up, anterior left
        const g = 3 * lut[vol[idx]];
        out[o] = cmap[g]; out[o + 1] = cmap[g + 1]; out[o + 2] = cmap[g + 2]; out[o + 3] = 255;
        o += 4;
      }
    }
    p.ctx.putImageData(p.img, 0, 0);
    p.label.textContent = (s + 1) + " / " + depth(view);
    p.slider.value = String(s);
    // crosshair: where the other two views cut this one
    const cx = view === "sagittal" ? state.pos.coronal : state.pos.sagittal;
    const cy = view === "axial" ? state.pos.coronal : nz - 1 - state.pos.axial;
    p.chV.style.left = (100 * (cx + 0.5) / w) + "%";
    p.chH.style.top = (100 * (cy + 0.5) / h) + "%";
  }

  function renderAll() { VIEWS.forEach(render); }

  function fit(view) {
    const p = panes[view];
    if (!state.dims) return;
    const [w, h] = viewSize(view);
    const f = Math.min(p.stage.clientWidth / w, p.stage.clientHeight / h);
    p.wrap.style.width = Math.max(1, Math.floor(w * f)) + "px";
    p.wrap.style.height = Math.max(1, Math.floor(h * f)) + "px";
  }

  function setSlice(view, s) {
    const n = depth(view);
    s = Math.max(0, Math.min(n - 1, Math.round(s)));
    if (s === state.pos[view]) return;
    state.pos[view] = s;
    renderAll();
  }

  function toggleSolo(view) {  // one view fills the viewer (tall or wide volumes), again: all three
    const views = $("views");
    const solo = !(views.classList.contains("solo") && panes[view].pane.classList.contains("solo"));
    views.classList.toggle("solo", solo);
    VIEWS.forEach((v) => panes[v].pane.classList.toggle("solo", solo && v === view));
    VIEWS.forEach(fit);
  }

  function setActive(view) {
    state.active = view;
    VIEWS.forEach((v) => panes[v].pane.classList.toggle("active", v === view));
  }

  function applyPreset(i) {
    const presets = state.display.presets;
    state.preset = ((i % presets.length) + presets.length) % presets.length;
    const p = presets[state.preset];
    state.win = { center: p.center, width: p.width, colormap: p.colormap };
    document.querySelectorAll("#presets button").forEach((b, j) => b.classList.toggle("on", j === state.preset));
    updateLut();
    renderAll();
  }

  function setupPanes() {
    VIEWS.forEach((view) => {
      const pane = document.querySelector('.pane[data-view="' + view + '"]');
      const canvas = $("view-" + view);
      const p = panes[view] = {
        pane: pane, canvas: canvas, ctx: canvas.getContext("2d"), stage: pane.querySelector(".stage"),
        wrap: pane.querySelector(".wrap"), slider: $("slider-" + view), label: $("label-" + view),
        chH: pane.querySelector(".ch.h"), chV: pane.querySelector(".ch.v"), img: null, wheel: 0,
      };
      const [w, h] = viewSize(view);
      canvas.width = w; canvas.height = h;
      p.img = p.ctx.createImageData(w, h);
      p.slider.max = String(depth(view) - 1);
      p.slider.addEventListener("input", () => { setActive(view); setSlice(view, Number(p.slider.value)); });
      pane.addEventListener("mouseenter", () => setActive(view));
      p.stage.addEventListener("dblclick", () => toggleSolo(view));
      p.stage.addEventListener("wheel", (e) => {
        e.preventDefault();
        setActive(view);
        p.wheel += e.deltaMode === 0 ? e.deltaY : 40 * e.deltaY;
        const steps = Math.trunc(p.wheel / 40);
        if (steps !== 0) { p.wheel -= steps * 40; setSlice(view, state.pos[view] + steps); }
      }, { passive: false });
      let drag = null;
      p.wrap.addEventListener("pointerdown", (e) => {
        drag = { x: e.clientX, y: e.clientY, c: state.win.center, w: state.win.width, moved: false };
        p.wrap.setPointerCapture(e.pointerId);
        setActive(view);
      });
      p.wrap.addEventListener("pointermove", (e) => {
        if (!drag) return;
        const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
        if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
        drag.moved = true;
        const step = drag.w / 250;
        state.win.width = Math.max(1e-3, drag.w + dx * step);
        state.win.center = drag.c + dy * step;
        document.querySelectorAll("#presets button").forEach((b) => b.classList.remove("on"));
        updateLut();
        renderAll();
      });
      p.wrap.addEventListener("pointerup", (e) => {
        if (drag && !drag.moved) {  // a click moves the crosshair to the clicked voxel
          const rect = p.wrap.getBoundingClientRect();
          const [w, h] = viewSize(view);
          const c = Math.floor((e.clientX - rect.left) / rect.width * w);
          const r = Math.floor((e.clientY - rect.top) / rect.height * h);
          const nz = state.dims[0];
          if (view === "axial") { state.pos.sagittal = c; state.pos.coronal = r; }
          else if (view === "coronal") { state.pos.sagittal = c; state.pos.axial = nz - 1 - r; }
          else { state.pos.coronal = c; state.pos.axial = nz - 1 - r; }
          VIEWS.forEach((v) => { state.pos[v] = Math.max(0, Math.min(depth(v) - 1, state.pos[v])); });
          renderAll();
        }
        drag = null;
      });
    });
    new ResizeObserver(() => VIEWS.forEach(fit)).observe($("views"));
    VIEWS.forEach(fit);
    setActive("axial");
  }

  function setupPresets() {
    const box = $("presets");
    state.display.presets.forEach((p, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "preset";
      b.textContent = p.name;
      b.addEventListener("click", () => applyPreset(i));
      box.appendChild(b);
    });
    $("win-unit").textContent = state.display.unit;
  }

  // ---- answering ----------------------------------------------------------------------------------
  function visibleSeconds() {
    return (state.visibleMs + (state.since === null ? 0 : performance.now() - state.since)) / 1000;
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      if (state.since !== null) { state.visibleMs += performance.now() - state.since; state.since = null; }
    } else if (state.current) {
      state.since = performance.now();
    }
  });

  function chooseAnswer(a) {
    state.answer = a;
    $("btn-real").classList.toggle("on", a === "real");
    $("btn-synthetic").classList.toggle("on", a === "synthetic");
    updateSubmit();
  }

  function chooseConfidence(c) {
    state.confidence = c;
    document.querySelectorAll("#confidence button").forEach((b) => b.classList.toggle("on", Number(b.dataset.conf) === c));
    updateSubmit();
  }

  function updateSubmit() {
    $("submit").disabled = state.busy || !state.current || !state.answer || !state.confidence;
  }

  function updateProgress() {
    const total = state.items.length;
    $("progress-fill").style.width = (100 * state.done / Math.max(1, total)) + "%";
    $("progress-text").textContent = state.done < total
      ? "Volume " + (state.done + 1) + " of " + total + " \u00b7 " + state.done + " answered"
      : "All " + total + " answered";
  }

  function showError(text) {
    $("answer-error").textContent = text;
    $("answer-error").hidden = !text;
  }

  async function submit() {
    if (state.busy || !state.current || !state.answer || !state.confidence) return;
    state.busy = true;
    updateSubmit();
    const body = {
      item: state.current, answer: state.answer, confidence: state.confidence,
      comment: $("comment").value.trim(), time_on_item_s: Math.round(visibleSeconds() * 1000) / 1000,
    };
    try {
      const r = await api("/api/answer", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      if (r.status === 201 || r.status === 409) {  // 409: already saved earlier (e.g. a second tab)
        const d = r.status === 201 ? await r.json() : null;
        state.done = d ? d.answered : state.done + 1;
        state.queue.shift();
        showError("");
        state.busy = false;
        updateProgress();
        await showNext();
        return;
      }
      const d = await r.json().catch(() => ({ error: "server error " + r.status }));
      showError("Not saved: " + d.error);
    } catch (e) {
      showError("Network problem: your answer was not saved. Please try again.");
    }
    state.busy = false;
    updateSubmit();
  }

  async function fetchItem(id) {
    const r = await api("/api/item/" + encodeURIComponent(id));
    if (!r.ok) throw new Error("the volume could not be loaded (HTTP " + r.status + ")");
    const vol = new Uint16Array(await r.arrayBuffer());
    if (vol.length !== state.dims[0] * state.dims[1] * state.dims[2]) throw new Error("the volume arrived incomplete");
    return vol;
  }

  async function showNext() {
    state.current = null;
    chooseAnswer(null);
    chooseConfidence(null);
    $("comment").value = "";
    if (!state.queue.length) {
      message("Thank you!", "All " + state.items.length + " volumes are answered and saved. You can close this page.");
      return;
    }
    const id = state.queue[0];
    $("loading").hidden = false;
    let vol;
    try {
      vol = state.prefetch && state.prefetch.id === id ? await state.prefetch.promise : await fetchItem(id);
    } catch (e) {
      message("Loading failed", "Sorry, " + e.message + ". Reload the page to try again; your answers so far are saved.");
      return;
    }
    state.prefetch = null;
    state.vol = vol;
    state.current = id;
    state.pos = { axial: Math.floor(state.dims[0] / 2), coronal: Math.floor(state.dims[1] / 2), sagittal: Math.floor(state.dims[2] / 2) };
    renderAll();
    $("loading").hidden = true;
    state.visibleMs = 0;
    state.since = document.hidden ? null : performance.now();
    updateSubmit();
    if (state.queue.length > 1) {  // fetch the next volume while this one is read
      const nid = state.queue[1];
      state.prefetch = { id: nid, promise: fetchItem(nid) };
      state.prefetch.promise.catch(() => { if (state.prefetch && state.prefetch.id === nid) state.prefetch = null; });
    }
  }

  // ---- keyboard -----------------------------------------------------------------------------------
  document.addEventListener("keydown", (e) => {
    const tag = e.target && e.target.tagName;
    if (tag === "TEXTAREA") {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); }
      return;
    }
    if (e.altKey || e.ctrlKey || e.metaKey || !state.dims) return;
    if (tag === "INPUT" && NAV_KEYS.includes(e.key)) return;  // a focused slider scrolls by itself
    const v = state.active;
    const k = e.key;
    if (k === "ArrowUp" || k === "ArrowRight") setSlice(v, state.pos[v] + 1);
    else if (k === "ArrowDown" || k === "ArrowLeft") setSlice(v, state.pos[v] - 1);
    else if (k === "PageUp") setSlice(v, state.pos[v] + 10);
    else if (k === "PageDown") setSlice(v, state.pos[v] - 10);
    else if (k === "Home") setSlice(v, 0);
    else if (k === "End") setSlice(v, depth(v) - 1);
    else if (k === "r" || k === "R") chooseAnswer("real");
    else if (k === "s" || k === "S") chooseAnswer("synthetic");
    else if (k >= "1" && k <= "5" && k.length === 1) chooseConfidence(Number(k));
    else if (k === "p" || k === "P") applyPreset(state.preset + 1);
    else if (k === "x" || k === "X") $("views").classList.toggle("no-crosshair");
    else if (k === "f" || k === "F") toggleSolo(v);
    else if (k === "Enter") submit();  // also when a choice button still has focus
    else return;
    e.preventDefault();
  });

  // ---- start --------------------------------------------------------------------------------------
  async function init() {
    if (!token) {
      message("No access token", "Please open the personal link you received from the study coordinator.");
      return;
    }
    let r;
    try { r = await api("/api/session"); } catch (e) { message("Server not reachable", "Please try again in a moment."); return; }
    if (r.status === 403) {
      message("Link not valid", "This link is not valid for this study. Please check the link you received.");
      return;
    }
    if (!r.ok) { message("Server error", "The study server answered " + r.status + ". Please try again later."); return; }
    const s = await r.json();
    state.display = s.display;
    state.dims = s.display.shape;
    state.items = s.items;
    const answered = new Set(s.answered);
    state.queue = s.items.filter((i) => !answered.has(i));
    state.done = s.items.length - state.queue.length;
    $("reader-name").textContent = s.reader;
    setupPresets();
    setupPanes();
    applyPreset(0);
    updateProgress();
    $("btn-real").addEventListener("click", () => chooseAnswer("real"));
    $("btn-synthetic").addEventListener("click", () => chooseAnswer("synthetic"));
    document.querySelectorAll("#confidence button").forEach((b) => b.addEventListener("click", () => chooseConfidence(Number(b.dataset.conf))));
    $("submit").addEventListener("click", submit);
    await showNext();
  }
  init();
})();
