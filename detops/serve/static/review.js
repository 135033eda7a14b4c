// The detops review page: plain JavaScript, no build step, nothing loaded from elsewhere.
// Shows the oldest pending item with the model's suggestions drawn over the image; a person
// moves, resizes, draws and deletes boxes, picks classes and submits; then the next one loads.
// Boxes are [x1, y1, x2, y2] in pixels of the image as sent (the SVG's user units).
"use strict";

(() => {
  const TOKEN_KEY = "detops-review-token";
  const REVIEWER_KEY = "detops-reviewer";
  const SVG = "http://www.w3.org/2000/svg";
  const HANDLE_PX = 9; // corner handles, in screen pixels
  const MIN_PX = 3; // a drawn box smaller than this on screen is a click, not a box

  const $ = (id) => document.getElementById(id);
  const svg = $("overlay");
  const img = $("image");
  const state = {
    item: null, // the item as /v1/review/{id} returned it
    boxes: [], // [{box: [x1, y1, x2, y2], label}]
    selected: -1,
    drag: null,
    zoom: 1,
    imageUrl: null,
    skipped: new Set(),
  };

  // -- token and reviewer ----------------------------------------------------------------------
  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function takeTokenFromUrl() {
    const params = new URLSearchParams(location.search);
    if (!params.has("token")) return;
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token"); // keep it out of the history and of anything copied from the bar
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }

  function status(text, error = false) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", error);
  }

  // -- HTTP ------------------------------------------------------------------------------------
  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers, { Authorization: "Bearer " + token() });
    const response = await fetch(path, Object.assign({}, options, { headers }));
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail || detail;
      } catch (_) {
        // not JSON: keep the status text
      }
      const err = new Error(detail);
      err.status = response.status;
      throw err;
    }
    return response;
  }

  function failed(err) {
    if (err.status === 401 || err.status === 403) {
      status("token needed: " + err.message, true);
      $("token").focus();
    } else {
      status(err.message, true);
    }
  }

  // -- loading items ---------------------------------------------------------------------------
  async function next() {
    try {
      status("loading…");
      const { items } = await (await api("v1/review?state=pending&limit=100")).json();
      const item = items.find((i) => !state.skipped.has(i.id) && i.has_image);
      refreshCounts();
      if (!item) {
        showEmpty();
        status("");
        return;
      }
      await load(item.id);
      status("");
    } catch (err) {
      failed(err);
    }
  }

  async function refreshCounts() {
    try {
      const s = await (await api("v1/review/stats")).json();
      const rate = s.override_rate === null ? "–" : Math.round(s.override_rate * 100) + "%";
      $("counts").textContent =
        `pending ${s.pending} · reviewed ${s.reviewed} · override rate ${rate}`;
    } catch (_) {
      $("counts").textContent = "";
    }
  }

  function showEmpty() {
    state.item = null;
    state.boxes = [];
    document.body.dataset.item = "";
    $("frame").hidden = true;
    $("empty").hidden = false;
    $("item-id").textContent = "-";
    $("item-meta").textContent = "";
    $("boxes").replaceChildren();
    $("submit").disabled = true;
    $("skip").disabled = true;
  }

  async function load(id) {
    const item = await (await api("v1/review/" + encodeURIComponent(id))).json();
    const blob = await (await api("v1/review/" + encodeURIComponent(id) + "/image")).blob();
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.imageUrl = URL.createObjectURL(blob);
    await new Promise((resolve, reject) => {
      img.onload = resolve;
      img.onerror = () => reject(new Error(`item ${id}: the browser cannot show its image`));
      img.src = state.imageUrl;
    });
    state.item = item;
    state.boxes = item.suggestions.map((d) => ({
      box: d.box.slice(),
      label: d.label,
      score: d.score,
    }));
    state.selected = -1;
    const { width, height } = item.image;
    state.zoom = Math.min(4, 900 / width, 640 / height); // fit; small images are magnified
    const frame = $("frame");
    frame.style.width = width * state.zoom + "px";
    frame.style.height = height * state.zoom + "px";
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    frame.hidden = false;
    $("empty").hidden = true;
    fillClasses($("new-class"), item.classes, $("new-class").value);
    $("item-id").textContent = item.id;
    $("item-meta").textContent =
      `${item.model || "?"} · ${item.reason.replace("_", " ")} · ${width}×${height} · ` +
      `request ${item.request_id}`;
    $("submit").disabled = false;
    $("skip").disabled = false;
    render();
    document.body.dataset.item = item.id; // last: the item is ready to work on
  }

  function fillClasses(select, classes, value) {
    select.replaceChildren(
      ...classes.map((name) => {
        const o = document.createElement("option");
        o.value = name;
        o.textContent = name;
        return o;
      }),
    );
    if (classes.includes(value)) select.value = value;
  }

  // -- drawing ---------------------------------------------------------------------------------
  function el(name, attrs) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  }

  function normalised(b) {
    return [Math.min(b[0], b[2]), Math.min(b[1], b[3]), Math.max(b[0], b[2]), Math.max(b[1], b[3])];
  }

  function render() {
    const z = state.zoom;
    const parts = [];
    state.boxes.forEach((b, i) => {
      const [x1, y1, x2, y2] = normalised(b.box);
      const g = el("g", { class: "box" + (i === state.selected ? " selected" : "") });
      g.append(el("rect", { class: "body", "data-index": i, x: x1, y: y1,
        width: x2 - x1, height: y2 - y1 }));
      const t = el("text", { x: x1 + 2 / z, y: y1 + 13 / z, "font-size": 12 / z });
      t.textContent = b.label;
      g.append(t);
      if (i === state.selected) {
        const h = HANDLE_PX / z;
        for (const [corner, x, y] of [["nw", x1, y1], ["ne", x2, y1], ["sw", x1, y2], ["se", x2, y2]]) {
          g.append(el("rect", { class: "handle", "data-corner": corner, x: x - h / 2,
            y: y - h / 2, width: h, height: h }));
        }
      }
      parts.push(g);
    });
    const d = state.drag;
    if (d && d.mode === "draw") {
      const [x1, y1, x2, y2] = normalised([...d.start, ...d.current]);
      parts.push(el("rect", { class: "draft", x: x1, y: y1, width: x2 - x1, height: y2 - y1 }));
    }
    svg.replaceChildren(...parts);
    renderList();
  }

  function renderList() {
    const classes = state.item ? state.item.classes : [];
    $("boxes").replaceChildren(
      ...state.boxes.map((b, i) => {
        const li = document.createElement("li");
        li.dataset.index = i;
        if (i === state.selected) li.className = "selected";
        const select = document.createElement("select");
        select.className = "label";
        select.setAttribute("aria-label", `class of box ${i + 1}`);
        fillClasses(select, classes, b.label);
        select.addEventListener("change", () => {
          b.label = select.value;
          delete b.score; // the model's score was for its own class
          state.selected = i;
          render();
        });
        const coords = document.createElement("span");
        coords.className = "coords";
        coords.textContent = normalised(b.box).map((v) => v.toFixed(1)).join(", ") +
          (b.score === undefined ? "" : ` · score ${b.score.toFixed(2)}`);
        const del = document.createElement("button");
        del.type = "button";
        del.className = "delete";
        del.textContent = "delete";
        del.addEventListener("click", (ev) => {
          ev.stopPropagation();
          remove(i);
        });
        li.addEventListener("click", () => {
          state.selected = i;
          render();
        });
        li.append(select, coords, del);
        return li;
      }),
    );
  }

  function remove(i) {
    if (i < 0 || i >= state.boxes.length) return;
    state.boxes.splice(i, 1);
    state.selected = -1;
    render();
  }

  // -- pointer: draw, move, resize -------------------------------------------------------------
  function clamp(v, lo, hi) {
    return Math.min(hi, Math.max(lo, v));
  }

  function round(v) {
    return Math.round(v * 100) / 100;
  }

  function pointIn(ev) {
    const p = svg.createSVGPoint();
    p.x = ev.clientX;
    p.y = ev.clientY;
    const q = p.matrixTransform(svg.getScreenCTM().inverse());
    const { width, height } = state.item.image;
    return [clamp(q.x, 0, width), clamp(q.y, 0, height)];
  }

  svg.addEventListener("pointerdown", (ev) => {
    if (!state.item || ev.button !== 0) return;
    ev.preventDefault(); // no text selection or image drag; so also blur inputs by hand, for
    if (document.activeElement && document.activeElement.blur) document.activeElement.blur(); // Delete
    const p = pointIn(ev);
    const t = ev.target;
    if (t.dataset.corner !== undefined && state.selected >= 0) {
      const box = normalised(state.boxes[state.selected].box);
      state.drag = { mode: "resize", i: state.selected, corner: t.dataset.corner, box };
    } else if (t.dataset.index !== undefined) {
      const i = Number(t.dataset.index);
      state.selected = i;
      state.drag = { mode: "move", i, start: p, orig: normalised(state.boxes[i].box) };
    } else {
      state.selected = -1;
      state.drag = { mode: "draw", start: p, current: p };
    }
    svg.setPointerCapture(ev.pointerId);
    render();
  });

  svg.addEventListener("pointermove", (ev) => {
    const d = state.drag;
    if (!d) return;
    const p = pointIn(ev);
    const { width, height } = state.item.image;
    if (d.mode === "draw") {
      d.current = p;
    } else if (d.mode === "move") {
      const [x1, y1, x2, y2] = d.orig;
      const dx = clamp(p[0] - d.start[0], -x1, width - x2);
      const dy = clamp(p[1] - d.start[1], -y1, height - y2);
      // no motion keeps the box exactly as it was (an unchanged suggestion stays unchanged)
      if (dx === 0 && dy === 0) {
        state.boxes[d.i].box = d.orig.slice();
      } else {
        state.boxes[d.i].box = [x1 + dx, y1 + dy, x2 + dx, y2 + dy].map(round);
        delete state.boxes[d.i].score; // the model's score was for its own box
      }
    } else {
      const b = d.box.slice();
      if (d.corner.includes("w")) b[0] = p[0];
      if (d.corner.includes("e")) b[2] = p[0];
      if (d.corner.includes("n")) b[1] = p[1];
      if (d.corner.includes("s")) b[3] = p[1];
      state.boxes[d.i].box = b.map(round);
      delete state.boxes[d.i].score;
    }
    render();
  });

  function endDrag() {
    const d = state.drag;
    if (!d) return;
    state.drag = null;
    const min = MIN_PX / state.zoom;
    if (d.mode === "draw") {
      const box = normalised([...d.start, ...d.current]).map(round);
      if (box[2] - box[0] >= min && box[3] - box[1] >= min) {
        state.boxes.push({ box, label: $("new-class").value });
        state.selected = state.boxes.length - 1;
      }
    } else {
      const b = state.boxes[d.i];
      b.box = normalised(b.box);
      if (b.box[2] - b.box[0] < min || b.box[3] - b.box[1] < min) {
        b.box = d.mode === "move" ? d.orig : d.box; // resized to nothing: undo
      }
    }
    render();
  }

  svg.addEventListener("pointerup", endDrag);
  svg.addEventListener("pointercancel", endDrag);

  document.addEventListener("keydown", (ev) => {
    const tag = (ev.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea") return;
    if ((ev.key === "Delete" || ev.key === "Backspace") && state.selected >= 0) {
      ev.preventDefault();
      remove(state.selected);
    }
  });

  // -- submitting ------------------------------------------------------------------------------
  async function submit() {
    if (!state.item) return;
    const reviewer = $("reviewer").value.trim();
    if (!reviewer) {
      status("enter your name as reviewer first", true);
      $("reviewer").focus();
      return;
    }
    localStorage.setItem(REVIEWER_KEY, reviewer);
    const id = state.item.id;
    const body = {
      reviewer,
      boxes: state.boxes.map((b) => ({ box: normalised(b.box), label: b.label })),
    };
    $("submit").disabled = true;
    try {
      const out = await (
        await api("v1/review/" + encodeURIComponent(id), {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(body),
        })
      ).json();
      await next();
      status(`saved ${id} (${out.changed ? "corrected" : "accepted as suggested"})`);
    } catch (err) {
      $("submit").disabled = false;
      failed(err);
    }
  }

  // -- start -----------------------------------------------------------------------------------
  takeTokenFromUrl();
  $("token").value = token();
  $("reviewer").value = localStorage.getItem(REVIEWER_KEY) || "";
  $("token").addEventListener("change", () => {
    const value = $("token").value.trim();
    // the same token again (e.g. the field losing focus) must not reload the item being
    // edited, which would drop the reviewer's changes and overwrite the status line
    if (value === token() && state.item) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    next();
  });
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", () => {
    if (state.item) state.skipped.add(state.item.id);
    next();
  });
  $("reload").addEventListener("click", () => {
    state.skipped.clear();
    next();
  });
  if (token()) {
    next();
  } else {
    status("enter the server's token to start", true);
    $("token").focus();
  }
})();
