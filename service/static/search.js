"use strict";
/* Goal-driven search on the dashboard (issue 18), apart from dashboard.js:
 * - job page: for a job that carries a goal, the goal, the search's Pareto plot
 *   (pareto.svg from the artifact) and every candidate's predicted and measured numbers;
 * - compare page (/compare?model=M): all of a model's finished jobs on one size / perplexity
 *   plot, with a table alternative.
 * Data comes from the API with the signed-in key's own permissions. */
(() => {
  const API = "/api/v1";
  const NS = "http://www.w3.org/2000/svg";
  const MB = 1e6;

  function node(tag, attrs, ...children) {
    const made = tag.startsWith("svg:") ? document.createElementNS(NS, tag.slice(4))
      : document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") made.textContent = value;
      else made.setAttribute(key, String(value));
    }
    for (const child of children) made.append(child instanceof Node ? child : String(child));
    return made;
  }

  async function get(path) {
    const response = await fetch(API + path, { credentials: "same-origin",
                                               headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`HTTP ${response.status} for ${path}`);
    return response.json();
  }

  const fmt = (v, digits = 4) => (Number.isFinite(v) ? v.toFixed(digits) : "–");

  /* ---------- job page ---------- */

  function goalText(goal) {
    const parts = [`minimize ${goal.minimize}`];
    if (goal.max_perplexity_ratio) parts.push(`perplexity ≤ ${goal.max_perplexity_ratio}× dense`);
    if (goal.max_size_bytes) parts.push(`size ≤ ${fmt(goal.max_size_bytes / MB, 1)} MB`);
    if (goal.max_size_ratio) parts.push(`size ≤ ${goal.max_size_ratio * 100}% of the original`);
    parts.push(`methods: ${goal.methods.join(", ")}`);
    if (goal.recovery) parts.push(`recovery: PERP ${goal.recovery.mode}, ${goal.recovery.train_steps} steps`);
    return `Goal: ${parts.join("; ")}.`;
  }

  function candidateRows(search) {
    return (search.candidates || []).map((c, i) => {
      const m = c.measured || {};
      const chosen = search.chosen === i;
      return node("tr", chosen ? { class: "chosen" } : {},
        node("td", { text: `${i + 1}${chosen ? " (chosen)" : ""}` }),
        node("td", { text: c.recovered ? `${c.family} + PERP` : c.family }),
        node("td", { class: "num", text: fmt(c.predicted.perplexity_ratio) }),
        node("td", { class: "num", text: fmt(m.perplexity_ratio) }),
        node("td", { class: "num", text: fmt(c.predicted.size_bytes / MB, 1) }),
        node("td", { class: "num", text: fmt(m.size_bytes / MB, 1) }),
        node("td", { text: m.meets ? "yes" : "no" }));
    });
  }

  async function showSearch(jobId) {
    let job;
    try {
      job = await get(`/jobs/${jobId}`);
    } catch {
      return;  // dashboard.js already says why the job itself could not be loaded
    }
    if (!job.goal) return;
    const section = document.getElementById("search-section");
    section.hidden = false;
    document.getElementById("search-goal").textContent = goalText(job.goal);
    document.getElementById("search-compare").href = `/compare?model=${encodeURIComponent(job.model)}`;
    if (job.state === "queued" || job.state === "running") {
      setTimeout(() => showSearch(jobId).catch(() => {}), 5000);
      return;
    }
    if (job.state !== "succeeded") return;
    const report = await get(`/jobs/${jobId}/report`);
    if (!report.search) return;
    const img = document.getElementById("search-pareto");
    img.src = `${API}/jobs/${jobId}/files/pareto.svg`;
    document.getElementById("search-figure").hidden = false;
    document.querySelector("#search-table tbody").replaceChildren(...candidateRows(report.search));
  }

  /* ---------- compare page ---------- */

  function scatter(points) {
    const W = 720, H = 320, L = 64, R = 16, T = 16, B = 44;
    const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
    const x0 = Math.min(...xs) * 0.95, x1 = Math.max(...xs) * 1.05;
    const y0 = Math.min(...ys) * 0.97, y1 = Math.max(...ys) * 1.03;
    const sx = (v) => L + ((v - x0) / (x1 - x0 || 1)) * (W - L - R);
    const sy = (v) => H - B - ((v - y0) / (y1 - y0 || 1)) * (H - T - B);
    const chart = node("svg:svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": "Size against perplexity of every finished job (table below)" });
    for (let k = 0; k <= 4; k += 1) {
      const xv = x0 + ((x1 - x0) * k) / 4, yv = y0 + ((y1 - y0) * k) / 4;
      chart.append(node("svg:text", { class: "tick", x: sx(xv), y: H - B + 16, "text-anchor": "middle" }, fmt(xv, 0)));
      chart.append(node("svg:text", { class: "tick", x: L - 6, y: sy(yv) + 4, "text-anchor": "end" }, fmt(yv, 2)));
      chart.append(node("svg:line", { class: "gridline", x1: L, x2: W - R, y1: sy(yv), y2: sy(yv) }));
    }
    chart.append(node("svg:text", { class: "y-label", x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" }, "size (MB)"));
    chart.append(node("svg:text", { class: "y-label", x: 12, y: (T + H - B) / 2, "text-anchor": "middle",
                                    transform: `rotate(-90 12 ${(T + H - B) / 2})` }, "perplexity"));
    for (const p of points) {
      const dot = node("svg:circle", { cx: sx(p.x), cy: sy(p.y), r: p.dense ? 6 : 4,
                                       class: p.goal ? "s1" : "s0", fill: p.dense ? "none" : "currentColor",
                                       stroke: "currentColor" },
                       node("svg:title", {}, `${p.label}: ${fmt(p.y, 3)} at ${fmt(p.x, 1)} MB`));
      chart.append(dot, node("svg:text", { class: "tick", x: sx(p.x) + 7, y: sy(p.y) - 7 }, p.short));
    }
    return chart;
  }

  async function showCompare() {
    const model = new URLSearchParams(location.search).get("model") || "";
    if (!model) return;
    document.getElementById("compare-title").textContent = `Compare jobs of ${model}`;
    const jobs = [];
    for (let offset = 0; offset < 1000; offset += 200) {
      const page = await get(`/jobs?state=succeeded&limit=200&offset=${offset}`);
      jobs.push(...page.jobs.filter((j) => j.model === model && j.metrics));
      if (offset + 200 >= page.total) break;
    }
    const rows = [], points = [];
    jobs.forEach((job, index) => {
      const after = job.metrics.after, before = job.metrics.before;
      if (!Number.isFinite(after.perplexity) || !Number.isFinite(after.size_bytes)) return;
      const label = job.name || job.id.slice(0, 8);
      points.push({ x: after.size_bytes / MB, y: after.perplexity, label, short: String(index + 1),
                    goal: Boolean(job.goal) });
      rows.push(node("tr", {},
        node("td", {}, node("a", { href: `/jobs/${job.id}`, text: `${index + 1}. ${label}` })),
        node("td", { text: (job.goal ? "search: " : "") + job.methods.join(", ") }),
        node("td", { class: "num", text: fmt(after.perplexity, 3) }),
        node("td", { class: "num", text: fmt(before.perplexity, 3) }),
        node("td", { class: "num", text: fmt(after.size_bytes / MB, 1) })));
    });
    const dense = jobs.find((j) => Number.isFinite(j.metrics.before.perplexity)
                                   && Number.isFinite(j.metrics.before.size_bytes));
    if (dense) {
      points.push({ x: dense.metrics.before.size_bytes / MB, y: dense.metrics.before.perplexity,
                    label: "dense original", short: "dense", dense: true });
    }
    document.querySelector("#compare-table tbody").replaceChildren(...rows);
    document.getElementById("compare-empty").hidden = rows.length > 0;
    document.getElementById("compare-chart").replaceChildren(...(points.length ? [scatter(points)] : []));
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    const fail = (id) => (err) => {
      const box = document.getElementById(id);
      if (box) box.textContent = `Could not load the search: ${err.message}`;
    };
    if (page === "job") showSearch(document.body.dataset.jobId).catch(fail("job-error-load"));
    if (page === "compare") showCompare().catch(fail("compare-error"));
  });
})();
