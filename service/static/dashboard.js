/* Compression service dashboard: vanilla JS, no dependencies, no network beyond this origin.
 *
 * Every page is a server-rendered shell; this script fills it from the REST API under /api/v1,
 * authenticated by the HttpOnly cookie set at sign-in (the key never reaches this script).
 * Live updates come from Server-Sent Events. All text from the API is inserted with
 * textContent, never as HTML.
 */
"use strict";

const API = "/api/v1";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/* Updates the page applied, for tests and for debugging: {id, state, stage, progress,
 * receivedAt (ms, page clock), recordedAt (ms, the record's own update time, if it has one)}. */
window.dashboard = { updates: [], ready: false };

/* ---------- small helpers ---------- */

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (selector, root = document) => root.querySelector(selector);

class ApiError extends Error {
  constructor(status, body) {
    super(describeError(body) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** Call the API with the sign-in cookie; on 401 go back to the sign-in page. */
async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: { Accept: "application/json" }, ...options };
  if (options.json !== undefined) {
    init.body = JSON.stringify(options.json);
    init.headers = { ...init.headers, "Content-Type": "application/json" };
    delete init.json;
  }
  const response = await fetch(API + path, init);
  if (response.status === 401) {
    signedOut();
    throw new ApiError(401, { detail: "signed out" });
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function signedOut() {
  const next = location.pathname + location.search;
  location.assign("/signin?next=" + encodeURIComponent(next));
}

/** A readable sentence from an API error body (FastAPI `detail` string or list). */
function describeError(body) {
  if (!body) return "";
  if (typeof body === "string") return body.slice(0, 300);
  const detail = body.detail !== undefined ? body.detail : body.error || body.message;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  if (detail && typeof detail === "object") return detail.message || JSON.stringify(detail);
  return "";
}

function showNotice(id, text) {
  const node = document.getElementById(id);
  if (node) node.textContent = text || "";
}

/** Accept a bare list or a {jobs|items|models|workers: [...]} wrapper. */
function listOf(body, ...keys) {
  if (Array.isArray(body)) return body;
  for (const key of [...keys, "items", "data", "results"]) {
    if (body && Array.isArray(body[key])) return body[key];
  }
  return [];
}

function parseTime(value) {
  if (value === null || value === undefined || value === "") return null;
  if (typeof value === "number") return value > 1e12 ? value : value * 1000;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? null : ms;
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) {
    return "–";
  }
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return "–";
  let value = Number(n);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(value) >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
  return `${value.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function fmtNumber(n, digits = 2) {
  if (n === null || n === undefined || n === "" || !Number.isFinite(Number(n))) return "–";
  const value = Number(n);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return value.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function fmtClock(ms) {
  if (ms === null || ms === undefined) return "";
  return new Date(ms).toLocaleTimeString("en-GB", { hour12: false });
}

function methodsOf(job) {
  if (Array.isArray(job.methods) && job.methods.length) return job.methods;
  const steps = (job.recipe && job.recipe.steps) || [];
  return steps.map((s) => s.method);
}

function modelLabel(model) {
  if (!model) return "–";
  if (typeof model === "string") return model;
  return model.name || model.path || model.id || JSON.stringify(model);
}

/** Seconds the job has run (or ran), and an ETA from its progress rate. */
function timing(job, now = Date.now()) {
  const started = parseTime(job.started_at);
  const finished = parseTime(job.finished_at);
  const elapsed = started === null ? null : ((finished || now) - started) / 1000;
  let eta = null;
  const p = Number(job.progress) || 0;
  if (job.state === "running" && elapsed !== null && p >= 0.02 && p < 1) {
    eta = (elapsed * (1 - p)) / p;
  } else if (TERMINAL.has(job.state)) {
    eta = 0;
  }
  return { elapsed, eta };
}

function stateBadge(node, state) {
  node.className = `state state-${state || "queued"}`;
  node.textContent = state || "–";
}

function setProgress(container, job) {
  const p = Math.max(0, Math.min(1, Number(job.progress) || 0));
  const shown = job.state === "succeeded" ? 1 : p;
  const pct = Math.round(shown * 100);
  const bar = container.querySelector(".bar");
  bar.classList.toggle("done", job.state === "succeeded");
  bar.classList.toggle("failed", job.state === "failed");
  bar.classList.toggle("cancelled", job.state === "cancelled");
  bar.firstElementChild.style.width = `${pct}%`;
  container.querySelector(".pct").textContent = `${pct}%`;
  container.setAttribute("aria-valuenow", String(pct));
  container.dataset.progress = String(shown);
  container.dataset.state = job.state || "";
}

function progressWidget(label) {
  return el("div", { class: "progress", role: "progressbar", "aria-label": label,
                     "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0 },
            el("div", { class: "bar" }, el("span", { style: "width:0%" })),
            el("span", { class: "pct", text: "0%" }));
}

/** Normalize one SSE payload to a job record (or a {deleted: id} marker). */
function recordFromEvent(data) {
  if (!data || typeof data !== "object") return null;
  if (data.job && typeof data.job === "object") return data.job;
  if (data.record && typeof data.record === "object") return data.record;
  const deleted = data.deleted === true || data.type === "deleted" || data.event === "deleted";
  if (deleted && (data.id || data.job_id)) return { deleted: data.id || data.job_id };
  return data.id ? data : null;
}

/** True when `record` is an older copy than `known` (both carry the store's updated_at). */
function isOlder(record, known) {
  const a = parseTime(record.updated_at), b = parseTime(known.updated_at);
  return a !== null && b !== null && a < b;
}

function noteUpdate(job) {
  window.dashboard.updates.push({
    id: job.id, state: job.state, stage: job.stage, progress: job.progress,
    receivedAt: Date.now(), recordedAt: parseTime(job.updated_at),
  });
  if (window.dashboard.updates.length > 5000) window.dashboard.updates.shift();
}

/** Open an EventSource and route every job record it carries to `onRecord`. */
function subscribe(path, onRecord, statusNode, onReopen = null) {
  const source = new EventSource(API + path, { withCredentials: true });
  let broken = false;
  const handle = (event) => {
    let data;
    try { data = JSON.parse(event.data); } catch { return; }
    const records = Array.isArray(data) ? data : [data];
    for (const item of records) {
      const job = recordFromEvent(item);
      if (job) onRecord(job, event.type);
    }
  };
  source.onmessage = handle;
  for (const name of ["job", "update", "snapshot", "progress", "state", "deleted", "end"]) {
    source.addEventListener(name, handle);
  }
  source.onopen = () => {
    if (!window.dashboard.streamOpenedAt) window.dashboard.streamOpenedAt = Date.now();
    if (statusNode) statusNode.textContent = "live";
    // Changes made while the stream was down are not replayed: catch up from the API.
    if (broken && onReopen) onReopen();
    broken = false;
  };
  source.onerror = () => {
    broken = true;
    if (statusNode) statusNode.textContent = "reconnecting…";
    // A closed stream after sign-out comes back as an error; check who we are.
    if (source.readyState === EventSource.CLOSED) api("/me").catch(() => {});
  };
  return source;
}

/* ---------- charts (inline SVG) ---------- */

const SVG_NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

/** Vertical bar chart of (label, value) pairs, with an optional dashed reference line. */
function barChart(items, { yMax = null, yLabel = "", reference = null, format = (v) => v } = {}) {
  const width = 720, height = 240, left = 48, right = 12, top = 12, bottom = 36;
  const plotW = width - left - right, plotH = height - top - bottom;
  const top_ = yMax !== null ? yMax : niceMax(Math.max(...items.map((i) => i.value), 0));
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
                             "aria-label": `${yLabel} per layer, ${items.length} layers` });
  for (let k = 0; k <= 4; k += 1) {
    const v = (top_ * k) / 4, y = top + plotH - (plotH * k) / 4;
    chart.append(svg("line", { class: "gridline", x1: left, x2: width - right, y1: y, y2: y }));
    chart.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, format(v)));
  }
  const step = plotW / Math.max(items.length, 1);
  const barW = Math.max(1, step * 0.8);
  items.forEach((item, i) => {
    const h = top_ > 0 ? (plotH * Math.min(item.value, top_)) / top_ : 0;
    const rect = svg("rect", { class: "bar-rect", x: left + i * step + (step - barW) / 2,
                               y: top + plotH - h, width: barW, height: h });
    rect.append(svg("title", {}, `${item.label}: ${format(item.value)}`));
    chart.append(rect);
  });
  if (reference !== null && top_ > 0) {
    const y = top + plotH - (plotH * Math.min(reference, top_)) / top_;
    chart.append(svg("line", { class: "target", x1: left, x2: width - right, y1: y, y2: y }));
  }
  chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: top + plotH, y2: top + plotH }));
  chart.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: top + plotH }));
  chart.append(svg("text", { x: left + plotW / 2, y: height - 6, "text-anchor": "middle" },
                   `layers in model order (${items.length}); hover a bar for its name`));
  return chart;
}

/** Line chart of y values over x (loss curve). */
function lineChart(points, { xLabel = "step", yLabel = "loss" } = {}) {
  const width = 720, height = 240, left = 56, right = 12, top = 12, bottom = 36;
  const plotW = width - left - right, plotH = height - top - bottom;
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const xMin = Math.min(...xs), xMax = Math.max(...xs);
  let yMin = Math.min(...ys), yMax = Math.max(...ys);
  if (yMin === yMax) { yMin -= 1; yMax += 1; }
  const sx = (x) => left + (xMax === xMin ? plotW / 2 : ((x - xMin) / (xMax - xMin)) * plotW);
  const sy = (y) => top + plotH - ((y - yMin) / (yMax - yMin)) * plotH;
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
                             "aria-label": `${yLabel} over ${xLabel}, ${points.length} points, from ` +
                               `${fmtNumber(ys[0], 3)} to ${fmtNumber(ys[ys.length - 1], 3)}` });
  for (let k = 0; k <= 4; k += 1) {
    const v = yMin + ((yMax - yMin) * k) / 4, y = sy(v);
    chart.append(svg("line", { class: "gridline", x1: left, x2: width - right, y1: y, y2: y }));
    chart.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, fmtNumber(v, 3)));
  }
  const d = points.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`);
  chart.append(svg("path", { class: "line", d: d.join(" ") }));
  chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: top + plotH, y2: top + plotH }));
  chart.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: top + plotH }));
  chart.append(svg("text", { x: left, y: height - 6 }, `${xLabel} ${xMin}`));
  chart.append(svg("text", { x: width - right, y: height - 6, "text-anchor": "end" }, `${xLabel} ${xMax}`));
  return chart;
}

