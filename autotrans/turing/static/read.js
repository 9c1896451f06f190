// Reader page of the visual Turing test. The token comes from the URL fragment (never sent to the
// server by the browser) and travels in an Authorization header. Volumes arrive as uint16 arrays on a
// common isotropic grid; window/level is applied here so scrolling and windowing need no round trips.
// Two designs: one volume per item (real or synthetic?) or a pair side by side (which one is real?).
// Studies with source volumes (the CT under a PET, the input of an MR model) can fuse the item over its
// source or show the source beside it. The settings used are sent with each answer.
"use strict";
(function () {
  const token = decodeURIComponent(location.hash.replace(/^#/, ""));
  const VIEWS = ["axial", "coronal", "sagittal"];
  const NAV_KEYS = ["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "PageUp", "PageDown", "Home", "End"];
  const $ = (id) => document.getElementById(id);
  const state = {
    display: null, dims: null, items: [], queue: [], done: 0, current: null, vols: null, ctx: null,
    design: "single", pairs: null, contexts: null, fusion: false, alpha: 0.5, sourceView: false,
    pos: { axial: 0, coronal: 0, sagittal: 0 }, active: "axial",
    win: { center: 0, width: 1, colormap: "gray" }, preset: 0,
    answer: null, confidence: null, busy: false, prefetch: null,
    visibleMs: 0, since: null,
  };
  const panes = {};
  const lut = new Uint8ClampedArray(65536);
  const ctxLut = new Uint8ClampedArray(65536);
  let cmap = makeColormap("gray");
  const COLORMAPS = ["gray", "gray_inverted", "hot_iron"];
  // fusion opacity by display value: background uptake lets the CT show at full brightness, as on PET/CT
  // workstations, instead of darkening (hot iron) or whitening (inverted grey) the whole CT
  const FADE = new Float32Array(256).map((_, i) => Math.min(1, i / 64));

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
      else if (name === "hot_iron") {  // black - red - orange - yellow - white, as on PET workstations
        r = 255 * Math.min(1, t / 0.5); g = 255 * Math.max(0, Math.min(1, (t - 0.35) / 0.5)); b = 255 * Math.max(0, (t - 0.7) / 0.3);
      }
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
    $("colormap").value = state.win.colormap;
    drawColorbar(digits);
    // a preset button is lit only while the display is exactly that preset
    document.querySelectorAll("#presets button").forEach((b, j) => {
      const p = d.presets[j];
      b.classList.toggle("on", p.center === state.win.center && p.width === state.win.width && p.colormap === state.win.colormap);
    });
  }

  function drawColorbar(digits) {  // the colour scale in physical units (SUV, HU), as reading software shows it
    const c = $("colorbar"), ctx = c.getContext("2d"), img = ctx.createImageData(256, 1);
    for (let i = 0; i < 256; i++) {
      img.data[4 * i] = cmap[3 * i]; img.data[4 * i + 1] = cmap[3 * i + 1]; img.data[4 * i + 2] = cmap[3 * i + 2]; img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    const unit = " " + state.display.unit;
    $("cbar-lo").textContent = (state.win.center - state.win.width / 2).toFixed(digits) + unit;
    $("cbar-hi").textContent = (state.win.center + state.win.width / 2).toFixed(digits) + unit;
  }

  function setupContextLut() {  // source volumes are shown in grey at their modality's first preset
    const c = state.display.context;
    if (!c) return;
    const p = c.presets[0];
    const lo = p.center - p.width / 2, k = 255 / p.width;
    for (let u = 0; u < 65536; u++) ctxLut[u] = (c.offset + c.scale * u - lo) * k;
  }

  function setColormap(name) {
    state.win.colormap = name;
    updateLut();
    renderAll();
  }

  // what each cell of a pane shows: the item's volume(s), or the source beside it
  function cellSources() {
    if (!state.vols) return [];
    if (state.design === "2afc") return [{ vol: state.vols[0], ctx: false }, { vol: state.vols[1], ctx: false }];
    const out = [{ vol: state.vols[0], ctx: false }];
    if (state.sourceView && state.ctx) out.push({ vol: state.ctx, ctx: true });
    return out;
  }

  function captions() {
    if (state.design === "2afc") return ["Left", "Right"];
    return state.sourceView && state.ctx ? ["Item", "Source"] : [""];
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
    const cells = cellSources();
    if (!cells.length) return;
    const [w, h] = viewSize(view);
    const [nz, ny, nx] = state.dims;
    const s = state.pos[view];
    const fuse = state.fusion && state.ctx ? state.ctx : null;
    const a = state.alpha;
    cells.forEach((cell, k) => {
      const c = p.cells[k], vol = cell.vol, out = c.img.data;
      let o = 0;
      for (let r = 0; r < h; r++) {
        for (let col = 0; col < w; col++) {
          let idx;
          if (view === "axial") idx = (s * ny + r) * nx + col;                       // anterior up, patient right on the left
          else if (view === "coronal") idx = ((nz - 1 - r) * ny + s) * nx + col;     // superior up
          else idx = ((nz - 1 - r) * ny + col) * nx + s;                             // superior up, anterior left
          if (cell.ctx) {
            const g = ctxLut[vol[idx]];
            out[o] = g; out[o + 1] = g; out[o + 2] = g;
          } else if (fuse) {  // item in its colour map over the grey source; the lowest quarter of the window fades
            const v = lut[vol[idx]], g = 3 * v, wa = a * FADE[v], base = (1 - wa) * ctxLut[fuse[idx]];  // into the CT
            out[o] = base + wa * cmap[g]; out[o + 1] = base + wa * cmap[g + 1]; out[o + 2] = base + wa * cmap[g + 2];
          } else {
            const g = 3 * lut[vol[idx]];
            out[o] = cmap[g]; out[o + 1] = cmap[g + 1]; out[o + 2] = cmap[g + 2];
          }
          out[o + 3] = 255;
          o += 4;
        }
      }
      c.ctx.putImageData(c.img, 0, 0);
    });
    p.label.textContent = (s + 1) + " / " + depth(view);
    p.slider.value = String(s);
    // crosshair: where the other two views cut this one
    const cx = view === "sagittal" ? state.pos.coronal : state.pos.sagittal;
    const cy = view === "axial" ? state.pos.coronal : nz - 1 - state.pos.axial;
    p.cells.forEach((c) => {
      c.chV.style.left = (100 * (cx + 0.5) / w) + "%";
      c.chH.style.top = (100 * (cy + 0.5) / h) + "%";
    });
  }

  function layoutCells() {  // one cell per shown volume, the same slice in each: scrolling stays in sync
    const caps = captions();
    VIEWS.forEach((view) => {
      panes[view].cells.forEach((c, k) => {
        c.wrap.hidden = k >= Math.max(1, caps.length);
        c.cap.textContent = caps[k] || "";
      });
      fit(view);
    });
  }

  function renderAll() { VIEWS.forEach(render); }

  function fit(view) {
    const p = panes[view];
    if (!state.dims) return;
    const [w, h] = viewSize(view);
    const shown = p.cells.filter((c) => !c.wrap.hidden);
    const avail = (p.stage.clientWidth - 6 * (shown.length - 1)) / shown.length;
    const f = Math.min(avail / w, p.stage.clientHeight / h);
    shown.forEach((c) => {
      c.wrap.style.width = Math.max(1, Math.floor(w * f)) + "px";
      c.wrap.style.height = Math.max(1, Math.floor(h * f)) + "px";
    });
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
    updateLut();
    renderAll();
  }

  function setupPanes() {
    VIEWS.forEach((view) => {
      const pane = document.querySelector('.pane[data-view="' + view + '"]');
      const [w, h] = viewSize(view);
      const cells = Array.from(pane.querySelectorAll(".wrap")).map((wrap) => {
        const canvas = wrap.querySelector("canvas");
        canvas.width = w; canvas.height = h;
        const ctx = canvas.getContext("2d");
        return { wrap: wrap, canvas: canvas, ctx: ctx, img: ctx.createImageData(w, h), cap: wrap.querySelector(".cap"),
                 chH: wrap.querySelector(".ch.h"), chV: wrap.querySelector(".ch.v") };
      });
      const p = panes[view] = {
        pane: pane, stage: pane.querySelector(".stage"), cells: cells,
        slider: $("slider-" + view), label: $("label-" + view), wheel: 0,
      };
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
      cells.forEach((cell) => {
        let drag = null;
        cell.wrap.addEventListener("pointerdown", (e) => {
          drag = { x: e.clientX, y: e.clientY, c: state.win.center, w: state.win.width, moved: false };
          cell.wrap.setPointerCapture(e.pointerId);
          setActive(view);
        });
        cell.wrap.addEventListener("pointermove", (e) => {
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
        cell.wrap.addEventListener("pointerup", (e) => {
          if (drag && !drag.moved) {  // a click moves the crosshair to the clicked voxel
            const rect = cell.wrap.getBoundingClientRect();
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
    });
    new ResizeObserver(() => VIEWS.forEach(fit)).observe($("views"));
    layoutCells();
    setActive("axial");
  }

  function setupSourceControls() {
    $("colormap").addEventListener("change", () => setColormap($("colormap").value));
    if (!state.display.context) return;
    $("source-panel").hidden = false;
    const petOverCt = state.display.modality === "PET" && state.display.context.modality === "CT";
    $("fusion-row").hidden = !petOverCt;
    $("source-view-row").hidden = state.design === "2afc";  // two volumes side by side already fill the panes
    $("fusion").addEventListener("change", () => {
      state.fusion = $("fusion").checked;
      $("alpha-row").hidden = !state.fusion;
      if (state.fusion && state.win.colormap === "gray_inverted") { state.win.colormap = "hot_iron"; updateLut(); }
      renderAll();
    });
    $("fusion-alpha").addEventListener("input", () => {
      state.alpha = Number($("fusion-alpha").value) / 100;
      $("alpha-value").textContent = $("fusion-alpha").value + "%";
      renderAll();
    });
    $("source-view").addEventListener("change", () => {
      state.sourceView = $("source-view").checked;
      layoutCells();
      renderAll();
    });
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

  function chooseAnswer(a) {  // single design: "real" / "synthetic"; pairs: the side 0 (left) or 1 (right)
    state.answer = a;
    $("btn-real").classList.toggle("on", a === "real");
    $("btn-synthetic").classList.toggle("on", a === "synthetic");
    $("btn-left").classList.toggle("on", a === 0);
    $("btn-right").classList.toggle("on", a === 1);
    updateSubmit();
  }

  function chooseConfidence(c) {
    state.confidence = c;
    document.querySelectorAll("#confidence button").forEach((b) => b.classList.toggle("on", Number(b.dataset.conf) === c));
    updateSubmit();
  }

  function updateSubmit() {
    $("submit").disabled = state.busy || !state.current || state.answer === null || !state.confidence;
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
    if (state.busy || !state.current || state.answer === null || !state.confidence) return;
    state.busy = true;
    updateSubmit();
    const seconds = Math.round(visibleSeconds() * 1000) / 1000;
    const body = {
      item: state.current, confidence: state.confidence, comment: $("comment").value.trim(), time_on_item_s: seconds,
      display: {  // the settings on screen when the answer was given
        window_center: state.win.center, window_width: state.win.width, colormap: state.win.colormap,
        fusion: !!(state.fusion && state.ctx), fusion_alpha: state.alpha,
        source_view: !!(state.sourceView && state.ctx && state.design !== "2afc"), time_s: seconds,
      },
    };
    if (state.design === "2afc") body.pick = state.pairs[state.current][state.answer];
    else body.answer = state.answer;
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

  async function fetchVolume(id) {
    const r = await api("/api/item/" + encodeURIComponent(id));
    if (!r.ok) throw new Error("the volume could not be loaded (HTTP " + r.status + ")");
    const vol = new Uint16Array(await r.arrayBuffer());
    if (vol.length !== state.dims[0] * state.dims[1] * state.dims[2]) throw new Error("the volume arrived incomplete");
    return vol;
  }

  async function fetchItem(id) {  // the item's volume(s) and its source volume, fetched together
    const ids = state.design === "2afc" ? state.pairs[id] : [id];
    const ctxId = state.contexts ? state.contexts[id] : null;
    const all = await Promise.all(ids.concat(ctxId ? [ctxId] : []).map(fetchVolume));
    return { vols: all.slice(0, ids.length), ctx: ctxId ? all[ids.length] : null };
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
    let got;
    try {
      got = state.prefetch && state.prefetch.id === id ? await state.prefetch.promise : await fetchItem(id);
    } catch (e) {
      message("Loading failed", "Sorry, " + e.message + ". Reload the page to try again; your answers so far are saved.");
      return;
    }
    state.prefetch = null;
    state.vols = got.vols;
    state.ctx = got.ctx;
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
    else if (state.design === "2afc" && (k === "l" || k === "L")) chooseAnswer(0);
    else if (state.design === "2afc" && (k === "r" || k === "R")) chooseAnswer(1);
    else if (state.design !== "2afc" && (k === "r" || k === "R")) chooseAnswer("real");
    else if (state.design !== "2afc" && (k === "s" || k === "S")) chooseAnswer("synthetic");
    else if (k === "c" || k === "C") setColormap(COLORMAPS[(COLORMAPS.indexOf(state.win.colormap) + 1) % COLORMAPS.length]);
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
    state.design = s.design || "single";
    state.pairs = s.volumes || null;
    state.contexts = s.context || null;
    if (state.design === "2afc") {
      $("question").textContent = "Which volume is real?";
      $("choice-single").hidden = true;
      $("choice-2afc").hidden = false;
    }
    setupContextLut();
    setupSourceControls();
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
    $("btn-left").addEventListener("click", () => chooseAnswer(0));
    $("btn-right").addEventListener("click", () => chooseAnswer(1));
    document.querySelectorAll("#confidence button").forEach((b) => b.addEventListener("click", () => chooseConfidence(Number(b.dataset.conf))));
    $("submit").addEventListener("click", submit);
    await showNext();
  }
  init();
})();
