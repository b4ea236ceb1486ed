// llm-dit viewer: plain JavaScript, no build step, no external assets.
// Everything that comes from results (prompt text, labels, records) is put into the page with textContent or
// element properties, never as HTML: labels and prompts may hold <, &, quotes and commas.
"use strict";

(() => {
  const VIEWS = ["grid", "slider", "ab", "diff"];
  const DIFF_MODES = ["highlight", "absolute", "heatmap"];
  const NONE = ""; // the "no columns" choice of the grid

  const state = {
    experiments: [],
    root: "",
    exp: null, // the experiment payload of /api/experiments/<name>
    index: new Map(), // run key (values along every dimension) -> run
    view: "grid",
    rows: null,
    cols: null,
    hidden: {}, // dim -> Set of values the grid filters out
    fixed: {}, // dim -> value, for dimensions not on the grid's axes or not compared
    dim: null, // the compared dimension of the pairwise views
    a: null,
    b: null,
    mode: "highlight",
    threshold: 8,
    gain: 1,
    opacity: 100,
    split: 50, // slider divider, percent of the width showing A
    shown: "A",
    thumb: 160,
    size: 512,
    record: null, // run id whose record is open
  };

  // ---- small helpers -------------------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  /** An element: props are attributes, except text, class, testid, dataset, on<event> and DOM properties. */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else if (key === "testid") node.dataset.testid = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (["value", "checked", "disabled", "selected", "min", "max", "step"].includes(key)) node[key] = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** Replace the children of ``node`` (arrays flattened, null/false skipped). */
  function fill(node, ...children) {
    node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  }

  function select(testid, options, current, onchange, label) {
    const node = el("select", { testid, "aria-label": label, onchange: (e) => onchange(e.target.value) });
    for (const [value, text] of options) {
      const option = new Option(text, value);
      option.selected = value === current;
      node.append(option);
    }
    return node;
  }

  const enc = encodeURIComponent;
  const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) throw new Error((body && body.detail) || `${response.status} ${response.statusText}`);
    return body;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  /** A dimension value as shown: the empty label as "" and a missing one as (none). */
  function valueText(value) {
    if (value === null || value === undefined) return "(none)";
    return value === "" ? '""' : value;
  }

  function shortPrompt(pid) {
    const text = (state.exp && state.exp.prompt_texts[pid]) || "";
    return text.length > 48 ? `${text.slice(0, 47)}…` : text;
  }

  /** Option text of a value: prompts get their text after the id. */
  function optionText(dim, value) {
    if (dim === "prompt") {
      const text = shortPrompt(value);
      return text ? `${value} — ${text}` : value;
    }
    return valueText(value);
  }

  const dimValue = (dim, value) => `${dim}=${valueText(value)}`;

  function formatNumber(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "string") return value; // inf, -inf, nan
    if (Number.isInteger(value)) return String(value);
    if (Math.abs(value) >= 1000) return value.toFixed(0);
    return String(Number(value.toPrecision(4)));
  }

  /** Metric values of a run, one nowrap span each: captions break between metrics, never inside one. */
  function metricsLine(run) {
    const parts = state.exp.metrics
      .filter((m) => run.metrics[m.name] !== undefined)
      .map((m) => el("span", { class: "mv", text: `${m.name} ${formatNumber(run.metrics[m.name])}` }));
    return parts.flatMap((part, i) => (i ? [" · ", part] : [part]));
  }

  const dimensions = () => Object.keys(state.exp.dimensions);
  const runKey = (values) => JSON.stringify(dimensions().map((d) => (values[d] === undefined ? null : values[d])));
  const findRun = (values) => state.index.get(runKey(values));

  function visibleValues(dim) {
    const hidden = state.hidden[dim] || new Set();
    return state.exp.dimensions[dim].filter((v) => !hidden.has(v));
  }

  // ---- URL hash: experiment, view and every selection, so a view can be linked and reloaded -------------------

  function writeHash() {
    const p = new URLSearchParams();
    if (!state.exp) {
      history.replaceState(null, "", location.pathname + location.search);
      return;
    }
    p.set("exp", state.exp.name);
    p.set("view", state.view);
    if (state.view === "grid") {
      p.set("rows", state.rows);
      p.set("cols", state.cols);
      for (const [dim, values] of Object.entries(state.hidden)) for (const v of values) p.append(`hide.${dim}`, v);
      p.set("thumb", state.thumb);
    } else {
      p.set("dim", state.dim);
      p.set("a", state.a);
      p.set("b", state.b);
      p.set("size", state.size);
    }
    const free = state.view === "grid" ? [state.rows, state.cols] : [state.dim];
    for (const [dim, value] of Object.entries(state.fixed)) if (!free.includes(dim)) p.set(`fix.${dim}`, value);
    if (state.view === "slider") p.set("split", Math.round(state.split));
    if (state.view === "ab") p.set("shown", state.shown);
    if (state.view === "diff") {
      p.set("mode", state.mode);
      p.set("threshold", state.threshold);
      p.set("gain", state.gain);
      p.set("opacity", state.opacity);
    }
    if (state.record) p.set("record", state.record);
    history.replaceState(null, "", `#${p}`);
  }

  function number(p, key, fallback, lo, hi) {
    const x = Number(p.get(key));
    return p.has(key) && Number.isFinite(x) ? clamp(x, lo, hi) : fallback;
  }

  /** Defaults for a freshly loaded experiment. */
  function resetSelections() {
    const dims = state.exp.dimensions;
    const axes = state.exp.axes.filter((a) => dims[a] && dims[a].length);
    const varied = [...axes, "prompt", "seed"].filter((d) => dims[d].length > 1);
    // A two-axis sweep shows its two axes; a one-axis sweep puts prompts on the rows.
    const variedAxes = axes.filter((a) => dims[a].length > 1);
    state.cols = variedAxes[0] || axes[0] || "seed";
    state.rows = variedAxes[1] || (state.cols === "prompt" ? "seed" : "prompt");
    state.hidden = {};
    state.fixed = {};
    for (const dim of Object.keys(dims)) state.fixed[dim] = dims[dim][0];
    state.dim = varied[0] || "prompt";
    state.a = dims[state.dim][0];
    state.b = dims[state.dim][1] ?? dims[state.dim][0];
    state.split = 50;
    state.shown = "A";
  }

  /** Selections from the hash; anything unknown or invalid falls back to the defaults. */
  function applyHash(p) {
    const dims = state.exp.dimensions;
    const names = Object.keys(dims);
    state.view = VIEWS.includes(p.get("view")) ? p.get("view") : "grid";
    if (names.includes(p.get("rows"))) state.rows = p.get("rows");
    if (p.get("cols") === NONE || names.includes(p.get("cols"))) state.cols = p.get("cols");
    if (state.rows === state.cols) state.cols = names.find((d) => d !== state.rows);
    state.hidden = {};
    for (const dim of names) {
      const hidden = p.getAll(`hide.${dim}`).filter((v) => dims[dim].includes(v));
      if (hidden.length) state.hidden[dim] = new Set(hidden);
      const fixed = p.get(`fix.${dim}`);
      if (fixed !== null && dims[dim].includes(fixed)) state.fixed[dim] = fixed;
    }
    if (names.includes(p.get("dim"))) state.dim = p.get("dim");
    const values = dims[state.dim];
    state.a = values.includes(p.get("a")) ? p.get("a") : values.includes(state.a) ? state.a : values[0];
    state.b = values.includes(p.get("b")) ? p.get("b") : values.includes(state.b) ? state.b : values[1] ?? values[0];
    if (DIFF_MODES.includes(p.get("mode"))) state.mode = p.get("mode");
    state.threshold = Math.round(number(p, "threshold", state.threshold, 0, 255));
    state.gain = number(p, "gain", state.gain, 1, 64);
    state.opacity = Math.round(number(p, "opacity", state.opacity, 0, 100));
    state.split = number(p, "split", state.split, 0, 100);
    state.shown = p.get("shown") === "B" ? "B" : "A";
    state.thumb = Math.round(number(p, "thumb", state.thumb, 48, 512));
    state.size = Math.round(number(p, "size", state.size, 128, 1536));
    state.record = p.get("record") || null;
  }

  // ---- loading and routing -------------------------------------------------------------------------------------

  async function loadExperiment(name) {
    const exp = await getJSON(`/api/experiments/${enc(name)}`);
    state.exp = exp;
    state.index = new Map();
    for (const run of exp.runs) {
      const key = runKey(run.dims);
      if (!state.index.has(key)) state.index.set(key, run);
    }
    resetSelections();
  }

  async function route() {
    const p = new URLSearchParams(location.hash.slice(1));
    const name = p.get("exp");
    try {
      if (!name) {
        state.exp = null;
        showHome();
        showError("");
        return;
      }
      if (!state.exp || state.exp.name !== name) await loadExperiment(name);
      applyHash(p);
      showError("");
      render();
      if (state.record) openRecord(state.record);
    } catch (error) {
      state.exp = null;
      showHome();
      showError(error.message);
    }
  }

  function go(params) {
    location.hash = new URLSearchParams(params).toString();
  }

  function fillExperimentSelect() {
    const node = $("experiment-select");
    node.replaceChildren(new Option("— choose —", ""));
    for (const e of state.experiments) {
      node.append(new Option(`${e.name} (${e.counts.done}/${e.counts.total})`, e.name));
    }
    node.value = state.exp ? state.exp.name : "";
  }

  function showHome() {
    $("home").hidden = false;
    $("workspace").hidden = true;
    document.querySelector(".tabs").hidden = true;
    $("home-root").textContent = `Results directory: ${state.root}`;
    const body = $("experiment-rows");
    body.replaceChildren();
    for (const e of state.experiments) {
      body.append(
        el(
          "tr",
          { testid: "experiment-row", dataset: { name: e.name } },
          el("td", {}, el("a", { href: `#${new URLSearchParams({ exp: e.name })}`, text: e.name })),
          el("td", { text: `${e.counts.done}/${e.counts.total}` }),
          el("td", {}, el("span", { class: `status ${e.status}`, text: e.status })),
          el("td", { class: "muted", text: e.description }),
        ),
      );
    }
    if (!state.experiments.length) {
      body.append(el("tr", {}, el("td", { colspan: 4, text: "No experiments in this results directory yet." })));
    }
    fillExperimentSelect();
    document.title = "llm-dit viewer";
  }

  // ---- rendering -----------------------------------------------------------------------------------------------

  function render() {
    $("home").hidden = true;
    $("workspace").hidden = false;
    document.querySelector(".tabs").hidden = false;
    fillExperimentSelect();
    for (const tab of document.querySelectorAll(".tabs [data-view]")) {
      tab.setAttribute("aria-selected", String(tab.dataset.view === state.view));
    }
    document.title = `${state.exp.name} · llm-dit viewer`;
    renderHeading();
    if (!state.exp.runs.length) {
      // Nothing planned yet: no dimension has a value to select.
      fill($("controls"));
      fill($("view"), el("p", { class: "empty", testid: "no-runs", text: "This experiment has no runs yet." }));
      return;
    }
    if (state.view === "grid") renderGrid();
    else renderPair();
    writeHash();
  }

  function renderHeading() {
    const exp = state.exp;
    const counts = exp.counts;
    const parts = [`${counts.total} runs`, `${counts.done} done`];
    if (counts.failed) parts.push(`${counts.failed} failed`);
    if (counts.planned) parts.push(`${counts.planned} planned`);
    const legend = exp.metrics.map((m) =>
      el("span", {
        class: "metric",
        title: m.description,
        text: `${m.name} ${m.higher_is_better === null ? "" : m.higher_is_better ? "↑" : "↓"}`,
      }),
    );
    $("exp-heading").replaceChildren(
      el("h2", { text: exp.name }),
      el("p", { class: "muted", text: exp.description }),
      el(
        "p",
        { class: "small" },
        el("span", { testid: "experiment-counts", text: parts.join(", ") }),
        legend.length ? " · metrics (↑ higher is better, ↓ lower): " : "",
        legend,
      ),
    );
  }

  function control(label, node) {
    return el("label", { class: "control" }, el("span", { text: label }), node);
  }

  function fixedSelects(skip) {
    const out = [];
    for (const dim of dimensions()) {
      if (skip.includes(dim)) continue;
      const values = state.view === "grid" ? visibleValues(dim) : state.exp.dimensions[dim];
      if (!values.includes(state.fixed[dim])) state.fixed[dim] = values[0];
      const node = select(
        `fixed-${dim}`,
        values.map((v) => [v, optionText(dim, v)]),
        state.fixed[dim],
        (v) => {
          state.fixed[dim] = v;
          render();
        },
        dim,
      );
      node.disabled = values.length < 2;
      out.push(control(dim, node));
    }
    return out;
  }

  // Grid --------------------------------------------------------------------------------------------------------

  function renderGrid() {
    const names = dimensions();
    const dimOptions = names.map((d) => [d, d]);
    const rows = select("grid-rows", dimOptions, state.rows, (v) => {
      if (v === state.cols) state.cols = state.rows;
      state.rows = v;
      render();
    }, "rows");
    const cols = select("grid-cols", [[NONE, "(none)"], ...dimOptions], state.cols, (v) => {
      if (v === state.rows) state.rows = state.cols === NONE ? names.find((d) => d !== v) : state.cols;
      state.cols = v;
      render();
    }, "columns");
    const size = el("input", {
      type: "range", min: 48, max: 512, step: 8, value: state.thumb, testid: "grid-size", "aria-label": "image size",
      oninput: (e) => {
        state.thumb = Number(e.target.value);
        $("view").style.setProperty("--thumb", `${state.thumb}px`);
        // Same bucket, same URL: the browser only fetches when the thumbnail size actually changes.
        $("view").querySelectorAll('[data-testid="grid-image"], [data-testid="input-image"]').forEach((img) => {
          img.src = thumbUrl(img.dataset.full);
        });
      },
      onchange: () => writeHash(),
    });
    const onAxes = [state.rows, state.cols].filter((d) => d !== NONE);
    const fixed = fixedSelects(onAxes);
    fill($("controls"),
      el("h3", { text: "Layout" }),
      control("rows", rows),
      control("columns", cols),
      control("image size", size),
      fixed.length ? el("h3", { text: "Fixed" }) : null,
      fixed,
      el("h3", { text: "Filters" }),
      names.map(filterBox),
    );
    $("view").style.setProperty("--thumb", `${state.thumb}px`);
    fill($("view"), gridInputs(), gridTable());
  }

  function filterBox(dim) {
    const values = state.exp.dimensions[dim];
    const hidden = state.hidden[dim] || new Set();
    const setAll = (show) => {
      state.hidden[dim] = new Set(show ? [] : values);
      if (!state.hidden[dim].size) delete state.hidden[dim];
      render();
    };
    const boxes = values.map((v) =>
      el(
        "label",
        { class: "check", title: dim === "prompt" ? state.exp.prompt_texts[v] : null },
        el("input", {
          type: "checkbox",
          checked: !hidden.has(v),
          dataset: { value: v },
          onchange: (e) => {
            const set = state.hidden[dim] || new Set();
            if (e.target.checked) set.delete(v);
            else set.add(v);
            if (set.size) state.hidden[dim] = set;
            else delete state.hidden[dim];
            render();
          },
        }),
        el("span", { text: valueText(v) }),
      ),
    );
    return el(
      "fieldset",
      { class: "filter", testid: `filter-${dim}` },
      el(
        "legend",
        {},
        el("span", { text: dim }),
        el("button", { type: "button", class: "link", text: "all", onclick: () => setAll(true) }),
        el("button", { type: "button", class: "link", text: "none", onclick: () => setAll(false) }),
      ),
      boxes,
    );
  }

  function headerLabel(dim, value) {
    const node = el("div", { class: "label", text: dim === "prompt" ? value : dimValue(dim, value) });
    if (dim !== "prompt") return [node];
    const text = state.exp.prompt_texts[value] || "";
    return [node, el("div", { class: "sub", title: text, text })];
  }

  function gridTable() {
    const rowValues = visibleValues(state.rows);
    const colValues = state.cols === NONE ? [null] : visibleValues(state.cols);
    if (!rowValues.length || !colValues.length) {
      return el("p", { class: "empty", testid: "grid-empty", text: "Every value is filtered out: tick some filters." });
    }
    const corner = state.cols === NONE ? state.rows : `${state.rows} ╲ ${state.cols}`;
    const head = el(
      "tr",
      {},
      el("th", { class: "corner", text: corner }),
      colValues.map((c) =>
        el("th", { scope: "col", testid: "grid-col" }, c === null ? "" : headerLabel(state.cols, c)),
      ),
    );
    const body = rowValues.map((r) =>
      el(
        "tr",
        {},
        el("th", { scope: "row", testid: "grid-row" }, headerLabel(state.rows, r)),
        colValues.map((c) => {
          const values = { ...state.fixed, [state.rows]: r };
          if (c !== null) values[state.cols] = c;
          return el("td", {}, cell(findRun(values), values));
        }),
      ),
    );
    return el("table", { class: "grid", testid: "grid" }, el("thead", {}, head), el("tbody", {}, body));
  }

  /** The input strip over the grid: the inputs of the runs the grid shows, with the rows/columns using each. */
  function gridInputs() {
    const rowValues = visibleValues(state.rows);
    const colValues = state.cols === NONE ? [null] : visibleValues(state.cols);
    const placed = [];
    rowValues.forEach((r, row) => {
      colValues.forEach((c, col) => {
        const values = { ...state.fixed, [state.rows]: r };
        if (c !== null) values[state.cols] = c;
        const run = findRun(values);
        if (run) placed.push({ run, row, col });
      });
    });
    const label = (dim, v) => (v === null ? "" : dim === "prompt" ? v : dimValue(dim, v));
    return inputsStrip(placed, rowValues.map((r) => label(state.rows, r)), colValues.map((c) => label(state.cols, c)));
  }

  // Grid cells show server-made thumbnails (the next size up from what is displayed, times the pixel ratio): a page
  // of full-size 1024x1024 PNGs would be ~1.5 MB a cell. Every other view shows the full image.
  const THUMB_SIZES = [64, 128, 256, 512, 1024];

  function thumbUrl(url) {
    const want = state.thumb * (window.devicePixelRatio || 1);
    const size = THUMB_SIZES.find((s) => s >= want) || THUMB_SIZES[THUMB_SIZES.length - 1];
    return `${url.replace(/^\/files\//, "/thumbs/")}?size=${size}`;
  }

  function describe(values) {
    return dimensions()
      .map((d) => dimValue(d, values[d]))
      .join(", ");
  }

  function cell(run, values) {
    if (!run || !run.image_url) {
      const why = !run ? "no run" : run.status === "done" ? "image missing" : run.status;
      return el("div", { class: "missing", testid: "grid-missing", title: (run && run.error) || describe(values) }, why);
    }
    const img = el("img", {
      src: thumbUrl(run.image_url),
      alt: describe(run.dims),
      title: `${describe(run.dims)}\n(click for the full record)`,
      testid: "grid-image",
      dataset: { runId: run.run_id, full: run.image_url },
      draggable: "false",
      onclick: () => openRecord(run.run_id),
    });
    return el(
      "figure",
      { class: "cell" },
      img,
      el("figcaption", { testid: "grid-caption" }, metricsLine(run)),
    );
  }

  // Input images (vl_image, style_image, neutral_image, init_image) ---------------------------------------------

  /** "" when every shown run uses the input, else which rows or columns do (the shorter, when both name whole
   * rows or columns), else how many cells. ``names``: what rows and columns are called ("" = just the labels). */
  function usageText(used, present, rowLabels, colLabels, names = ["rows", "columns"]) {
    if (used.size === present.size) return "";
    const options = [];
    [[0, rowLabels], [1, colLabels]].forEach(([axis, labels]) => {
      const chosen = [...new Set([...used].map((key) => Number(key.split(",")[axis])))].sort((a, b) => a - b);
      const whole = [...present].every((key) => !chosen.includes(Number(key.split(",")[axis])) || used.has(key));
      const name = names[axis];
      const text = chosen.map((i) => labels[i]).join(", ");
      if (whole) options.push([chosen.length, name ? `used by ${name}: ${text}` : `used by ${text}`]);
    });
    if (options.length) return options.sort((a, b) => a[0] - b[0])[0][1];
    return `used by ${used.size} of ${present.size} cells`;
  }

  /** A strip of the distinct inputs of ``placed`` ({run, row, col}), or null when they have none. */
  function inputsStrip(placed, rowLabels, colLabels, names) {
    const present = new Set(placed.map((p) => `${p.row},${p.col}`));
    const uses = new Map(); // input id -> Set of "row,col"
    for (const p of placed) {
      for (const id of p.run.inputs || []) {
        if (!uses.has(id)) uses.set(id, new Set());
        uses.get(id).add(`${p.row},${p.col}`);
      }
    }
    if (!uses.size) return null;
    const ids = [...uses.keys()].sort((a, b) => a - b); // the server's order: setting, place in its list, first use
    return el(
      "section",
      { class: "inputs", testid: "inputs-strip", "aria-label": "input images of the runs shown" },
      el("h3", { text: "Inputs (checked against the sha256 recorded when planned)" }),
      el(
        "div",
        { class: "input-list" },
        ids.map((id) => inputFigure(state.exp.inputs[id], usageText(uses.get(id), present, rowLabels, colLabels, names))),
      ),
    );
  }

  /** One input: its picture (a thumbnail from the server, which re-checks the bytes) or a placeholder saying why
   * not, then setting, file name, short sha256 and usage. */
  function inputFigure(entry, usage, testid = "input", size = null) {
    const placeholder = (text, title) =>
      el("div", { class: "missing", testid: "input-missing", title: title || entry.detail || null, text });
    let picture;
    if (entry.status === "ok" && entry.url) {
      const img = el("img", {
        src: size ? `${entry.url}?size=${size}` : thumbUrl(entry.url),
        alt: `${entry.label}: ${entry.file}`,
        title: `${entry.label}: ${entry.file}\nsha256 ${entry.sha256}`,
        testid: "input-image",
        dataset: { full: entry.url, sha: entry.sha256 },
        draggable: "false",
      });
      // Changed between the listing and this request: ask the server why (409/410 with a reason) and say so.
      img.addEventListener("error", async () => {
        let why = "cannot be loaded";
        try {
          await getJSON(entry.url);
        } catch (error) {
          why = error.message;
        }
        picture.replaceWith(placeholder(/changed/.test(why) ? "changed since the run" : why, why));
      }, { once: true });
      picture = el("a", { href: entry.url, target: "_blank", rel: "noopener", class: "input-link" }, img);
    } else {
      picture = placeholder(entry.reason || entry.status);
    }
    return el(
      "figure",
      { class: "input", testid, dataset: { setting: entry.setting, sha: entry.sha256 || "", status: entry.status } },
      picture,
      el(
        "figcaption",
        { testid: "input-caption" },
        el("div", { class: "input-label", text: entry.label }),
        el("div", { class: "input-file", title: entry.file, text: entry.file }),
        el("div", { class: "mono", text: entry.sha256 ? `sha256 ${entry.sha256.slice(0, 8)}` : "no sha256 recorded" }),
        usage ? el("div", { class: "input-usage", text: usage }) : null,
      ),
    );
  }

  // Pairwise views: slider, A/B toggle, diff overlay ---------------------------------------------------------------

  function pairRuns() {
    const a = findRun({ ...state.fixed, [state.dim]: state.a });
    const b = findRun({ ...state.fixed, [state.dim]: state.b });
    return [a, b];
  }

  function renderPair() {
    const names = dimensions();
    const values = state.exp.dimensions[state.dim];
    const options = values.map((v) => [v, optionText(state.dim, v)]);
    const dimSelect = select("pair-dim", names.map((d) => [d, d]), state.dim, (v) => {
      state.dim = v;
      const vs = state.exp.dimensions[v];
      state.a = vs[0];
      state.b = vs[1] ?? vs[0];
      render();
    }, "compare");
    const aSelect = select("pair-a", options, state.a, (v) => {
      state.a = v;
      render();
    }, "A");
    const bSelect = select("pair-b", options, state.b, (v) => {
      state.b = v;
      render();
    }, "B");
    const swap = el("button", {
      type: "button", testid: "pair-swap", text: "swap A ⇄ B",
      onclick: () => {
        [state.a, state.b] = [state.b, state.a];
        render();
      },
    });
    const size = el("input", {
      type: "range", min: 128, max: 1536, step: 32, value: state.size, testid: "stage-size", "aria-label": "size",
      oninput: (e) => {
        state.size = Number(e.target.value);
        $("view").style.setProperty("--stage", `${state.size}px`);
      },
      onchange: () => writeHash(),
    });
    const [runA, runB] = pairRuns();
    const records = el(
      "div",
      { class: "buttons" },
      el("button", { type: "button", testid: "record-a", text: "record A", disabled: !runA,
        onclick: () => openRecord(runA.run_id) }),
      el("button", { type: "button", testid: "record-b", text: "record B", disabled: !runB,
        onclick: () => openRecord(runB.run_id) }),
    );
    fill($("controls"),
      el("h3", { text: "Compare" }),
      control("dimension", dimSelect),
      control("A", aSelect),
      control("B", bSelect),
      swap,
      el("h3", { text: "Fixed" }),
      fixedSelects([state.dim]),
      el("h3", { text: "Display" }),
      control("size", size),
      state.view === "diff" ? diffControls() : null,
      el("h3", { text: "Records" }),
      records,
    );
    $("view").style.setProperty("--stage", `${state.size}px`);
    const problems = [["A", runA, state.a], ["B", runB, state.b]]
      .filter(([, run]) => !run || !run.image_url)
      .map(([which, run, v]) => `${which} (${dimValue(state.dim, v)}): ${!run ? "no run" : run.status === "done" ? "image missing" : run.status}`);
    if (problems.length) {
      $("view").replaceChildren(el("p", { class: "empty", testid: "pair-missing", text: `No image for ${problems.join("; ")}` }));
      return;
    }
    const stage = { slider: sliderStage, ab: abStage, diff: diffStage }[state.view](runA, runB);
    const placed = [{ run: runA, row: 0, col: 0 }, { run: runB, row: 0, col: 1 }];
    fill($("view"),
      stage,
      el(
        "div",
        { class: "pair-metrics" },
        el("div", { testid: "metrics-a" }, el("b", { text: `A · ${dimValue(state.dim, state.a)}` }), " ", metricsLine(runA)),
        el("div", { testid: "metrics-b" }, el("b", { text: `B · ${dimValue(state.dim, state.b)}` }), " ", metricsLine(runB)),
      ),
      inputsStrip(placed, [""], ["A", "B"], ["", ""]),
    );
  }

  function sliderStage(runA, runB) {
    const under = el("img", { src: runB.image_url, testid: "slider-b", alt: `B: ${describe(runB.dims)}`, draggable: "false" });
    const over = el("img", { src: runA.image_url, testid: "slider-a", class: "over", alt: `A: ${describe(runA.dims)}`, draggable: "false" });
    const divider = el("div", {
      class: "divider", testid: "slider-divider", role: "slider", tabindex: 0,
      "aria-label": "divider: share of the width showing A", "aria-valuemin": 0, "aria-valuemax": 100,
    });
    const stage = el(
      "div",
      { class: "stage slider", testid: "slider-stage" },
      under,
      over,
      divider,
      el("span", { class: "tag left", text: `A · ${dimValue(state.dim, state.a)}` }),
      el("span", { class: "tag right", text: `B · ${dimValue(state.dim, state.b)}` }),
    );
    const place = (x) => {
      state.split = clamp(x, 0, 100);
      // A covers the left part of the stage: clip its right side away.
      over.style.clipPath = `inset(0 ${100 - state.split}% 0 0)`;
      divider.style.left = `${state.split}%`;
      divider.setAttribute("aria-valuenow", String(Math.round(state.split)));
    };
    const fromPointer = (event) => {
      const box = stage.getBoundingClientRect();
      place(((event.clientX - box.left) / box.width) * 100);
    };
    let dragging = false;
    stage.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      dragging = true;
      stage.setPointerCapture(event.pointerId);
      fromPointer(event);
      divider.focus();
      event.preventDefault();
    });
    stage.addEventListener("pointermove", (event) => {
      if (dragging) fromPointer(event);
    });
    const stop = () => {
      if (!dragging) return;
      dragging = false;
      writeHash(); // once per drag: browsers throttle frequent history updates
    };
    stage.addEventListener("pointerup", stop);
    stage.addEventListener("pointercancel", stop);
    divider.addEventListener("keydown", (event) => {
      const step = event.shiftKey ? 10 : 1;
      const moves = { ArrowLeft: -step, ArrowDown: -step, ArrowRight: step, ArrowUp: step, PageDown: -10, PageUp: 10 };
      if (event.key in moves) place(state.split + moves[event.key]);
      else if (event.key === "Home") place(0);
      else if (event.key === "End") place(100);
      else return;
      event.preventDefault();
      writeHash();
    });
    place(state.split);
    return stage;
  }

  function abStage(runA, runB) {
    const runs = { A: runA, B: runB };
    const labels = { A: `A · ${dimValue(state.dim, state.a)}`, B: `B · ${dimValue(state.dim, state.b)}` };
    const img = el("img", { testid: "ab-image", draggable: "false" });
    const label = el("span", { class: "tag left", testid: "ab-label" });
    const show = (which) => {
      state.shown = which;
      img.src = runs[which].image_url;
      img.alt = `${which}: ${describe(runs[which].dims)}`;
      img.dataset.shown = which;
      label.textContent = labels[which];
      button.setAttribute("aria-label", `${labels[which]} shown; click to show ${which === "A" ? "B" : "A"}`);
    };
    const button = el("button", {
      type: "button", class: "stage ab", testid: "ab-toggle",
      onclick: () => {
        show(state.shown === "A" ? "B" : "A");
        writeHash();
      },
    }, img, label, el("span", { class: "tag right hint", text: "click or Space to swap" }));
    new Image().src = (state.shown === "A" ? runB : runA).image_url; // preload: swapping should not flicker
    show(state.shown);
    return button;
  }

  function diffUrls(runA, runB) {
    const exp = enc(state.exp.name);
    const png = new URLSearchParams({ a: runA.run_id, b: runB.run_id, mode: state.mode, threshold: state.threshold, gain: state.gain });
    const stats = new URLSearchParams({ a: runA.run_id, b: runB.run_id, threshold: state.threshold });
    return { png: `/api/experiments/${exp}/diff?${png}`, stats: `/api/experiments/${exp}/diff-stats?${stats}` };
  }

  let diffTimer = null;

  function diffControls() {
    const mode = select("diff-mode", DIFF_MODES.map((m) => [m, m]), state.mode, (v) => {
      state.mode = v;
      render();
    }, "mode");
    const refresh = () => {
      clearTimeout(diffTimer);
      diffTimer = setTimeout(() => {
        updateDiff();
        writeHash();
      }, 120);
    };
    const range = (testid, min, max, step, key, label) => {
      const output = el("output", { text: String(state[key]) });
      const input = el("input", {
        type: "range", min, max, step, value: state[key], testid, "aria-label": label,
        oninput: (e) => {
          state[key] = Number(e.target.value);
          output.textContent = String(state[key]);
          if (key === "opacity") {
            const overlay = document.querySelector('[data-testid="diff-image"]');
            if (overlay) overlay.style.opacity = String(state.opacity / 100);
            writeHash();
          } else refresh();
        },
      });
      return el("label", { class: "control" }, el("span", {}, `${label} `, output), input);
    };
    const gain = range("diff-gain", 1, 64, 1, "gain", "gain (absolute)");
    gain.querySelector("input").disabled = state.mode !== "absolute";
    return [
      el("h3", { text: "Diff" }),
      control("mode", mode),
      range("diff-threshold", 0, 255, 1, "threshold", "threshold (levels)"),
      gain,
      range("diff-opacity", 0, 100, 1, "opacity", "opacity over A (%)"),
    ];
  }

  const LEGENDS = {
    highlight: (t) => `A in grey; red where a channel differs by more than ${t} levels.`,
    absolute: () => `|A − B| per channel × gain ${state.gain}: black where equal.`,
    heatmap: () => "mean |A − B| over channels, inferno colours: black = equal, pale yellow = the largest difference.",
  };

  function diffStage(runA, runB) {
    const base = el("img", { src: runA.image_url, testid: "diff-base", alt: `A: ${describe(runA.dims)}`, draggable: "false" });
    const overlay = el("img", { testid: "diff-image", class: "over", alt: "difference picture", draggable: "false" });
    overlay.style.opacity = String(state.opacity / 100);
    const stage = el(
      "div",
      { class: "stage diff", testid: "diff-stage" },
      base,
      overlay,
      el("span", { class: "tag left wide", text: `A · ${dimValue(state.dim, state.a)} vs B · ${dimValue(state.dim, state.b)}` }),
    );
    const wrap = el(
      "div",
      { class: "diff-wrap" },
      stage,
      el("p", { class: "small", testid: "diff-legend" }),
      el("p", { class: "small", testid: "diff-stats" }),
    );
    queueMicrotask(updateDiff);
    return wrap;
  }

  /** Ask the server for the diff numbers, then the picture (so an error shows as text, not a broken image). */
  async function updateDiff() {
    const overlay = document.querySelector('[data-testid="diff-image"]');
    if (!overlay) return;
    const [runA, runB] = pairRuns();
    const urls = diffUrls(runA, runB);
    const statsNode = document.querySelector('[data-testid="diff-stats"]');
    document.querySelector('[data-testid="diff-legend"]').textContent = LEGENDS[state.mode](state.threshold);
    try {
      const s = await getJSON(urls.stats);
      statsNode.textContent =
        `${s.width}×${s.height}: ${(s.changed_fraction * 100).toFixed(2)}% of pixels changed (> ${s.threshold} levels); ` +
        `max channel difference ${s.max_abs_diff}, mean ${s.mean_abs_diff.toFixed(2)}; heatmap top = ${s.max_mean_diff.toFixed(1)} levels`;
      overlay.src = urls.png;
    } catch (error) {
      statsNode.textContent = `No diff: ${error.message}`;
      overlay.removeAttribute("src");
    }
  }

  // ---- the record panel ----------------------------------------------------------------------------------------

  function section(title, ...content) {
    return el("section", { class: "rec-section" }, el("h3", { text: title }), ...content);
  }

  function table(testid, rows) {
    return el(
      "table",
      { class: "kv", testid },
      el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v })))),
    );
  }

  const plain = (v) => (v === null || v === undefined ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v));

  /** The text in ``pre`` with newlines, spaces and tabs marked (↵ · →) when ``visible``. */
  function showWhitespace(pre, text, visible) {
    pre.replaceChildren();
    if (!visible) {
      pre.textContent = text;
      return;
    }
    const marks = { "\n": "↵", " ": "·", "\t": "→" };
    for (const part of text.split(/([\n \t])/)) {
      if (part in marks) {
        pre.append(el("span", { class: "ws", text: marks[part] }));
        if (part === "\n") pre.append("\n");
      } else if (part) pre.append(part);
    }
  }

  async function openRecord(runId) {
    let data;
    try {
      data = await getJSON(`/api/experiments/${enc(state.exp.name)}/runs/${enc(runId)}`);
    } catch (error) {
      showError(error.message);
      return;
    }
    state.record = runId;
    writeHash();
    const record = data.record || {};
    const formatted = el("pre", { class: "formatted", testid: "record-formatted" });
    const formattedText = record.formatted_prompt ?? "";
    const toggle = el("input", {
      type: "checkbox", checked: true, testid: "record-ws",
      onchange: (e) => showWhitespace(formatted, formattedText, e.target.checked),
    });
    showWhitespace(formatted, formattedText, true);
    const metrics = Object.entries(data.metrics || {}).map(([name, value]) => {
      const spec = state.exp.metrics.find((m) => m.name === name);
      const better = spec && spec.higher_is_better !== null ? (spec.higher_is_better ? " ↑" : " ↓") : "";
      return [`${name}${better}`, plain(value)]; // full precision: this is the record
    });
    const sigmas = Array.isArray(record.sigmas) ? record.sigmas : [];
    const summary = table("record-summary", [
      ["experiment", data.experiment],
      ["run", data.run_id],
      ["prompt id", `${data.prompt_id} (${data.category})`],
      ["variables", Object.entries(data.variables || {}).map(([k, v]) => `${k}=${valueText(v)}`).join(", ") || "—"],
      ["status", data.error ? `${data.status}: ${data.error}` : data.status],
      ["s per image, batched", data.seconds_per_image_batched === null ? "—" : `${formatNumber(data.seconds_per_image_batched)} s`],
      ["tokens", plain(data.token_count)],
      ["image", data.image_path || "—"],
    ]);
    const seed = el("span", { testid: "record-seed", text: plain(record.seed ?? data.seed) });
    const versions = Object.entries(record.versions || {}).map(([k, v]) => [k, plain(v)]);
    const model = [
      ["model path", plain(record.model_path)],
      ["model fingerprint", plain(record.model_fingerprint)],
      ...Object.entries(record.devices || {}).map(([k, v]) => [`${k} device`, plain(v)]),
    ];
    const image = data.image_url
      ? el("a", { href: data.image_url, target: "_blank", rel: "noopener", title: "open the image" },
        el("img", { class: "rec-image", src: data.image_url, testid: "record-image", alt: data.run_id }))
      : el("div", { class: "missing", text: "no image" });
    $("record-title").textContent = `${data.experiment} · ${data.run_id}`;
    const inputs = data.inputs || [];
    $("record-body").replaceChildren(
      el("div", { class: "rec-top" }, image, summary),
      inputs.length
        ? section(
          "Input images (checked against the sha256 recorded when planned)",
          el("div", { class: "input-list", testid: "record-inputs" }, inputs.map((e) => inputFigure(e, "", "record-input", 256))),
        )
        : "",
      section("Prompt", el("p", { class: "prompt", testid: "record-prompt", text: data.prompt_text })),
      section(
        "Formatted prompt (what the encoder saw)",
        el("label", { class: "check" }, toggle, el("span", { text: "show whitespace (↵ newline, · space, → tab)" })),
        formatted,
      ),
      section(
        "Sampling",
        el("p", {}, "seed ", seed, ` · ${sigmas.length ? sigmas.length - 1 : "?"} steps · shift ${plain(record.shift)}`),
        el("p", { class: "mono", testid: "record-sigmas", text: sigmas.length ? sigmas.map(String).join(", ") : "—" }),
      ),
      section("Metrics", metrics.length ? table("record-metrics", metrics) : el("p", { class: "muted", text: "none" })),
      section("Parameters", table("record-params", Object.entries(data.params || {}).map(([k, v]) => [k, plain(v)]))),
      section("Model", table("record-model", model)),
      section("Versions", table("record-versions", versions)),
      el("details", {}, el("summary", { text: "Full record (JSON)" }),
        el("pre", { class: "json", testid: "record-json", text: JSON.stringify(record, null, 2) })),
    );
    $("record").hidden = false;
    document.querySelector("#record .close").focus();
  }

  function closeRecord() {
    if ($("record").hidden) return;
    $("record").hidden = true;
    state.record = null;
    writeHash();
  }

  // ---- start ---------------------------------------------------------------------------------------------------

  async function start() {
    for (const tab of document.querySelectorAll(".tabs [data-view]")) {
      tab.addEventListener("click", () => {
        state.view = tab.dataset.view;
        render();
      });
    }
    $("experiment-select").addEventListener("change", (e) => {
      if (e.target.value) go({ exp: e.target.value, view: state.view });
      else go({});
    });
    $("record").addEventListener("click", (e) => {
      if (e.target === $("record")) closeRecord();
    });
    document.querySelector("#record .close").addEventListener("click", closeRecord);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape") closeRecord();
    });
    window.addEventListener("hashchange", route);
    try {
      const listing = await getJSON("/api/experiments");
      state.experiments = listing.experiments;
      state.root = listing.root;
    } catch (error) {
      showError(`cannot list experiments: ${error.message}`);
      return;
    }
    await route();
    document.body.dataset.ready = "true";
  }

  start();
})();