/** A collapsed data table under a chart, so its numbers are reachable without a mouse. */
function dataTable(caption, headers, rows) {
  return el("details", {},
    el("summary", { text: `${caption} as a table` }),
    el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", { text: c }))))))));
}

/* ---------- page: jobs ---------- */

function jobsPage() {
  const body = $("#jobs-body");
  const filter = $("#state-filter");
  const jobs = new Map();
  const rows = new Map();
  const params = new URLSearchParams(location.search);
  filter.value = params.get("state") || "";

  function rowFor(job) {
    let row = rows.get(job.id);
    if (!row) {
      const link = el("a", { href: `/jobs/${encodeURIComponent(job.id)}` });
      row = el("tr", { dataset: { jobId: job.id } },
        el("td", { "data-label": "Name", class: "c-name" }, link),
        el("td", { "data-label": "Model", class: "c-model" }),
        el("td", { "data-label": "Methods", class: "c-methods" }),
        el("td", { "data-label": "State" }, el("span", { class: "state" })),
        el("td", { "data-label": "Stage", class: "c-stage" }),
        el("td", { "data-label": "Progress" }, progressWidget(`Progress of job ${job.name || job.id}`)),
        el("td", { "data-label": "Elapsed", class: "num c-elapsed" }),
        el("td", { "data-label": "ETA", class: "num c-eta" }));
      rows.set(job.id, row);
    }
    return row;
  }

  function paint(job) {
    const row = rowFor(job);
    const link = $("a", row);
    link.textContent = job.name || job.id;
    link.title = job.id;
    $(".c-model", row).textContent = modelLabel(job.model);
    $(".c-methods", row).textContent = methodsOf(job).join(" → ") || "–";
    stateBadge($(".state", row), job.state);
    $(".c-stage", row).textContent = TERMINAL.has(job.state) ? "–" : job.stage || "–";
    setProgress($(".progress", row), job);
    row.dataset.state = job.state;
    tick(job, row);
  }

  function tick(job, row) {
    const { elapsed, eta } = timing(job);
    $(".c-elapsed", row).textContent = fmtDuration(elapsed);
    $(".c-eta", row).textContent = TERMINAL.has(job.state) ? "–" : fmtDuration(eta);
  }

  function created(job) { return parseTime(job.created_at) || 0; }

  function layout() {
    const wanted = filter.value;
    const ordered = [...jobs.values()].sort((a, b) => created(b) - created(a));
    const visible = ordered.filter((j) => !wanted || j.state === wanted);
    const current = [...body.children];
    visible.forEach((job, i) => {
      const row = rowFor(job);
      if (current[i] !== row) body.insertBefore(row, body.children[i] || null);
    });
    for (const row of [...body.children].slice(visible.length)) row.remove();
    $("#jobs-empty").hidden = visible.length > 0;
  }

  function apply(job) {
    if (job.deleted) {
      jobs.delete(job.deleted);
      const row = rows.get(job.deleted);
      if (row) row.remove();
      rows.delete(job.deleted);
      layout();
      return;
    }
    const known = jobs.get(job.id);
    // The list and the stream can overlap: never let an older copy replace a newer one.
    if (known && isOlder(job, known)) return;
    const merged = { ...(known || {}), ...job };
    jobs.set(job.id, merged);
    noteUpdate(merged);
    paint(merged);
    if (!known || known.state !== merged.state || !known.created_at) layout();
  }

  filter.addEventListener("change", () => {
    const url = new URL(location.href);
    if (filter.value) url.searchParams.set("state", filter.value);
    else url.searchParams.delete("state");
    history.replaceState(null, "", url);
    layout();
  });

  async function load() {
    try {
      const first = await api("/jobs?limit=200");
      for (const job of listOf(first, "jobs")) apply(job);
      layout();
      showNotice("jobs-error", "");
    } catch (err) {
      if (err.status !== 401) showNotice("jobs-error", `Could not load jobs: ${err.message}`);
    }
  }

  async function start() {
    // Subscribe first, then read the list, so no change falls between the two.
    subscribe("/events", apply, $("#live"), load);
    await load();
    window.dashboard.ready = true;
  }

  setInterval(() => { for (const job of jobs.values()) tick(job, rowFor(job)); }, 1000);
  start();
}

/* ---------- page: job detail ---------- */

const PLAIN_ERRORS = [
  [/out of memory|OutOfMemory|CUDA error: out of memory/i,
   "The job ran out of memory. Try a smaller calibration budget, fewer samples, or a larger machine."],
  [/timeout|timed out|JobTimeout/i, "The job ran longer than the service allows and was stopped."],
  [/worker.*(died|lost|abandon)|abandoned|heartbeat/i,
   "The worker running this job stopped unexpectedly, and the retries were used up."],
  [/safetensors|HeaderTooLarge|deserializ|invalid load key|unpickling|corrupt/i,
   "The model could not be loaded: its weight files look damaged or incomplete. Upload it again."],
  [/not found|No such file|no file named|does not exist|FileNotFound/i,
   "A file the job needed was not found: check the model name or path."],
  [/offline|hub|huggingface\.co|couldn't connect/i,
   "The model could not be fetched: the service has no internet access. Upload the model first."],
  [/validation|ValidationError|invalid/i, "The recipe was not valid for this model."],
];

function plainError(error) {
  let type = "", message = "", trace = "";
  if (typeof error === "string") {
    // The worker records "ExceptionType: message".
    const typed = /^([A-Za-z_][\w.]*): ([\s\S]*)$/.exec(error);
    if (typed) { type = typed[1]; message = typed[2]; } else message = error;
  }
  else if (error && typeof error === "object") {
    type = error.type || error.kind || error.exc_type || "";
    message = error.message || error.msg || error.detail || "";
    trace = error.traceback || error.trace || "";
  }
  const haystack = `${type} ${message}`;
  const hit = PLAIN_ERRORS.find(([pattern]) => pattern.test(haystack));
  return { headline: hit ? hit[1] : "The job failed.", type, message, trace };
}

async function jobPage() {
  const jobId = document.body.dataset.jobId;
  const base = `/jobs/${encodeURIComponent(jobId)}`;
  let job = null;
  const history = [];  // [{stage, at}] in the order this page saw them
  let lastMessage = null;
  let reportShown = false;

  /** Extend the timeline from a record: stage changes, retries, the end. */
  function track(record) {
    const at = parseTime(record.updated_at) || Date.now();
    const last = () => history[history.length - 1].stage;
    if (!history.length) {
      history.push({ stage: "queued", at: parseTime(record.created_at) });
      const startedLive = record.state === "running" && record.stage === "loading";
      if (record.state !== "queued" && record.started_at && !startedLive) {
        history.push({ stage: "started", at: parseTime(record.started_at) });
      }
    }
    if (record.state === "running" && record.stage && last() !== record.stage) {
      history.push({ stage: record.stage, at });
    } else if (record.state === "queued" && last() !== "queued") {
      history.push({ stage: "queued", at });  // a retry after a lost worker
    } else if (TERMINAL.has(record.state) && last() !== record.state) {
      history.push({ stage: record.state, at: parseTime(record.finished_at) || at });
    }
  }

  function paintTimeline(record) {
    const items = history.map((entry, i) => {
      let cls = "done";
      if (i === history.length - 1) {
        if (record.state === "running" || record.state === "queued") cls = "current";
        else if (record.state !== "succeeded") cls = "failed";
      }
      return el("li", { class: cls, dataset: { stage: entry.stage } },
        el("span", { class: "dot", "aria-hidden": "true" }),
        el("span", { text: entry.stage + (cls === "current" ? " (now)" : "") }),
        el("time", { text: entry.at ? fmtClock(entry.at) : "" }));
    });
    $("#timeline").replaceChildren(...items);
  }

  function paintFacts(record) {
    const { elapsed, eta } = timing(record);
    const facts = [
      ["ID", record.id], ["Name", record.name || "–"], ["Model", modelLabel(record.model)],
      ["Methods", methodsOf(record).join(" → ") || "–"], ["Owner", record.owner || "–"],
      ["Created", record.created_at ? new Date(parseTime(record.created_at)).toLocaleString("en-GB") : "–"],
      ["Elapsed", fmtDuration(elapsed)],
      ["ETA", TERMINAL.has(record.state) ? "–" : fmtDuration(eta)],
      ["Attempt", record.attempt ?? "–"],
    ];
    $("#job-facts").replaceChildren(...facts.flatMap(([k, v]) =>
      [el("dt", { text: k }), el("dd", { text: String(v), dataset: { fact: k.toLowerCase() } })]));
  }

  function paint(record) {
    const now = Date.now();
    track(record);
    $("#job-title").textContent = record.name ? `Job ${record.name}` : `Job ${record.id}`;
    document.title = `${record.name || record.id} · Compression service`;
    stateBadge($("#job-state"), record.state);
    $("#job-stage").textContent = TERMINAL.has(record.state) ? "" : record.stage ? `stage: ${record.stage}` : "";
    setProgress($("#job-progress"), record);
    $("#job-message").textContent = record.message || "\u00a0";
    if (record.message && record.message !== lastMessage) {
      lastMessage = record.message;
      const log = $("#messages");
      log.append(el("li", { text: `${fmtClock(now)}  ${record.message}` }));
      log.scrollTop = log.scrollHeight;
    }
    $("#recipe").textContent = JSON.stringify(record.recipe ?? {}, null, 2);
    $("#cancel-job").hidden = TERMINAL.has(record.state);
    $("#delete-job").hidden = !TERMINAL.has(record.state);
    paintFacts(record);
    paintTimeline(record);
    const failure = $("#job-failure");
    if (record.state === "failed") {
      const info = plainError(record.error || record.message);
      failure.replaceChildren(el("div", { class: "error-box", role: "alert" },
        el("p", {}, el("strong", { text: info.headline })),
        info.message ? el("p", { text: `What the worker said: ${info.message}` }) : null,
        info.type ? el("p", { class: "muted", text: `Error type: ${info.type}` }) : null,
        info.trace ? el("details", {}, el("summary", { text: "Technical details" }),
                        el("pre", { class: "json", text: info.trace })) : null));
      failure.hidden = false;
    } else if (record.state === "cancelled") {
      failure.replaceChildren(el("div", { class: "error-box" },
        el("p", { text: "This job was cancelled; nothing was published." })));
      failure.hidden = false;
    } else {
      failure.hidden = true;
    }
    if (record.state === "succeeded" && !reportShown) {
      reportShown = true;
      showReport().catch((err) => showNotice("job-error-load", `Could not load the report: ${err.message}`));
      showFiles().catch((err) => showNotice("job-error-load", `Could not list files: ${err.message}`));
    }
  }

  let source = null;
  function apply(record) {
    if (record.deleted) { location.assign("/"); return; }
    if (record.id && record.id !== jobId) return;
    if (job && isOlder(record, job)) return;
    job = { ...(job || {}), ...record };
    noteUpdate(job);
    paint(job);
    // The server ends this stream once the job is finished; don't let EventSource reconnect.
    if (TERMINAL.has(job.state) && source) { source.close(); source = null; }
  }

  $("#cancel-job").addEventListener("click", async () => {
    const button = $("#cancel-job");
    button.disabled = true;
    try {
      const updated = await api(`${base}/cancel`, { method: "POST" });
      if (updated && updated.id) apply(updated);
    } catch (err) {
      showNotice("job-error-load", `Cancel failed: ${err.message}`);
    } finally { button.disabled = false; }
  });
  $("#delete-job").addEventListener("click", async () => {
    if (!window.confirm("Delete this job and its artifact? This cannot be undone.")) return;
    try {
      await api(base, { method: "DELETE" });
      location.assign("/");
    } catch (err) { showNotice("job-error-load", `Delete failed: ${err.message}`); }
  });

  setInterval(() => { if (job) paintFacts(job); }, 1000);

  try {
    apply(await api(base));
  } catch (err) {
    if (err.status === 404) showNotice("job-error-load", "This job does not exist, or your key cannot see it.");
    else if (err.status !== 401) showNotice("job-error-load", `Could not load the job: ${err.message}`);
    window.dashboard.ready = true;
    return;
  }
  if (!TERMINAL.has(job.state)) source = subscribe(`${base}/events`, apply, null);
  window.dashboard.ready = true;

  async function showReport() {
    const report = await api(`${base}/report`);
    window.dashboard.report = report;
    const before = (report.metrics && report.metrics.before) || {};
    const after = (report.metrics && report.metrics.after) || {};
    const rows = [
      ["perplexity", "Perplexity", (v) => fmtNumber(v, 3)],
      ["parameters", "Parameters", (v) => fmtNumber(v)],
      ["nonzero_parameters", "Nonzero parameters", (v) => fmtNumber(v)],
      ["size_bytes", "Size", fmtBytes],
      ["latency_ms", "Latency (ms)", (v) => fmtNumber(v, 2)],
    ];
    $("#report-table tbody").replaceChildren(...rows.map(([key, label, fmt]) => {
      const b = before[key], a = after[key];
      let change = "–";
      if (Number.isFinite(Number(b)) && Number.isFinite(Number(a)) && Number(b) !== 0 && b !== null && a !== null) {
        const pct = ((Number(a) - Number(b)) / Number(b)) * 100;
        change = `${pct >= 0 ? "+" : ""}${pct.toFixed(1)}%`;
      }
      return el("tr", { dataset: { metric: key } }, el("th", { scope: "row", text: label }),
        el("td", { class: "num", text: fmt(b), dataset: { raw: b ?? "" } }),
        el("td", { class: "num", text: fmt(a), dataset: { raw: a ?? "" } }),
        el("td", { class: "num", text: change }));
    }));
    const bits = [];
    if (report.sparsity && report.sparsity.total !== undefined) bits.push(`total sparsity ${(report.sparsity.total * 100).toFixed(1)}%`);
    if (report.seconds_total !== undefined) bits.push(`ran ${fmtDuration(report.seconds_total)}`);
    if (report.peak_memory_bytes) bits.push(`peak memory ${fmtBytes(report.peak_memory_bytes)}`);
    $("#report-summary").textContent = bits.join(" · ");

    const charts = reportCharts(report);
    $("#charts").replaceChildren(...charts.map((c) => el("figure", { class: "chart-block", dataset: { chart: c.kind } },
      el("figcaption", { text: c.title }), c.node)));
    if (!charts.length) {
      $("#charts").replaceChildren(el("p", { class: "muted", text: "No per-layer data in this report." }));
    }
    $("#steps-table tbody").replaceChildren(...(report.steps || []).map((s, i) =>
      el("tr", {}, el("td", { text: String(i + 1) }), el("td", { text: s.method || "–" }),
         el("td", { class: "num", text: fmtNumber(s.seconds, 1) }))));
    $("#report-section").hidden = false;
  }

  async function showFiles() {
    const body = await api(`${base}/files`);
    const files = listOf(body, "files");
    const list = $("#files-list");
    list.replaceChildren(...files.map((f) => {
      const path = typeof f === "string" ? f : f.path || f.name;
      const href = f.url || f.href || `${API}${base}/files/${path.split("/").map(encodeURIComponent).join("/")}`;
      return el("li", {}, el("a", { href, download: path.split("/").pop(), text: path }),
                el("span", { class: "muted num", text: typeof f === "object" ? fmtBytes(f.bytes ?? f.size ?? f.size_bytes) : "" }));
    }));
    const artifact = $("#artifact-link");
    artifact.href = `${API}${base}/artifact`;
    $("#files-section").hidden = false;
  }
}

/** The report's charts, each {kind, title, node}: per-layer sparsity (when anything was pruned),
 * per-layer rank (when factorized), and the training loss curves (PERP, PELA). */
function reportCharts(report) {
  const charts = [];
  const sparsity = layerSeries(report.sparsity && report.sparsity.per_layer, "sparsity");
  if (sparsity.some((i) => i.value > 0)) {
    charts.push({ kind: "sparsity", title: "Per-layer sparsity", node: el("div", {},
      barChart(sparsity, { yMax: 1, yLabel: "sparsity", reference: report.sparsity.total,
                           format: (v) => `${Math.round(v * 100)}%` }),
      dataTable("Per-layer sparsity", ["Layer", "Sparsity"],
                sparsity.map((i) => [i.label, `${(i.value * 100).toFixed(2)}%`]))) });
  }
  const lowrank = report.lowrank || {};
  const ranks = layerSeries(lowrank.ranks || lowrank.per_layer, "rank");
  if (ranks.length) {
    charts.push({ kind: "rank", title: "Per-layer rank (low-rank factorization)", node: el("div", {},
      barChart(ranks, { yLabel: "rank", format: (v) => fmtNumber(v, 0) }),
      dataTable("Per-layer rank", ["Layer", "Rank"], ranks.map((i) => [i.label, String(i.value)]))) });
  }
  const curves = [
    ["loss", "Retraining loss (PERP)", lossPoints(report.retraining && report.retraining.loss_curve)],
    ["pela-loss", "Low-rank training loss (PELA)", lossPoints(lowrank.train && lowrank.train.total_loss)],
  ];
  for (const [kind, title, points] of curves) {
    if (points.length < 2) continue;
    charts.push({ kind, title, node: el("div", {}, lineChart(points),
      dataTable(title, ["Step", "Loss"], points.map((p) => [String(p.x), fmtNumber(p.y, 4)]))) });
  }
  return charts;
}

/** [{label, value}] from a per-layer mapping or list, in model order. */
function layerSeries(data, key) {
  if (!data) return [];
  if (Array.isArray(data)) {
    return data.map((d, i) => typeof d === "number" ? { label: `layer ${i}`, value: d }
      : { label: d.name || d.layer || `layer ${i}`, value: Number(d[key] ?? d.value ?? d.rank ?? d.sparsity) })
      .filter((d) => Number.isFinite(d.value));
  }
  return Object.entries(data).map(([label, v]) => ({
    label, value: Number(typeof v === "object" && v !== null ? v[key] ?? v.value : v),
  })).filter((d) => Number.isFinite(d.value));
}

/** [{x, y}] from [[step, loss], ...], [loss, ...] or [{step, loss}, ...]. */
function lossPoints(curve) {
  if (!Array.isArray(curve)) return [];
  return curve.map((p, i) => {
    if (typeof p === "number") return { x: i + 1, y: p };
    if (Array.isArray(p)) return { x: Number(p[0]), y: Number(p[1]) };
    return { x: Number(p.step ?? p.x ?? i + 1), y: Number(p.loss ?? p.y) };
  }).filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
}

/* ---------- page: submit ---------- */

function resolveSchema(prop) {
  // Optional fields come as anyOf [X, null]: take X, remember nullability.
  if (prop.anyOf) {
    const nonNull = prop.anyOf.filter((s) => s.type !== "null");
    const nullable = nonNull.length < prop.anyOf.length;
    return { ...prop, ...(nonNull[0] || {}), anyOf: undefined, nullable };
  }
  return { ...prop, nullable: false };
}

function fieldId(stepIndex, name) { return `step-${stepIndex}-${name}`; }

async function submitPage() {
  const form = $("#submit-form");
  const stepsList = $("#steps");
  const addMethod = $("#add-method");
  const modelSelect = $("#job-model");
  const steps = [];  // {method, card}
  let methods = {};
  let uid = 0;

  try {
    const body = await api("/methods");
    methods = body.methods || body;
  } catch (err) {
    showNotice("submit-error", `Could not load methods: ${err.message}`);
    return;
  }
  addMethod.replaceChildren(...Object.entries(methods).map(([name, info]) =>
    el("option", { value: name, text: name, title: info.summary || "" })));
  const describe = () => { $("#add-method-hint").textContent = (methods[addMethod.value] || {}).summary || ""; };
  addMethod.addEventListener("change", describe);
  describe();

  try {
    const models = listOf(await api("/models"), "models");
    modelSelect.replaceChildren(el("option", { value: "", text: "Choose a model…" }),
      ...models.map((m) => {
        const name = typeof m === "string" ? m : m.name || m.id;
        return el("option", { value: name, text: name });
      }));
    const wanted = new URLSearchParams(location.search).get("model");
    if (wanted) modelSelect.value = wanted;
  } catch (err) {
    showNotice("submit-error", `Could not load models: ${err.message}`);
  }

  function buildField(stepIndex, name, rawProp, required) {
    const prop = resolveSchema(rawProp);
    const id = fieldId(stepIndex, name);
    const label = el("label", { for: id, text: prop.title || name });
    const hintBits = [];
    if (prop.description) hintBits.push(prop.description);
    const range = [];
    if (prop.minimum !== undefined) range.push(`≥ ${prop.minimum}`);
    if (prop.exclusiveMinimum !== undefined) range.push(`> ${prop.exclusiveMinimum}`);
    if (prop.maximum !== undefined) range.push(`≤ ${prop.maximum}`);
    if (prop.exclusiveMaximum !== undefined) range.push(`< ${prop.exclusiveMaximum}`);
    if (range.length) hintBits.push(`range ${range.join(", ")}`);
    if (prop.default !== undefined && prop.default !== null) hintBits.push(`default ${JSON.stringify(prop.default)}`);
    else if (prop.nullable && !required) hintBits.push("optional");
    const hint = el("span", { class: "hint", id: `${id}-hint`, text: hintBits.join(" · ") });
    const error = el("span", { class: "error", id: `${id}-error`, "aria-live": "polite" });
    let input;
    const common = { id, name, "aria-describedby": `${id}-hint ${id}-error`,
                     dataset: { field: name, kind: prop.type || "string", nullable: prop.nullable ? "1" : "" } };
    if (prop.enum) {
      input = el("select", common, prop.enum.map((v) => el("option", { value: v, text: String(v) })));
      if (prop.default !== undefined && prop.default !== null) input.value = prop.default;
    } else if (prop.type === "boolean") {
      input = el("input", { ...common, type: "checkbox" });
      input.checked = Boolean(prop.default);
    } else if (prop.type === "number" || prop.type === "integer") {
      const lo = prop.minimum ?? prop.exclusiveMinimum;
      const hi = prop.maximum ?? prop.exclusiveMaximum;
      input = el("input", { ...common, type: "number", inputmode: "decimal",
                            step: prop.type === "integer" ? 1 : "any", min: lo, max: hi,
                            placeholder: prop.default ?? "" });
      if (prop.default !== undefined && prop.default !== null) input.value = prop.default;
      input.dataset.exclusiveMax = prop.exclusiveMaximum ?? "";
      input.dataset.exclusiveMin = prop.exclusiveMinimum ?? "";
    } else if (prop.type === "array") {
      input = el("input", { ...common, type: "text", placeholder: "comma-separated" });
      if (Array.isArray(prop.default)) input.value = prop.default.join(", ");
    } else {
      const listId = prop.examples ? `${id}-examples` : null;
      input = el("input", { ...common, type: "text", list: listId });
      if (prop.default !== undefined && prop.default !== null) input.value = prop.default;
      if (listId) {
        return el("div", { class: "field" }, label, input,
          el("datalist", { id: listId }, prop.examples.map((v) => el("option", { value: v }))), hint, error);
      }
    }
    return el("div", { class: "field" }, label, input, hint, error);
  }

  function addStep(method) {
    const info = methods[method];
    if (!info) return;
    const index = uid++;
    const schema = info.schema || {};
    const required = new Set(schema.required || []);
    const fields = Object.entries(schema.properties || {}).filter(([name]) => name !== "method")
      .map(([name, prop]) => buildField(index, name, prop, required.has(name)));
    const title = el("h3", {});
    const card = el("li", { class: "step-card", dataset: { method, index } },
      el("header", {}, title,
        el("div", { class: "toolbar" },
          el("button", { type: "button", class: "secondary", "aria-label": `Move ${method} step up`,
                         text: "↑", onclick: () => move(card, -1) }),
          el("button", { type: "button", class: "secondary", "aria-label": `Move ${method} step down`,
                         text: "↓", onclick: () => move(card, 1) }),
          el("button", { type: "button", class: "secondary", text: "Remove",
                         "aria-label": `Remove ${method} step`, onclick: () => remove(card) }))),
      el("p", { class: "summary", text: info.summary || "" }),
      el("span", { class: "error step-error", id: `step-${index}-error` }),
      el("div", { class: "params" }, fields));
    steps.push({ method, card });
    stepsList.append(card);
    renumber();
    preview();
    const first = card.querySelector("input, select");
    if (first) first.focus();
  }

  function renumber() {
    [...stepsList.children].forEach((card, i) => {
      $("h3", card).textContent = `Step ${i + 1}: ${card.dataset.method}`;
    });
  }
  function move(card, delta) {
    const cards = [...stepsList.children];
    const i = cards.indexOf(card), j = i + delta;
    if (j < 0 || j >= cards.length) return;
    if (delta < 0) stepsList.insertBefore(card, cards[j]);
    else stepsList.insertBefore(cards[j], card);
    renumber(); preview();
  }
  function remove(card) {
    card.remove();
    renumber(); preview();
    addMethod.focus();
  }

  /** Read one input; returns [present, value, problem]. */
  function readInput(input) {
    const kind = input.dataset.kind;
    const nullable = input.dataset.nullable === "1";
    if (input.type === "checkbox") return [true, input.checked, ""];
    const raw = input.value.trim();
    if (raw === "") return nullable ? [true, null, ""] : [false, undefined, ""];
    if (kind === "number" || kind === "integer") {
      const value = Number(raw);
      if (!Number.isFinite(value)) return [true, raw, "must be a number"];
      if (kind === "integer" && !Number.isInteger(value)) return [true, value, "must be a whole number"];
      if (input.min !== "" && value < Number(input.min)) return [true, value, `must be ≥ ${input.min}`];
      const exMax = input.dataset.exclusiveMax;
      if (exMax !== "" && value >= Number(exMax)) return [true, value, `must be < ${exMax}`];
      if (exMax === "" && input.max !== "" && value > Number(input.max)) return [true, value, `must be ≤ ${input.max}`];
      return [true, value, ""];
    }
    if (kind === "array") return [true, raw.split(",").map((s) => s.trim()).filter(Boolean), ""];
    return [true, raw, ""];
  }

  function collect() {
    const problems = [];
    const recipeSteps = [...stepsList.children].map((card) => {
      const step = { method: card.dataset.method };
      for (const input of card.querySelectorAll("[data-field]")) {
        const [present, value, problem] = readInput(input);
        if (problem) problems.push([input, problem]);
        if (present) step[input.dataset.field] = value;
      }
      return step;
    });
    const recipe = { steps: recipeSteps };
    for (const input of form.querySelectorAll("input[data-group]")) {
      const raw = input.value.trim();
      if (raw === "") continue;
      const value = Number(raw);
      if (!Number.isInteger(value)) { problems.push([input, "must be a whole number"]); continue; }
      if (value < Number(input.min) || value > Number(input.max)) {
        problems.push([input, `must be between ${input.min} and ${input.max}`]);
      }
      recipe[input.dataset.group] = { ...(recipe[input.dataset.group] || {}), [input.dataset.name]: value };
    }
    const request = { model: modelSelect.value, recipe };
    const name = $("#job-name").value.trim();
    if (name) request.name = name;
    return { request, problems };
  }

  function preview() {
    $("#json-preview").textContent = JSON.stringify(collect().request, null, 2);
  }

  function clearErrors() {
    for (const node of form.querySelectorAll(".error")) node.textContent = "";
    for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
    showNotice("submit-error", "");
  }

  function markField(input, message) {
    input.setAttribute("aria-invalid", "true");
    const error = document.getElementById(`${input.id}-error`);
    if (error) error.textContent = message;
  }

  /** Place FastAPI/pydantic errors next to the field they name; return the rest. */
  function placeServerErrors(detail) {
    const unplaced = [];
    const cards = [...stepsList.children];
    for (const item of Array.isArray(detail) ? detail : [{ loc: [], msg: describeError({ detail }) }]) {
      const loc = (item.loc || []).filter((p) => p !== "body");
      let msg = String(item.msg || "invalid").replace(/^Value error, /, "");
      let target = null;
      if (loc[0] === "model") target = modelSelect;
      else if (loc[0] === "name") target = $("#job-name");
      else if (loc[0] === "recipe" && loc[1] === "steps" && Number.isInteger(loc[2])) {
        const card = cards[loc[2]];
        if (card) {
          let field = loc.slice(3).find((p) => typeof p === "string" && p !== card.dataset.method);
          // Model-level validators name the field at the start of the message ("sparsity: ...").
          const named = /^([a-z_]+): (.*)$/s.exec(msg);
          if (!field && named && card.querySelector(`[data-field="${named[1]}"]`)) {
            field = named[1];
            msg = named[2];
          }
          target = field ? card.querySelector(`[data-field="${field}"]`) : null;
          if (!target) {
            $(".step-error", card).textContent = `${field ? field + ": " : ""}${msg}`;
            continue;
          }
        }
      } else if (loc[0] === "recipe" && ["calibration", "evaluation"].includes(loc[1])) {
        target = form.querySelector(`input[data-group="${loc[1]}"][data-name="${loc[2]}"]`);
      } else if (loc[0] === "recipe" && loc[1] === "steps") {
        $("#steps-error").textContent = msg;
        continue;
      }
      if (target) markField(target, msg);
      else unplaced.push(`${loc.join(".") || "request"}: ${msg}`);
    }
    return unplaced;
  }

  $("#add-step").addEventListener("click", () => addStep(addMethod.value));
  form.addEventListener("input", preview);
  form.addEventListener("change", preview);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const { request, problems } = collect();
    for (const [input, problem] of problems) markField(input, problem);
    if (!request.model) { markField(modelSelect, "choose a model"); problems.push([modelSelect, ""]); }
    if (!request.recipe.steps.length) {
      $("#steps-error").textContent = "add at least one step";
      problems.push([addMethod, ""]);
    }
    if (problems.length) {
      showNotice("submit-error", "Please fix the fields marked below.");
      problems[0][0].focus();
      return;
    }
    const button = $("#submit-job");
    button.disabled = true;
    try {
      const created = await api("/jobs", { method: "POST", json: request });
      const id = created.id || (created.job && created.job.id);
      location.assign(`/jobs/${encodeURIComponent(id)}`);
    } catch (err) {
      button.disabled = false;
      if (err.status === 422 || err.status === 400) {
        const rest = placeServerErrors(err.body && err.body.detail !== undefined ? err.body.detail : err.body);
        showNotice("submit-error", rest.length ? rest.join("; ") : "Please fix the fields marked below.");
        const first = form.querySelector("[aria-invalid='true']");
        if (first) first.focus();
      } else if (err.status !== 401) {
        showNotice("submit-error", `Submit failed: ${err.message}`);
      }
    }
  });

  const initial = new URLSearchParams(location.search).get("method");
  addStep(initial && methods[initial] ? initial : Object.keys(methods)[0]);
  preview();
  window.dashboard.ready = true;
}

