// llm-dit rating page: blind A/B judgements. The server sends only opaque image ids and URLs (no labels, no run
// ids), already shuffled and with random sides; each judgement is POSTed with this page's session token.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const token = document.querySelector('meta[name="rate-token"]').getAttribute("content");
  const state = { experiment: "", axis: "", pairs: [], index: 0, rated: 0, busy: false };

  function showError(text) {
    const node = $("rate-error");
    node.textContent = text;
    node.hidden = !text;
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail || `${response.status}`);
    return body;
  }

  function option(value, text) {
    const node = document.createElement("option");
    node.value = value;
    node.textContent = text;
    return node;
  }

  function setButtons(enabled) {
    for (const id of ["rate-left", "rate-tie", "rate-right"]) $(id).disabled = !enabled;
  }

  function render() {
    const total = state.pairs.length;
    $("rate-progress").textContent = `${state.rated} rated, ${Math.min(state.index, total)} / ${total}`;
    const pair = state.pairs[state.index];
    $("rate-stage").hidden = !pair;
    setButtons(Boolean(pair) && !state.busy);
    if (!pair) {
      $("rate-message").textContent = total ? `All ${total} pairs done. Thank you.` : "No pairs to rate here.";
      return;
    }
    $("rate-message").textContent = "";
    $("rate-left-img").src = pair.left_url;
    $("rate-right-img").src = pair.right_url;
    const next = state.pairs[state.index + 1];
    if (next) for (const url of [next.left_url, next.right_url]) new Image().src = url; // preload
  }

  // Only the rating routes: the experiment payload would bring the labels along.
  async function loadPairs() {
    const query = state.axis ? `?axis=${encodeURIComponent(state.axis)}` : "";
    const body = await getJson(`/api/rate/${encodeURIComponent(state.experiment)}/pairs${query}`);
    state.pairs = body.pairs;
    state.index = 0;
    render();
    return body;
  }

  async function chooseExperiment(name) {
    state.experiment = name;
    state.axis = "";
    const body = await loadPairs();
    const select = $("rate-axis");
    select.replaceChildren(option("", "every axis"), ...body.axes.map((axis) => option(axis, axis)));
  }

  async function judge(choice) {
    const pair = state.pairs[state.index];
    if (!pair || state.busy) return;
    const rater = $("rate-rater").value.trim();
    if (!rater) {
      showError("Enter your name first: each judgement records who made it.");
      $("rate-rater").focus();
      return;
    }
    state.busy = true;
    setButtons(false);
    try {
      const response = await fetch(`/api/rate/${encodeURIComponent(state.experiment)}/judgements`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Rate-Token": token },
        body: JSON.stringify({ left: pair.left, right: pair.right, choice, rater }),
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.detail || `${response.status}`);
      showError("");
      state.index += 1;
      state.rated += 1;
    } catch (error) {
      showError(`Not recorded: ${error.message}`);
    } finally {
      state.busy = false;
      render();
      document.body.dataset.rated = String(state.rated);
    }
  }

  const KEYS = { 1: "left", ArrowLeft: "left", 2: "tie", ArrowDown: "tie", 3: "right", ArrowRight: "right" };

  async function start() {
    $("rate-left").addEventListener("click", () => judge("left"));
    $("rate-tie").addEventListener("click", () => judge("tie"));
    $("rate-right").addEventListener("click", () => judge("right"));
    document.addEventListener("keydown", (event) => {
      if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
      const choice = KEYS[event.key];
      if (choice) {
        event.preventDefault();
        judge(choice);
      }
    });
    $("rate-experiment").addEventListener("change", (event) => {
      chooseExperiment(event.target.value).catch((e) => showError(e.message));
    });
    $("rate-axis").addEventListener("change", (event) => {
      state.axis = event.target.value;
      loadPairs().catch((e) => showError(e.message));
    });
    try {
      const listing = await getJson("/api/experiments");
      const names = listing.experiments.map((row) => row.name);
      $("rate-experiment").replaceChildren(...names.map((name) => option(name, name)));
      if (names.length) await chooseExperiment(names[0]);
      else render();
    } catch (error) {
      showError(error.message);
    }
    document.body.dataset.ready = "true";
  }

  start();
})();
