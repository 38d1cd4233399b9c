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

/** A readable sentence from an error body: FastAPI's `detail` (a string, or a list of
 * {loc, msg}), or the text a proxy answered with. */
function describeError(body) {
  if (!body) return "";
  if (typeof body === "string") return body.slice(0, 300);
  const { detail } = body;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => (d.loc.length > 1 ? `${d.loc.slice(1).join(".")}: ` : "") + d.msg).join("; ");
  return "";
}

function showNotice(id, text) {
  const node = document.getElementById(id);
  if (node) node.textContent = text || "";
}

/** Milliseconds of a record's ISO 8601 timestamp, or null when it has none. */
function parseTime(value) {
  if (!value) return null;
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

/** Sizes in decimal units (kB, MB, GB: powers of 1000), the model card's unit, so a size
 * reads the same on the dashboard and in the card. */
function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return "–";
  let value = Number(n);
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(value) >= 1000 && i < units.length - 1) { value /= 1000; i += 1; }
  return `${value.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function fmtNumber(n, digits = 2) {
  if (n === null || n === undefined || n === "" || !Number.isFinite(Number(n))) return "–";
  const value = Number(n);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return value.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

/** Times of day and dates in ISO 8601, UTC: "13:05:09", "2026-12-01 13:05 UTC" (never
 * 01/12/2026, which reads differently on either side of the Atlantic). */
function fmtClock(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  return new Date(ms).toISOString().slice(11, 19);
}

function fmtDateTime(ms, zone = true) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  const text = new Date(ms).toISOString().slice(0, 16).replace("T", " ");
  return zone ? `${text} UTC` : text;  // a column whose header says UTC leaves it out
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

/** Open an EventSource; each `job` and `deleted` event's JobView goes to `onRecord`. */
function subscribe(path, onRecord, statusNode, onReopen = null) {
  const source = new EventSource(API + path, { withCredentials: true });
  let broken = false;
  for (const name of ["job", "deleted"]) {
    source.addEventListener(name, (event) => onRecord(JSON.parse(event.data), name === "deleted"));
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

/* ---------- charts (inline SVG) ----------
 * A report carries `charts`: [{id, title, kind: "line" | "bar", x_label, y_label, log_y,
 * series: [{name, points: [[x, y], ...]}], reference}], x a number (line) or a label (bar).
 * The page draws every one the same way, whatever method produced it. */

const SVG_NS = "http://www.w3.org/2000/svg";
const CHART = { width: 720, height: 260, left: 64, right: 12, top: 12, bottom: 40 };
const PLOT_W = CHART.width - CHART.left - CHART.right;
const PLOT_H = CHART.height - CHART.top - CHART.bottom;
const BASE_Y = CHART.top + PLOT_H;
const SERIES_STYLES = 4;  // .s0 … .s3 in dashboard.css

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

/** A chart value for ticks, tooltips and tables: integers whole, others to 4 significant digits. */
function fmtValue(v) {
  if (!Number.isFinite(v)) return "–";
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  return v.toLocaleString("en-US", { maximumSignificantDigits: 4 });
}

/** The points of one series that can be drawn (finite, and positive on a log axis). */
function drawable(chart, series) {
  return series.points.filter(([x, y]) => Number.isFinite(y) && (!chart.log_y || y > 0)
                                          && (chart.kind === "bar" || Number.isFinite(x)));
}

/** The y axis: value -> pixel, and five labelled ticks; log10 spacing when the chart asks. */
function yAxis(chart, values) {
  const reference = Number.isFinite(chart.reference) ? [chart.reference] : [];
  const all = [...values, ...reference].filter((v) => !chart.log_y || v > 0);
  let lo, hi, toAxis = (v) => v, fromAxis = (v) => v;
  if (chart.log_y) {
    toAxis = Math.log10; fromAxis = (v) => 10 ** v;
    lo = Math.log10(Math.min(...all)); hi = Math.log10(Math.max(...all));
  } else if (chart.kind === "bar") {
    lo = Math.min(0, ...all); hi = niceMax(Math.max(...all));
  } else {
    lo = Math.min(...all); hi = Math.max(...all);
  }
  if (!(hi > lo)) { lo -= chart.log_y ? 0.5 : 1; hi += chart.log_y ? 0.5 : 1; }
  const scale = (v) => BASE_Y - ((toAxis(v) - lo) / (hi - lo)) * PLOT_H;
  const ticks = [0, 1, 2, 3, 4].map((k) => fromAxis(lo + ((hi - lo) * k) / 4));
  return { scale, ticks, zero: chart.log_y || lo > 0 ? BASE_Y : scale(0) };
}

/** The SVG with gridlines, tick labels, both axes and the y label. */
function chartFrame(chart, axis, label) {
  const chartNode = svg("svg", { class: "chart", viewBox: `0 0 ${CHART.width} ${CHART.height}`,
                                 role: "img", "aria-label": label,
                                 "data-scale": chart.log_y ? "log" : "linear" });
  for (const v of axis.ticks) {
    const y = axis.scale(v);
    chartNode.append(svg("line", { class: "gridline", x1: CHART.left, x2: CHART.width - CHART.right, y1: y, y2: y }));
    chartNode.append(svg("text", { class: "tick", x: CHART.left - 6, y: y + 4, "text-anchor": "end" }, fmtValue(v)));
  }
  chartNode.append(svg("line", { class: "axis", x1: CHART.left, x2: CHART.width - CHART.right, y1: BASE_Y, y2: BASE_Y }));
  chartNode.append(svg("line", { class: "axis", x1: CHART.left, x2: CHART.left, y1: CHART.top, y2: BASE_Y }));
  const middle = CHART.top + PLOT_H / 2;
  chartNode.append(svg("text", { class: "y-label", x: 12, y: middle, "text-anchor": "middle",
                                 transform: `rotate(-90 12 ${middle})` },
                       `${chart.y_label}${chart.log_y ? " (log scale)" : ""}`));
  return chartNode;
}

/** The chart's dashed reference line (e.g. the target), drawn over the data. */
function addReference(chartNode, chart, axis) {
  if (!Number.isFinite(chart.reference) || (chart.log_y && chart.reference <= 0)) return;
  const y = axis.scale(chart.reference);
  chartNode.append(svg("line", { class: "target", x1: CHART.left, x2: CHART.width - CHART.right, y1: y, y2: y },
                       svg("title", {}, `reference: ${fmtValue(chart.reference)}`)));
}

/** Bars per x label (one per series, side by side), in the order the chart lists them. */
function barChart(chart) {
  const slots = new Map();
  for (const series of chart.series) {
    for (const [x] of series.points) if (!slots.has(String(x))) slots.set(String(x), slots.size);
  }
  const values = chart.series.flatMap((s) => drawable(chart, s).map((p) => p[1]));
  const axis = yAxis(chart, values);
  const node = chartFrame(chart, axis,
    `${chart.title}: ${chart.y_label} per ${chart.x_label}, ${slots.size} bars`);
  const step = PLOT_W / Math.max(slots.size, 1);
  const barW = Math.max(1, (step * 0.8) / chart.series.length);
  chart.series.forEach((series, s) => {
    for (const [x, y] of drawable(chart, series)) {
      const top = axis.scale(y);
      const rect = svg("rect", { class: `bar-rect s${s % SERIES_STYLES}`,
                                 x: CHART.left + slots.get(String(x)) * step + step * 0.1 + s * barW,
                                 y: Math.min(top, axis.zero), width: barW,
                                 height: Math.abs(axis.zero - top) });
      const name = chart.series.length > 1 ? `${x} (${series.name})` : String(x);
      rect.append(svg("title", {}, `${name}: ${fmtValue(y)}`));
      node.append(rect);
    }
  });
  node.append(svg("text", { x: CHART.left + PLOT_W / 2, y: CHART.height - 8, "text-anchor": "middle" },
                  `${chart.x_label}: ${slots.size}, in order; hover a bar for its name`));
  addReference(node, chart, axis);
  return node;
}

/** One line per series over numeric x. */
function lineChart(chart) {
  const series = chart.series.map((s) => ({ name: s.name, points: drawable(chart, s) }));
  const points = series.flatMap((s) => s.points);
  const xs = points.map((p) => p[0]);
  const xMin = Math.min(...xs), xMax = Math.max(...xs);
  const axis = yAxis(chart, points.map((p) => p[1]));
  const sx = (x) => CHART.left + (xMax === xMin ? PLOT_W / 2 : ((x - xMin) / (xMax - xMin)) * PLOT_W);
  const described = series.map((s) => s.points.length
    ? `${s.name}: ${s.points.length} points from ${fmtValue(s.points[0][1])} to ${fmtValue(s.points[s.points.length - 1][1])}`
    : `${s.name}: no points`);
  const node = chartFrame(chart, axis, `${chart.title}: ${chart.y_label} over ${chart.x_label}; ${described.join("; ")}`);
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map(([x, y], k) => `${k ? "L" : "M"}${sx(x).toFixed(1)},${axis.scale(y).toFixed(1)}`);
    node.append(svg("path", { class: `line s${i % SERIES_STYLES}`, d: d.join(" ") }, svg("title", {}, s.name)));
  });
  node.append(svg("text", { x: CHART.left, y: CHART.height - 8 }, `${chart.x_label} ${fmtValue(xMin)}`));
  node.append(svg("text", { x: CHART.width - CHART.right, y: CHART.height - 8, "text-anchor": "end" },
                  `${chart.x_label} ${fmtValue(xMax)}`));
  addReference(node, chart, axis);
  return node;
}

/** The one value every bar of a bar chart has, or null when they differ (or there are none). */
function uniformValue(chart) {
  const values = chart.series.flatMap((s) => s.points.map((p) => p[1]));
  return values.length && values.every((v) => v === values[0]) ? values[0] : null;
}

/** A collapsed data table under a chart, so its numbers are reachable without a mouse. */
function chartTable(chart) {
  const several = chart.series.length > 1;
  const headers = [...(several ? ["Series"] : []), chart.x_label, chart.y_label];
  const rows = chart.series.flatMap((s) => s.points.map(([x, y]) =>
    [...(several ? [s.name] : []), typeof x === "number" ? fmtValue(x) : String(x), fmtValue(y)]));
  return el("details", {},
    el("summary", { text: `${chart.title} as a table` }),
    el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", { text: c }))))))));
}

/** One chart of a report as a figure: the drawing (or a one-line summary), legend, table. */
function drawChart(chart) {
  const same = chart.kind === "bar" ? uniformValue(chart) : null;
  const count = chart.series.reduce((n, s) => n + s.points.length, 0);
  const body = same !== null
    ? el("p", { class: "chart-summary", text: `Every ${chart.x_label} (${count} of them) has ${chart.y_label} ${fmtValue(same)}.` })
    : chart.kind === "bar" ? barChart(chart) : lineChart(chart);
  const legend = chart.series.length > 1 && same === null
    ? el("ul", { class: "chart-legend" }, chart.series.map((s, i) => el("li", { class: `s${i % SERIES_STYLES}`, text: s.name })))
    : null;
  return el("figure", { class: "chart-block", dataset: { chart: chart.id, kind: chart.kind } },
    el("figcaption", { text: chart.title }), body, legend, chartTable(chart));
}

/** The charts of a report: its own list, and per-layer sparsity from `report.sparsity` when the
 * list has no "sparsity" chart of its own (reports from before the library drew one). */
function reportCharts(report) {
  const charts = [...(report.charts || [])];
  const perLayer = Object.entries((report.sparsity && report.sparsity.per_layer) || {});
  if (!charts.some((c) => c.id === "sparsity") && perLayer.some(([, v]) => v > 0)) {
    charts.unshift({ id: "sparsity", title: "Per-layer sparsity", kind: "bar", x_label: "layer",
                     y_label: "sparsity", log_y: false, reference: report.sparsity.total ?? null,
                     series: [{ name: "sparsity", points: perLayer }] });
  }
  return charts;
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
        el("td", { "data-label": "Owner", class: "c-owner" }),
        el("td", { "data-label": "Created (UTC)", class: "c-created" }),
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
    $(".c-model", row).textContent = job.model;
    $(".c-methods", row).textContent = job.methods.join(" → ");
    stateBadge($(".state", row), job.state);
    // A failed job's reason where a running one shows its stage (the failed filter lists why).
    const stageCell = $(".c-stage", row);
    if (job.state === "failed") {
      // The kind in two words where it says something; the worker's own words otherwise.
      const reason = plainError(job);
      const known = job.error_kind !== "internal" && Object.hasOwn(ERROR_KINDS, job.error_kind || "");
      stageCell.textContent = known ? job.error_kind.replaceAll("_", " ")
        : reason.message ? reason.message.slice(0, 120) : reason.headline;
      stageCell.title = [reason.headline, job.error].filter(Boolean).join("\n");
    } else {
      stageCell.textContent = TERMINAL.has(job.state) ? "–" : job.stage || "–";
    }
    $(".c-owner", row).textContent = job.owner;
    const createdCell = $(".c-created", row);
    createdCell.textContent = fmtDateTime(parseTime(job.created_at), false);
    createdCell.title = job.created_at;
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

  function apply(job, deleted = false) {
    if (deleted) {
      jobs.delete(job.id);
      const row = rows.get(job.id);
      if (row) row.remove();
      rows.delete(job.id);
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
      const page = await api("/jobs?limit=200");
      for (const job of page.jobs) apply(job);
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

/** A failed job's `error_kind` (set by the worker from the exception's type, see
 * worker/failures.py) in plain words. Never guessed from the message text: a message that
 * happens to mention "hub" or "not found" must not change the headline. */
const ERROR_KINDS = {
  out_of_memory: "The job ran out of memory on its worker. Try a smaller calibration budget, fewer samples, or a larger machine.",
  timeout: "The job ran longer than the service allows (JOB_TIMEOUT) and was stopped.",
  worker_lost: "The worker running this job stopped unexpectedly, and the retries were used up.",
  damaged_weights: "The model could not be loaded: its weight files look damaged or incomplete. Upload it again.",
  unsupported_model: "This model's architecture is not supported: the installed transformers cannot build its model_type.",
  not_found: "The model or a file the job needed was not found on the server: check the model name or path.",
  offline: "The job tried to download something, and this service has no internet access. Upload the model first.",
  refused: "The service refused something this job asked for (a file it may not read, or weights that contain code).",
  invalid_recipe: "The recipe (or goal) does not fit this model.",
  goal_not_met: "No candidate the search verified meets the goal: loosen the budget or allow more methods.",
  numerical: "A method's math broke down on this model. Try more calibration samples or a larger dampening.",
  internal: "The job failed.",
};

/** The record's failure: a headline from `error_kind`, and the worker's own `error` text
 * ("ExceptionType: message") split into its type and message, shown below it. */
function plainError(record) {
  const error = record.error || record.message || "";
  const colon = error.indexOf(": ");
  const head = colon > 0 ? error.slice(0, colon) : "";
  const isType = head !== "" && !head.includes(" ");
  return {
    headline: Object.hasOwn(ERROR_KINDS, record.error_kind || "") ? ERROR_KINDS[record.error_kind]
      : ERROR_KINDS.internal,
    type: isType ? head : "",
    message: isType ? error.slice(colon + 2) : error,
  };
}

async function jobPage() {
  const jobId = document.body.dataset.jobId;
  const base = `/jobs/${encodeURIComponent(jobId)}`;
  let job = null;
  const history = [];  // [{stage, at}] in the order this page saw them
  let lastMessage = null;
  let reportShown = false;

  /** The timeline from the record's own history (kept by the store, so a page opened late
   * shows what happened before it opened); records written before the history existed fall
   * back to what this page sees. */
  function track(record) {
    if (Array.isArray(record.history) && record.history.length) {
      history.length = 0;
      for (const entry of record.history) {
        const label = entry.state === "running" ? (entry.stage || "running") : entry.state;
        if (!history.length || history[history.length - 1].stage !== label) {
          history.push({ stage: label, at: parseTime(entry.at) });
        }
      }
      return;
    }
    const at = parseTime(record.updated_at) || Date.now();
    const last = () => history[history.length - 1].stage;
    if (!history.length) history.push({ stage: "queued", at: parseTime(record.created_at) });
    if (record.state === "running" && record.stage && last() !== record.stage) {
      history.push({ stage: record.stage, at });
    } else if (record.state === "queued" && last() !== "queued") {
      history.push({ stage: "queued", at });  // a retry after a lost worker
    } else if (TERMINAL.has(record.state) && last() !== record.state) {
      history.push({ stage: record.state, at: parseTime(record.finished_at) || at });
    }
  }

  /** The messages, each stamped with when the job said it (from the record's history). */
  function paintMessages(record) {
    const log = $("#messages");
    if (Array.isArray(record.history) && record.history.length) {
      const items = [];
      let previous = null;
      for (const entry of record.history) {
        if (!entry.message || entry.message === previous) continue;
        previous = entry.message;
        items.push(el("li", { text: `${fmtClock(parseTime(entry.at))}  ${entry.message}` }));
      }
      log.replaceChildren(...items);
    } else if (record.message && record.message !== lastMessage) {
      lastMessage = record.message;
      log.append(el("li", { text: `${fmtClock(parseTime(record.updated_at))}  ${record.message}` }));
    }
    log.scrollTop = log.scrollHeight;
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
      ["ID", record.id], ["Name", record.name || "–"], ["Model", record.model],
      ["Methods", record.methods.join(" → ")], ["Owner", record.owner],
      ["Created", fmtDateTime(parseTime(record.created_at))],
      ["Elapsed", fmtDuration(elapsed)],
      ["ETA", TERMINAL.has(record.state) ? "–" : fmtDuration(eta)],
      ["Attempt", record.attempt],
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
    paintMessages(record);
    $("#recipe").textContent = JSON.stringify(record.recipe, null, 2);
    $("#cancel-job").hidden = TERMINAL.has(record.state);
    $("#delete-job").hidden = !TERMINAL.has(record.state);
    paintFacts(record);
    paintTimeline(record);
    const failure = $("#job-failure");
    if (record.state === "failed") {
      const info = plainError(record);
      failure.replaceChildren(el("div", { class: "error-box", role: "alert" },
        el("p", {}, el("strong", { text: info.headline })),
        info.message ? el("p", { text: `What the worker said: ${info.message}` }) : null,
        info.type ? el("p", { class: "muted", text: `Error type: ${info.type}` }) : null));
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
  function apply(record, deleted = false) {
    if (deleted) { location.assign("/"); return; }
    if (record.id !== jobId) return;
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
      apply(await api(`${base}/cancel`, { method: "POST" }));
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
    if (err.status === 404) {
      showNotice("job-error-load", "This job does not exist, or your key cannot see it.");
      const grid = $(".detail-grid");
      if (grid) grid.hidden = true;  // no empty status, timeline or recipe widgets
      $("#job-title").textContent = "Job not found";
    }
    else if (err.status !== 401) showNotice("job-error-load", `Could not load the job: ${err.message}`);
    window.dashboard.ready = true;
    return;
  }
  if (!TERMINAL.has(job.state)) source = subscribe(`${base}/events`, apply, null);
  window.dashboard.ready = true;

  async function showReport() {
    const report = await api(`${base}/report`);
    window.dashboard.report = report;
    const { before, after } = report.metrics;
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
    if (Number.isFinite(report.sparsity.total)) bits.push(`total sparsity ${(report.sparsity.total * 100).toFixed(1)}%`);
    if (Number.isFinite(report.seconds_total)) bits.push(`ran ${fmtDuration(report.seconds_total)}`);
    if (report.peak_memory_bytes) bits.push(`peak memory ${fmtBytes(report.peak_memory_bytes)}`);
    $("#report-summary").textContent = bits.join(" · ");
    showKinds(report.layer_kinds || {});

    const charts = reportCharts(report).map(drawChart);
    $("#charts").replaceChildren(...(charts.length ? charts
      : [el("p", { class: "muted", text: "This report has no charts." })]));
    $("#steps-table tbody").replaceChildren(...report.steps.map((s, i) =>
      el("tr", {}, el("td", { text: String(i + 1) }), el("td", { text: s.method }),
         el("td", { class: "num", text: fmtNumber(s.seconds, 1) }))));
    $("#report-section").hidden = false;
  }

  /** Every block weight by layer kind (attention, mlp, experts, shared experts, routers):
   * sparsity of the published weights, bits per weight from the saved files. */
  function showKinds(kinds) {
    const entries = Object.entries(kinds);
    $("#kinds-wrap").hidden = entries.length === 0;
    $("#kinds-table tbody").replaceChildren(...entries.map(([kind, k]) =>
      el("tr", { dataset: { kind } }, el("th", { scope: "row", text: kind.replaceAll("_", " ") }),
        el("td", { class: "num", text: fmtNumber(k.layers) }),
        el("td", { class: "num", text: fmtNumber(k.parameters) }),
        el("td", { class: "num", text: `${(k.sparsity * 100).toFixed(1)}%` }),
        el("td", { class: "num", text: fmtNumber(k.bits_per_weight, 2) }),
        el("td", { class: "num", text: fmtBytes(k.stored_bytes) }))));
  }

  async function showFiles() {
    const { files } = await api(`${base}/files`);
    $("#files-list").replaceChildren(...files.map((f) =>
      el("li", {}, el("a", { href: f.url, download: f.path.split("/").pop(), text: f.path }),
         el("span", { class: "muted num", text: fmtBytes(f.bytes) }))));
    const artifact = $("#artifact-link");
    artifact.href = `${API}${base}/artifact`;
    $("#files-section").hidden = false;
  }
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
    methods = (await api("/methods")).methods;
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
    const { models } = await api("/models");
    modelSelect.replaceChildren(el("option", { value: "", text: "Choose a model…" }),
      ...models.map((m) => el("option", { value: m.name, text: m.name })));
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
      location.assign(`/jobs/${encodeURIComponent(created.id)}`);
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
      const { models } = await api("/models");
      body.replaceChildren(...models.map((m) =>
        el("tr", { dataset: { model: m.name } },
          el("td", { "data-label": "Name" }, el("a", { href: `/submit?model=${encodeURIComponent(m.name)}`, text: m.name,
                                                   title: "Submit a job on this model" })),
          el("td", { "data-label": "Source", text: m.kind }),
          el("td", { "data-label": "Size", class: "num", text: fmtBytes(m.bytes) }),
          el("td", { "data-label": "" }, m.kind === "uploaded"  // only your own uploads are deletable
            ? el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete model ${m.name}`,
                             onclick: () => removeModel(m.name) })
            : el("span", { class: "muted", text: "read-only" })))));
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
      const { workers, online, queue_depth: depth } = await api("/workers");
      $("#workers-body").replaceChildren(...workers.map((w) =>
        el("tr", { dataset: { worker: w.name } },
          el("td", { "data-label": "Worker", text: w.name }),
          el("td", { "data-label": "State", text: w.state }),
          el("td", { "data-label": "Heartbeat age", class: "num", text: fmtDuration(w.heartbeat_age_s) }),
          el("td", { "data-label": "Current job" }, w.current_job
            ? el("a", { href: `/jobs/${encodeURIComponent(w.current_job)}`, text: w.current_job }) : "idle"),
          el("td", { "data-label": "Host", text: w.hostname || "–" }))));
      $("#workers-empty").hidden = workers.length > 0;
      $("#queue-depth").textContent = String(depth);
      $("#workers-online").textContent = String(online ?? workers.length);
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
    node.textContent = `${me.name}${me.admin ? " (admin)" : ""}`;
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