/* ---------- page: models ---------- */

async function modelsPage() {
  const body = $("#models-body");

  async function load() {
    try {
      const models = listOf(await api("/models"), "models");
      body.replaceChildren(...models.map((m) => {
        const name = typeof m === "string" ? m : m.name || m.id;
        const deletable = typeof m === "object" && (m.kind === "uploaded" || m.deletable === true);
        return el("tr", { dataset: { model: name } },
          el("td", { "data-label": "Name" }, el("a", { href: `/submit?model=${encodeURIComponent(name)}`, text: name,
                                                   title: "Submit a job on this model" })),
          el("td", { "data-label": "Source", text: (typeof m === "object" && (m.kind || m.source || m.format)) || "–" }),
          el("td", { "data-label": "Size", class: "num", text: typeof m === "object" ? fmtBytes(m.bytes ?? m.size_bytes ?? m.size) : "–" }),
          el("td", { "data-label": "" }, deletable
            ? el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete model ${name}`,
                             onclick: () => removeModel(name) })
            : el("span", { class: "muted", text: "read-only" })));
      }));
      $("#models-empty").hidden = models.length > 0;
      showNotice("models-error", "");
    } catch (err) {
      if (err.status !== 401) showNotice("models-error", `Could not load models: ${err.message}`);
    }
  }

  async function removeModel(name) {
    if (!window.confirm(`Delete model ${name}?`)) return;
    try {
      await api(`/models/${encodeURIComponent(name)}`, { method: "DELETE" });
      await load();
    } catch (err) { showNotice("models-error", `Delete failed: ${err.message}`); }
  }

  $("#upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const nameInput = $("#model-name"), fileInput = $("#model-file");
    for (const id of ["model-name-error", "model-file-error"]) showNotice(id, "");
    nameInput.removeAttribute("aria-invalid"); fileInput.removeAttribute("aria-invalid");
    let bad = false;
    if (!nameInput.value.trim() || !nameInput.checkValidity()) {
      nameInput.setAttribute("aria-invalid", "true");
      showNotice("model-name-error", "use letters, digits, '.', '_' or '-'");
      bad = true;
    }
    if (!fileInput.files.length) {
      fileInput.setAttribute("aria-invalid", "true");
      showNotice("model-file-error", "choose a file");
      bad = true;
    }
    if (bad) return;
    const progress = $("#upload-progress");
    const status = $("#upload-status");
    const button = $("#upload-button");
    progress.hidden = false;
    setProgress(progress, { progress: 0, state: "running" });
    button.disabled = true;
    status.textContent = "Uploading…";
    const xhr = new XMLHttpRequest();  // fetch() cannot report upload progress
    // The API takes the archive as the raw request body and the name as a query parameter.
    xhr.open("POST", `${API}/models?name=${encodeURIComponent(nameInput.value.trim())}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.withCredentials = true;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) setProgress(progress, { progress: e.loaded / e.total, state: "running" });
    };
    xhr.onload = async () => {
      button.disabled = false;
      if (xhr.status === 401) { signedOut(); return; }
      let reply = null;
      try { reply = JSON.parse(xhr.responseText); } catch { reply = xhr.responseText; }
      if (xhr.status >= 200 && xhr.status < 300) {
        setProgress(progress, { progress: 1, state: "succeeded" });
        status.textContent = `Uploaded ${nameInput.value.trim()}.`;
        $("#upload-form").reset();
        await load();
      } else {
        setProgress(progress, { progress: 1, state: "failed" });
        status.textContent = `Upload failed: ${describeError(reply) || xhr.status}`;
      }
    };
    xhr.onerror = () => { button.disabled = false; status.textContent = "Upload failed: network error."; };
    xhr.send(fileInput.files[0]);
  });

  await load();
  window.dashboard.ready = true;
}

/* ---------- page: workers ---------- */

function workersPage() {
  async function load() {
    try {
      const body = await api("/workers");
      const workers = listOf(body, "workers");
      $("#workers-body").replaceChildren(...workers.map((w) => {
        const age = w.heartbeat_age_s ?? w.heartbeat_age ?? w.last_heartbeat_age ??
          (parseTime(w.last_heartbeat) !== null ? (Date.now() - parseTime(w.last_heartbeat)) / 1000 : null);
        const current = w.current_job || w.job_id || w.current_job_id;
        const currentId = current && typeof current === "object" ? current.id : current;
        return el("tr", { dataset: { worker: w.name || w.id } },
          el("td", { "data-label": "Worker", text: w.name || w.id || "–" }),
          el("td", { "data-label": "State", text: w.state || w.status || "–" }),
          el("td", { "data-label": "Heartbeat age", class: "num", text: fmtDuration(age) }),
          el("td", { "data-label": "Current job" }, currentId
            ? el("a", { href: `/jobs/${encodeURIComponent(currentId)}`, text: currentId }) : "idle"),
          el("td", { "data-label": "Host", text: w.hostname || w.host || "–" }));
      }));
      $("#workers-empty").hidden = workers.length > 0;
      const depth = body.queue_depth ?? body.queued ?? (body.queue && body.queue.depth);
      $("#queue-depth").textContent = depth === undefined ? "–" : String(depth);
      $("#workers-online").textContent = String(workers.length);
      $("#workers-updated").textContent = fmtClock(Date.now());
      showNotice("workers-error", "");
    } catch (err) {
      if (err.status !== 401) showNotice("workers-error", `Could not load workers: ${err.message}`);
    }
    window.dashboard.ready = true;
  }
  load();
  setInterval(load, 2000);
}

/* ---------- shared: who am I ---------- */

async function whoami() {
  const node = document.getElementById("whoami");
  if (!node || node.textContent.trim()) return;
  try {
    const me = await api("/me");
    node.textContent = `${me.name || me.key_name || "signed in"}${me.admin ? " (admin)" : ""}`;
  } catch { /* a 401 already redirected */ }
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  const pages = { jobs: jobsPage, job: jobPage, submit: submitPage, models: modelsPage, workers: workersPage };
  if (pages[page]) {
    whoami();
    pages[page]();
  }
});
