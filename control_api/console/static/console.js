/* Inventiv Agents console: reads and writes only through the control API (/api, same origin,
   session cookie). Writes send JSON (the API's CSRF rule). No inline script (CSP). */
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const page = document.body.dataset.page;
  const isAdmin = document.body.dataset.admin === "true";

  // ------------------------------------------------------------------ the API

  class ApiFailure extends Error {
    constructor(status, code, message, details) {
      super(message); this.status = status; this.code = code; this.details = details || [];
    }
  }

  async function api(path, opts) {
    opts = opts || {};
    const init = { method: opts.method || "GET", credentials: "same-origin",
                   headers: { "Accept": "application/json" } };
    if (init.method !== "GET") {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body || {});
    }
    const r = await fetch(path, init);
    if (r.status === 401 && page !== "login") {
      location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
      throw new ApiFailure(401, "unauthorized", "signed out");
    }
    if (r.status === 204) return null;
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const err = (data && data.error) || {};
      throw new ApiFailure(r.status, err.code || "http_error", err.message || r.statusText, err.details);
    }
    return data;
  }

  function qs(params) {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v !== null && v !== undefined && v !== "") u.append(k, v);
    }
    const s = u.toString();
    return s ? "?" + s : "";
  }

  // ------------------------------------------------------------------ rendering helpers

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children || []) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function fmtTime(v) {
    if (!v) return "";
    const d = new Date(v);
    return isNaN(d) ? String(v) : d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }
  function eur(v) {
    if (v === null || v === undefined) return "";
    const n = Number(v);
    return "€" + n.toLocaleString("en", { minimumFractionDigits: 2,
                                         maximumFractionDigits: n !== 0 && Math.abs(n) < 1 ? 4 : 2 });
  }
  function short(id) { return id ? String(id).slice(0, 8) : ""; }

  /* columns: [{label, get(row) -> string|Node, csv(row) -> string (optional), num}] */
  function table(tableEl, columns, rows, empty) {
    tableEl.replaceChildren();
    const head = el("thead", {}, [el("tr", {}, columns.map(c =>
      el("th", { scope: "col", class: c.num ? "num" : null, text: c.label })))]);
    const body = el("tbody");
    if (!rows.length) {
      body.append(el("tr", {}, [el("td", { colspan: String(columns.length),
                                           text: empty || "Nothing to show." })]));
    }
    for (const r of rows) {
      body.append(el("tr", {}, columns.map(c => {
        const v = c.get(r);
        const td = el("td", { class: c.num ? "num" : null });
        if (v instanceof Node) td.append(v); else td.textContent = v === null || v === undefined ? "" : String(v);
        return td;
      })));
    }
    tableEl.append(head, body);
    tableEl._csv = [columns.map(c => c.label)].concat(rows.map(r => columns.map(c => {
      const v = c.csv ? c.csv(r) : c.get(r);
      return v instanceof Node ? v.textContent : (v === null || v === undefined ? "" : String(v));
    })));
  }

  function bar(value, max) {
    const pct = max > 0 ? Math.max(0, Math.min(100, 100 * value / max)) : 0;
    const m = el("meter", { min: "0", max: "100", value: pct.toFixed(1), "aria-hidden": "true" });
    return m;
  }

  function csvText(rows) {
    return rows.map(r => r.map(v => {
      const s = String(v);
      return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
    }).join(",")).join("\r\n") + "\r\n";
  }

  document.addEventListener("click", ev => {
    const b = ev.target.closest("button.csv");
    if (!b) return;
    const t = document.getElementById(b.dataset.table);
    if (!t || !t._csv) return;
    const blob = new Blob([csvText(t._csv)], { type: "text/csv" });
    const a = el("a", { href: URL.createObjectURL(blob), download: (b.dataset.name || "export") + ".csv" });
    document.body.append(a); a.click(); a.remove();
  });

  function flash(message, kind) {
    const f = $("#flash");
    if (!f) return;
    f.className = kind || "info";
    f.textContent = message;
  }
  function showError(node, err) {
    if (!node) { flash(err.message, "error"); return; }
    node.hidden = false;
    node.textContent = err.message;
  }
  // A section the API refuses to this caller (e.g. platform-wide costs) is hidden, not an error.
  function hideSection(node) {
    const s = node.closest("section");
    if (s) s.hidden = true;
  }
  async function guarded(node, fn) {
    try { await fn(); } catch (err) {
      if (err.status === 403) hideSection(node);
      else if (err.status !== 401) flash(err.message, "error");
    }
  }

  // ------------------------------------------------------------------ every page

  const logout = $("#logout");
  if (logout) logout.addEventListener("click", async () => {
    try { await api("/api/auth/logout", { method: "POST" }); } catch (e) { /* signed out anyway */ }
    location.assign("/login");
  });

  // ------------------------------------------------------------------ sign-in

  function safeNext(n) {
    return n && n.startsWith("/") && !n.startsWith("//") && !n.startsWith("/\\") ? n : "/costs";
  }

  function initLogin() {
    const form = $("#login-form");
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      const errNode = $("#login-error");
      errNode.hidden = true;
      try {
        await api("/api/auth/login", { method: "POST", body: {
          username: $("#username").value, password: $("#password").value } });
        location.assign(safeNext(form.dataset.next));
      } catch (err) {
        showError(errNode, err.status === 401 ? new Error("Wrong username or password.") : err);
        $("#password").focus();
      }
    });
  }

  // ------------------------------------------------------------------ costs

  const SERIES_BUCKET = { hour: "minute", day: "hour", "7d": "hour", "30d": "day",
                          month: "day", "365d": "day" };
  let chart = null;

  async function loadSummary() {
    const s = await api("/api/finops/summary");
    const cards = [["Burn rate", eur(s.burn_rate_eur_per_hour) + " / h"],
                   ["Running instances", String(s.running_instances)],
                   ["Month to date", eur(s.month_to_date_eur)],
                   ["Month-end projection", eur(s.month_end_projection_eur)]];
    $("#summary").replaceChildren(...cards.flatMap(([k, v]) =>
      [el("div", { class: "card stat" }, [el("dt", { text: k }), el("dd", { text: v })])]));
    const order = ["minute", "hour", "day", "7d", "30d", "365d"];
    const rows = order.filter(k => k in s.windows).map(k => ({ k, v: s.windows[k] }));
    rows.push({ k: "month to date", v: s.month_to_date_eur });
    rows.push({ k: "month-end projection", v: s.month_end_projection_eur });
    table($("#windows"), [{ label: "Window", get: r => r.k },
                          { label: "EUR", num: true, get: r => eur(r.v), csv: r => r.v }], rows);
  }

  async function loadSeries() {
    const win = $("#series-window").value;
    const [s, f] = await Promise.all([
      api("/api/finops/series" + qs({ window: win, bucket: SERIES_BUCKET[win] })),
      api("/api/finops/forecast")]);
    const xs = [], actual = [], cumul = [], fore = [];
    for (const p of s.items) {
      xs.push(Date.parse(p.end) / 1000);
      actual.push(Number(p.cost_eur));
      cumul.push(Number(p.cumulative_eur));
      fore.push(null);
    }
    // Forecast: the cumulative cost carried forward at the projected rate, over a quarter of
    // the window past now (the month's end for "month to date").
    const rate = Number(f.projected_eur_per_hour);
    const last = xs.length ? xs[xs.length - 1] : Date.now() / 1000;
    const lastCum = cumul.length ? cumul[cumul.length - 1] : 0;
    const span = xs.length > 1 ? xs[xs.length - 1] - xs[0] : 3600;
    const horizon = win === "month" ? 0 : span / 4;
    const step = xs.length > 1 ? (xs[xs.length - 1] - xs[0]) / (xs.length - 1) : 3600;
    if (fore.length) fore[fore.length - 1] = lastCum;
    const n = win === "month" ? 0 : Math.max(1, Math.round(horizon / step));
    for (let i = 1; i <= n; i++) {
      const t = last + i * step;
      xs.push(t); actual.push(null); cumul.push(null);
      fore.push(lastCum + rate * (t - last) / 3600);
    }
    const data = [xs, actual, cumul, fore];
    const node = $("#chart");
    const width = Math.max(280, Math.min(node.parentElement.clientWidth || 800, 1100));
    const opts = {
      width, height: 300,
      scales: { x: { time: true } },
      series: [{},
        { label: "Actual (€ per bucket)", stroke: "#2563eb", width: 2, scale: "b",
          value: (u, v) => v === null ? "" : eur(v) },
        { label: "Cumulative (€)", stroke: "#16a34a", width: 2,
          value: (u, v) => v === null ? "" : eur(v) },
        { label: "Forecast (€)", stroke: "#d97706", width: 2, dash: [6, 4],
          value: (u, v) => v === null ? "" : eur(v) }],
      axes: [{}, { scale: "y", label: "cumulative €" },
             { scale: "b", side: 1, label: "€ per bucket", grid: { show: false } }],
    };
    if (chart) chart.destroy();
    chart = new uPlot(opts, data, node);
    node.dataset.points = String(s.items.length);
    $("#chart-caption").textContent =
      `${s.items.length} ${s.bucket} buckets, total ${eur(s.total_eur)}; ` +
      `forecast at ${eur(f.projected_eur_per_hour)}/h, month end ${eur(f.month_end_projection_eur)}.`;
    table($("#series-table"), [
      { label: "Start", get: p => fmtTime(p.start), csv: p => p.start },
      { label: "End", get: p => fmtTime(p.end), csv: p => p.end },
      { label: "Cost EUR", num: true, get: p => eur(p.cost_eur), csv: p => p.cost_eur },
      { label: "Cumulative EUR", num: true, get: p => eur(p.cumulative_eur), csv: p => p.cumulative_eur },
    ], s.items);
  }

  async function loadBreakdown() {
    const g = $("#breakdown-group").value;
    const c = await api("/api/finops/costs" + qs({ window: $("#breakdown-window").value, group_by: g }));
    const max = Math.max(0, ...c.items.map(i => Number(i.cost_eur)));
    table($("#breakdown-table"), [
      { label: g.replace("_", " "), get: i => i.name || i.key || "(none)" },
      { label: "EUR", num: true, get: i => eur(i.cost_eur), csv: i => i.cost_eur },
      { label: "Share", get: i => bar(Number(i.cost_eur), max),
        csv: i => Number(c.total_eur) ? (Number(i.cost_eur) / Number(c.total_eur)).toFixed(4) : "" },
    ], c.items, "No cost in this window.");
  }

  async function loadUnitCosts() {
    const u = await api("/api/finops/unit-costs" + qs({ window: "month" }));
    table($("#unit-table"), [
      { label: "Deployment", get: i => i.deployment || "(none)" },
      { label: "Cost EUR", num: true, get: i => eur(i.cost_eur), csv: i => i.cost_eur },
      { label: "Requests", num: true, get: i => i.requests },
      { label: "Tokens", num: true, get: i => i.prompt_tokens + i.completion_tokens },
      { label: "€ / M tokens", num: true, get: i => i.eur_per_million_tokens === null ? "—" : eur(i.eur_per_million_tokens),
        csv: i => i.eur_per_million_tokens },
      { label: "Idle share", num: true,
        get: i => i.idle_share === null ? "—" : (100 * Number(i.idle_share)).toFixed(1) + " %",
        csv: i => i.idle_share },
    ], u.items, "No deployment used this month.");
  }

  async function loadChargeback() {
    const c = await api("/api/finops/chargeback" + qs({ window: "month" }));
    const max = Math.max(0, ...c.by_org.map(i => Number(i.cost_eur)));
    table($("#chargeback-table"), [
      { label: "Org", get: i => i.org || "unallocated" },
      { label: "EUR", num: true, get: i => eur(i.cost_eur), csv: i => i.cost_eur },
      { label: "Share", get: i => bar(Number(i.cost_eur), max), csv: () => "" },
    ], c.by_org, "No charges this month.");
  }

  async function loadBudgets() {
    const b = await api("/api/finops/budgets");
    table($("#budgets-table"), [
      { label: "Scope", get: i => i.scope },
      { label: "Target", get: i => short(i.target_id), csv: i => i.target_id },
      { label: "Monthly EUR", num: true, get: i => eur(i.monthly_eur), csv: i => i.monthly_eur },
      { label: "Spent EUR", num: true, get: i => eur(i.spent_eur), csv: i => i.spent_eur },
      { label: "Used", num: true, get: i => i.ratio === null ? "" : (100 * Number(i.ratio)).toFixed(1) + " %",
        csv: i => i.ratio },
      { label: "State", get: i => el("span", { class: "state state-" + i.state, text: i.state }), csv: i => i.state },
      { label: "Since", get: i => fmtTime(i.state_changed_at), csv: i => i.state_changed_at },
    ], b.items, "No budgets.");
  }

  function initCosts() {
    if (isAdmin) {
      guarded($("#summary"), loadSummary);
      guarded($("#chart"), loadSeries);
      guarded($("#breakdown-table"), loadBreakdown);
      $("#series-window").addEventListener("change", () => guarded($("#chart"), loadSeries));
      for (const id of ["#breakdown-group", "#breakdown-window"]) {
        $(id).addEventListener("change", () => guarded($("#breakdown-table"), loadBreakdown));
      }
    } else {
      document.querySelectorAll("[data-admin-only]").forEach(s => { s.hidden = true; });
    }
    guarded($("#unit-table"), loadUnitCosts);
    guarded($("#chargeback-table"), loadChargeback);
    guarded($("#budgets-table"), loadBudgets);
  }

  // ------------------------------------------------------------------ pagination

  function pager(load) {
    const stack = [null];
    let next = null;
    const prevB = $("#prev-page"), nextB = $("#next-page");
    async function show(i) {
      const res = await load(stack[i]);
      next = res.next_cursor;
      stack.length = i + 1;
      prevB.disabled = i === 0;
      nextB.disabled = !next;
    }
    prevB.addEventListener("click", () => { stack.pop(); show(stack.length - 1).catch(e => flash(e.message, "error")); });
    nextB.addEventListener("click", () => { stack.push(next); show(stack.length - 1).catch(e => flash(e.message, "error")); });
    return { reset: () => { stack.length = 1; return show(0); } };
  }

  function formParams(form) {
    const out = {};
    for (const input of form.querySelectorAll("input, select")) {
      if (!input.name) continue;
      let v = input.value.trim();
      if (v && input.type === "datetime-local") v = v + ":00Z";
      out[input.name] = v;
    }
    return out;
  }

  // ------------------------------------------------------------------ instances

  const INSTANCE_COLUMNS = [
    { label: "Instance", get: i => el("a", { href: "/instances/" + i.id, text: i.launch_id }), csv: i => i.launch_id },
    { label: "State", get: i => el("span", { class: "state state-" + i.state, text: i.state }), csv: i => i.state },
    { label: "Provider", get: i => i.provider },
    { label: "Zone", get: i => i.zone || "" },
    { label: "Type", get: i => i.instance_type },
    { label: "Cluster", get: i => i.cluster_name },
    { label: "Since", get: i => fmtTime(i.state_entered_at), csv: i => i.state_entered_at },
  ];

  function initInstances() {
    const form = $("#instance-filter");
    const p = pager(async cursor => {
      const res = await api("/api/instances" + qs(Object.assign(formParams(form), { limit: 50, cursor })));
      table($("#instances-table"), INSTANCE_COLUMNS, res.items, "No instances match.");
      return res;
    });
    form.addEventListener("submit", ev => { ev.preventDefault(); p.reset().catch(e => flash(e.message, "error")); });
    p.reset().catch(e => flash(e.message, "error"));
  }

  function logColumns() {
    return [
      { label: "Time", get: a => fmtTime(a.created_at), csv: a => a.created_at },
      { label: "Type", get: a => a.type },
      { label: "Status", get: a => el("span", { class: "state state-" + a.status, text: a.status }), csv: a => a.status },
      { label: "Component", get: a => a.component },
      { label: "Instance", get: a => a.instance_id ? el("a", { href: "/instances/" + a.instance_id, text: short(a.instance_id) }) : "",
        csv: a => a.instance_id || "" },
      { label: "User", get: a => short(a.user_id), csv: a => a.user_id || "" },
      { label: "Error", get: a => [a.error_code, a.error_message].filter(Boolean).join(": ") },
    ];
  }

  async function loadInstance(id) {
    const i = await api("/api/instances/" + encodeURIComponent(id));
    document.title = i.launch_id + " · Inventiv Agents";
    $("h1").textContent = "Instance " + i.launch_id;
    const fields = [["State", i.state], ["Provider", i.provider], ["Zone", i.zone],
      ["Type", i.instance_type], ["Node type", i.node_type], ["Cluster", i.cluster_name],
      ["Provider id", i.provider_instance_id], ["Ray node", i.ray_node_id],
      ["Private IP", i.private_ip], ["Public IP", i.public_ip], ["Deployment", i.deployment_id],
      ["Since", fmtTime(i.state_entered_at)], ["Error", [i.error_code, i.error_message].filter(Boolean).join(": ")],
      ["Created", fmtTime(i.created_at)]];
    $("#instance-fields").replaceChildren(...fields.flatMap(([k, v]) =>
      [el("dt", { text: k }), el("dd", { id: "field-" + k.toLowerCase().replace(/ /g, "-"), text: v || "—" })]));
    table($("#history-table"), [
      { label: "At", get: h => fmtTime(h.at), csv: h => h.at },
      { label: "From", get: h => h.from_state || "" }, { label: "To", get: h => h.to_state },
      { label: "Reason", get: h => h.reason || "" }, { label: "Actor", get: h => h.actor || "" },
    ], i.history);
    table($("#billing-table"), [
      { label: "Started", get: b => fmtTime(b.started_at), csv: b => b.started_at },
      { label: "Ended", get: b => b.ended_at ? fmtTime(b.ended_at) : "open", csv: b => b.ended_at || "" },
      { label: "Type", get: b => b.instance_type }, { label: "Zone", get: b => b.zone || "" },
    ], i.billing_intervals, "No billing interval.");
    const logs = await api("/api/action-logs" + qs({ instance_id: id, limit: 100 }));
    table($("#instance-logs"), logColumns(), logs.items, "No action logs.");
    const t = $("#terminate");
    if (t) t.hidden = ["terminating", "terminated", "archived"].includes(i.state);
    const a = $("#archive");
    if (a) a.hidden = !["terminated", "failed"].includes(i.state);
    return i;
  }

  function initArchive(id) {
    const a = $("#archive");
    if (!a) return;
    a.addEventListener("click", async () => {
      if (!confirm("Archive this instance? It leaves the default lists; its history and costs stay.")) return;
      try {
        await api("/api/instances/" + encodeURIComponent(id) + "/archive", { method: "POST" });
        flash("Instance archived.", "ok");
        await loadInstance(id);
      } catch (e) { flash(e.message, "error"); }
    });
  }

  function initInstance() {
    const id = $("#instance").dataset.id;
    loadInstance(id).catch(e => flash(e.status === 404 ? "No such instance." : e.message, "error"));
    initArchive(id);
    const t = $("#terminate");
    if (!t) return;
    const dlg = $("#terminate-dialog");
    t.addEventListener("click", () => { dlg.showModal(); $("#terminate-reason").focus(); });
    $("#terminate-cancel").addEventListener("click", () => { dlg.close(); t.focus(); });
    $("#terminate-form").addEventListener("submit", async ev => {
      ev.preventDefault();
      dlg.close();
      try {
        const reason = $("#terminate-reason").value.trim();
        await api("/api/instances/" + encodeURIComponent(id) + "/terminate",
                  { method: "POST", body: reason ? { reason } : {} });
        flash("Termination requested.", "ok");
        await loadInstance(id);
        $("#history-table").focus();
      } catch (e) { flash(e.message, "error"); }
    });
  }

  // ------------------------------------------------------------------ deployments

  function boundsEditor(x) {
    const a = x.spec.autoscaling || {};
    const id = "b-" + x.id;
    const min = el("input", { id: id + "-min", type: "number", min: "0", value: String(a.min_replicas ?? 1) });
    const max = el("input", { id: id + "-max", type: "number", min: "1", value: String(a.max_replicas ?? 1) });
    const save = el("button", { type: "button", class: "small", text: "Save",
      "aria-label": "Save replica bounds of " + x.name,
      onclick: async () => {
        const spec = JSON.parse(JSON.stringify(x.spec));
        spec.autoscaling = Object.assign({}, spec.autoscaling || {},
          { min_replicas: Number(min.value), max_replicas: Number(max.value) });
        try {
          const res = await api("/api/deployments", { method: "POST", body: { spec: { deployments: [spec] } } });
          flash(`${x.name}: ${res.items.map(i => i.change).join(", ")}.`, "ok");
          await loadDeployments();
        } catch (e) { flash(e.message + detailText(e), "error"); }
      } });
    return el("div", { class: "bounds" }, [
      el("label", { for: id + "-min", class: "sr", text: "Minimum replicas of " + x.name }), min, "–",
      el("label", { for: id + "-max", class: "sr", text: "Maximum replicas of " + x.name }), max, save]);
  }

  function detailText(e) {
    const d = (e.details || []).filter(i => i.field || i.message);
    return d.length ? " " + d.map(i => `${i.field || ""}${i.line ? " (line " + i.line + ")" : ""}: ${i.message || ""}`).join("; ") : "";
  }

  async function loadDeployments() {
    const d = await api("/api/deployments");
    const cols = [
      { label: "Name", get: x => x.name },
      { label: "Model", get: x => (x.spec.model && x.spec.model.name) || "" },
      { label: "Status", get: x => el("span", { class: "state state-" + x.status, text: x.status }), csv: x => x.status },
      { label: "Message", get: x => x.status_message || "" },
      { label: "Replicas", get: x => isAdmin ? boundsEditor(x) : (() => { const a = x.spec.autoscaling || {}; return `${a.min_replicas ?? 1}–${a.max_replicas ?? 1}`; })(),
        csv: x => { const a = x.spec.autoscaling || {}; return `${a.min_replicas ?? 1}-${a.max_replicas ?? 1}`; } },
      { label: "Scale cap", get: x => x.scale_cap ? `${x.scale_cap.replicas} (${x.scale_cap.reason})` : "none" },
      { label: "Replica start", num: true, get: x => x.replica_start ? `${Math.round(x.replica_start.seconds)} s (${x.replica_start.source})` : "" },
      { label: "Version", num: true, get: x => x.version },
      { label: "Updated", get: x => fmtTime(x.updated_at), csv: x => x.updated_at },
    ];
    if (isAdmin) cols.push({ label: "Actions", csv: () => "", get: x => el("button", {
      type: "button", class: "danger small", text: "Delete", "aria-label": "Delete deployment " + x.name,
      onclick: async () => {
        if (!confirm(`Delete deployment ${x.name}? Serve stops running it.`)) return;
        try { await api("/api/deployments/" + encodeURIComponent(x.name), { method: "DELETE" });
              flash(`Deployment ${x.name} is being deleted.`, "ok"); await loadDeployments(); }
        catch (e) { flash(e.message, "error"); }
      } }) });
    table($("#deployments-table"), cols, d.items, "No deployments.");
  }

  function gotoLine(ta, line) {
    const lines = ta.value.split("\n");
    const start = lines.slice(0, Math.max(0, line - 1)).reduce((n, l) => n + l.length + 1, 0);
    ta.focus();
    ta.setSelectionRange(start, start + (lines[line - 1] || "").length);
  }

  function initDeployments() {
    guarded($("#deployments-table"), loadDeployments);
    const form = $("#apply-form");
    if (!form) return;
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      const box = $("#apply-errors"), list = $("#apply-list"), ta = $("#apply-yaml");
      box.hidden = true;
      list.replaceChildren();
      try {
        const res = await api("/api/deployments", { method: "POST", body: { yaml: ta.value } });
        flash(res.items.map(i => `${i.name}: ${i.change} (${i.status})`).join("; ") || "Applied.", "ok");
        await loadDeployments();
      } catch (e) {
        box.hidden = false;
        $("#apply-message").textContent = e.code === "invalid_deployment" ? "The file is not valid:" : e.message;
        for (const d of e.details || []) {
          const text = `${d.line ? "Line " + d.line + " — " : ""}${d.field || (d.loc || []).join(".")}: ${d.message || d.msg || ""}`;
          list.append(el("li", {}, [d.line ? el("button", { type: "button", class: "goto-line", text,
                                                              onclick: () => gotoLine(ta, d.line) })
                                           : el("span", { text })]));
        }
        const first = list.querySelector("button");
        if (first) first.focus();
      }
    });
  }

  // ------------------------------------------------------------------ keys

  function orgNames() {
    const m = JSON.parse($("#viewer-data").textContent || "[]");
    return Object.fromEntries(m.map(x => [x.org_id, x.org_name]));
  }

  async function loadKeys() {
    const names = orgNames();
    const k = await api("/api/api-keys");
    table($("#keys-table"), [
      { label: "Name", get: x => x.name }, { label: "Prefix", get: x => el("code", { text: x.prefix }), csv: x => x.prefix },
      { label: "Org", get: x => names[x.org_id] || short(x.org_id), csv: x => x.org_id },
      { label: "Limits", get: x => [x.rpm_limit && `${x.rpm_limit} rpm`, x.tpm_limit && `${x.tpm_limit} tpm`,
                                     x.monthly_budget_eur && `${eur(x.monthly_budget_eur)}/month`,
                                     x.allowed_models && x.allowed_models.join(" ")].filter(Boolean).join(", ") || "none" },
      { label: "Created", get: x => fmtTime(x.created_at), csv: x => x.created_at },
      { label: "Last used", get: x => fmtTime(x.last_used_at), csv: x => x.last_used_at || "" },
      { label: "State", get: x => x.revoked_at ? "revoked" : "active" },
      { label: "Actions", get: x => x.revoked_at ? "" : el("button", {
          type: "button", class: "danger small", text: "Revoke", "aria-label": "Revoke key " + x.name,
          onclick: async () => {
            if (!confirm(`Revoke key ${x.name}? Requests with it will be refused.`)) return;
            try { await api("/api/api-keys/" + x.id + "/revoke", { method: "POST" });
                  flash(`Key ${x.name} revoked.`, "ok"); await loadKeys(); }
            catch (e) { flash(e.message, "error"); }
          } }), csv: () => "" },
    ], k.items, "No keys yet.");
  }

  let snippetModel = "MODEL";

  function snippet(secret) {
    const configured = $("#key-form").dataset.openaiUrl;
    const base = configured || location.protocol + "//" + location.hostname + ":8000/v1";
    return [
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url="${base}", api_key="${secret}")`,
      "reply = client.chat.completions.create(",
      `    model="${snippetModel}", messages=[{"role": "user", "content": "Hello"}])`,
      "print(reply.choices[0].message.content)",
    ].join("\n");
  }

  function initKeys() {
    guarded($("#keys-table"), loadKeys);
    // The snippet names a model the caller's orgs may use, when there is one.
    api("/api/deployments").then(d => {
      const m = d.items.map(x => x.spec.model && x.spec.model.name).filter(Boolean);
      if (m.length) snippetModel = m[0];
    }).catch(() => {});
    $("#key-form").addEventListener("submit", async ev => {
      ev.preventDefault();
      const errNode = $("#key-error");
      errNode.hidden = true;
      const body = { name: $("#key-name").value.trim() };
      const org = $("#key-org").value; if (org) body.org_id = org;
      const models = $("#key-models").value.split(",").map(s => s.trim()).filter(Boolean);
      if (models.length) body.allowed_models = models;
      for (const [id, k] of [["#key-rpm", "rpm_limit"], ["#key-tpm", "tpm_limit"]]) {
        const v = $(id).value.trim(); if (v) body[k] = Number(v);
      }
      const b = $("#key-budget").value.trim(); if (b) body.monthly_budget_eur = b;
      try {
        const created = await api("/api/api-keys", { method: "POST", body });
        const box = $("#key-created");
        box.hidden = false;
        $("#key-secret").value = created.key;
        $("#key-snippet").value = snippet(created.key);
        box.focus();
        $("#key-form").reset();
        await loadKeys();
      } catch (e) { showError(errNode, e); }
    });
    $("#copy-key").addEventListener("click", async () => {
      const input = $("#key-secret");
      try { await navigator.clipboard.writeText(input.value); flash("Key copied.", "ok"); }
      catch (e) { input.select(); flash("Press Ctrl+C to copy the selected key.", "info"); }
    });
  }

  // ------------------------------------------------------------------ action logs

  function initLogs() {
    const form = $("#log-filter");
    const p = pager(async cursor => {
      const res = await api("/api/action-logs" + qs(Object.assign(formParams(form), { limit: 50, cursor })));
      table($("#logs-table"), logColumns(), res.items, "No logs match.");
      const counts = Object.entries(res.counts).map(([k, v]) => `${k}: ${v}`).join(", ");
      $("#log-counts").textContent = counts ? "Matches per status — " + counts : "No matches.";
      return res;
    });
    const run = () => { $("#log-error").hidden = true; p.reset().catch(e => showError($("#log-error"), e)); };
    form.addEventListener("submit", ev => { ev.preventDefault(); run(); });
    run();
  }

  // ------------------------------------------------------------------ catalog, profile

  async function loadCatalog() {
    const c = await api("/api/catalog/instance-types");
    table($("#catalog-table"), [
      { label: "Provider", get: t => t.provider }, { label: "Type", get: t => t.name },
      { label: "GPUs", num: true, get: t => t.gpu_count ? `${t.gpu_count} × ${t.gpu_model} ${t.gpu_vram_gb} GB` : "—" },
      { label: "vCPUs", num: true, get: t => t.vcpus }, { label: "RAM GB", num: true, get: t => t.ram_gb },
      { label: "EUR / h", num: true, get: t => t.hourly_eur === null ? "—" : eur(t.hourly_eur), csv: t => t.hourly_eur },
      { label: "Zones", get: t => t.zones.map(z => `${z.zone} (${z.availability})`).join(", ") },
    ], c.items, "The catalog is empty.");
    const sel = $("#price-type");
    if (sel && !sel.options.length) {
      for (const t of c.items) sel.append(el("option", { value: t.id, text: `${t.provider} ${t.name}` }));
    }
  }

  function initCatalog() {
    guarded($("#catalog-table"), loadCatalog);
    const form = $("#price-form");
    if (!form) return;
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      try {
        await api("/api/catalog/instance-types/" + $("#price-type").value + "/prices", { method: "POST",
          body: { hourly_eur: $("#price-eur").value.trim(), effective_from: $("#price-from").value + ":00Z" } });
        flash("Price version added.", "ok");
        form.reset();
        await loadCatalog();
      } catch (e) { flash(e.message + detailText(e), "error"); }
    });
  }

  async function loadSessions() {
    const r = await api("/api/sessions");
    table($("#sessions-table"), [
      { label: "Signed in", get: x => fmtTime(x.created_at), csv: x => x.created_at },
      { label: "Expires", get: x => fmtTime(x.expires_at), csv: x => x.expires_at },
      { label: "Address", get: x => x.ip || "" },
      { label: "Browser", get: x => x.user_agent || "" },
      { label: "", csv: () => "", get: x => x.current
          ? el("span", { class: "badge", text: "this session" })
          : el("button", { type: "button", class: "danger small", text: "Sign out",
              "aria-label": "Sign out the session from " + fmtTime(x.created_at),
              onclick: async () => {
                try { await api("/api/sessions/" + x.id, { method: "DELETE" });
                      flash("That session is signed out.", "ok"); await loadSessions();
                      $("#sessions-table").focus(); }
                catch (e) { flash(e.message, "error"); }
              } }) },
    ], r.items, "No other session.");
  }

  function initProfile() {
    $("#sessions-table").setAttribute("tabindex", "-1");
    guarded($("#sessions-table"), loadSessions);
    $("#password-form").addEventListener("submit", async ev => {
      ev.preventDefault();
      const errNode = $("#password-error");
      errNode.hidden = true;
      try {
        await api("/api/auth/password", { method: "POST", body: {
          current_password: $("#pw-current").value, new_password: $("#pw-new").value } });
        $("#password-form").reset();
        flash("Password changed; your other sessions were signed out.", "ok");
      } catch (e) { showError(errNode, e); }
    });
  }

  // ------------------------------------------------------------------ people

  async function loadMembers(org) {
    const sec = $("#members-section");
    sec.hidden = false;
    sec.dataset.org = org.id;
    $("#members-org").textContent = org.name;
    const m = await api("/api/orgs/" + org.id + "/members");
    table($("#members-table"), [
      { label: "User", get: x => x.username }, { label: "Email", get: x => x.email },
      { label: "Role", get: x => x.role },
      { label: "Since", get: x => fmtTime(x.created_at), csv: x => x.created_at },
    ], m.items, "No members.");
    await loadInvitations(org);
  }

  // Pending invitations of an org (its admins): hidden when the API refuses or lacks the route.
  async function loadInvitations(org) {
    const sec = $("#invitations-section");
    const mine = JSON.parse($("#viewer-data").textContent || "[]").find(x => x.org_id === org.id);
    const orgAdmin = isAdmin || (mine && (mine.role === "admin" || mine.role === "owner"));
    if (sec.dataset.api !== "yes" || !orgAdmin) { sec.hidden = true; return; }
    let inv;
    try { inv = await api("/api/orgs/" + org.id + "/invitations"); }
    catch (e) {
      if ([403, 404, 405].includes(e.status)) { sec.hidden = true; return; }
      throw e;
    }
    sec.hidden = false;
    table($("#invitations-table"), [
      { label: "User", get: x => x.username || short(x.user_id), csv: x => x.username || x.user_id },
      { label: "Role", get: x => x.role },
      { label: "Invited", get: x => fmtTime(x.created_at), csv: x => x.created_at },
      { label: "", csv: () => "", get: x => el("button", { type: "button", class: "danger small",
          text: "Cancel", "aria-label": "Cancel the invitation of " + (x.username || short(x.user_id)),
          onclick: async () => {
            try { await api("/api/orgs/" + org.id + "/invitations/" + x.id, { method: "DELETE" });
                  flash("Invitation cancelled.", "ok"); await loadInvitations(org); }
            catch (e) { flash(e.message, "error"); }
          } }) },
    ], inv.items || [], "No pending invitation.");
  }

  async function resetLink(u) {
    try {
      const r = await api("/api/users/" + u.id + "/reset-link", { method: "POST" });
      const box = $("#reset-created");
      box.hidden = false;
      $("#reset-user").textContent = u.username;
      $("#reset-expires").textContent = fmtTime(r.expires_at);
      $("#reset-url").value = location.origin + r.url;
      box.focus();
    } catch (e) { flash(e.message, "error"); }
  }

  async function initPeople() {
    const orgs = await api("/api/orgs");
    table($("#orgs-table"), [
      { label: "Name", get: o => el("button", { type: "button", class: "link-button", text: o.name,
          "aria-label": "Show members of " + o.name,
          onclick: () => loadMembers(o).then(() => $("#h-members").focus()).catch(e => flash(e.message, "error")) }),
        csv: o => o.name },
      { label: "Display name", get: o => o.display_name || "" },
      { label: "Created", get: o => fmtTime(o.created_at), csv: o => o.created_at },
    ], orgs.items, "You are in no organisation.");
    $("#member-form").addEventListener("submit", async ev => {
      ev.preventDefault();
      const id = $("#members-section").dataset.org;
      try {
        await api("/api/orgs/" + id + "/members", { method: "POST", body: {
          username: $("#member-username").value.trim(), role: $("#member-role").value } });
        flash("Done: the user is a member, or has an invitation to accept.", "ok");
        $("#member-form").reset();
        const org = orgs.items.find(o => o.id === id);
        if (org) await loadMembers(org);
      } catch (e) { flash(e.message, "error"); }
    });
    const users = await api("/api/users");
    table($("#users-table"), [
      { label: "User", get: u => u.username }, { label: "Email", get: u => u.email },
      { label: "Platform admin", get: u => u.is_platform_admin ? "yes" : "no" },
      { label: "Active", get: u => u.is_active ? "yes" : "no" },
      { label: "Created", get: u => fmtTime(u.created_at), csv: u => u.created_at },
    ].concat(isAdmin ? [{ label: "Password", csv: () => "", get: u => el("button", {
        type: "button", class: "small", text: "Reset link",
        "aria-label": "Make a password-reset link for " + u.username, onclick: () => resetLink(u) }) }] : []),
    users.items, "No users visible.");
    const copy = $("#copy-reset");
    if (copy) copy.addEventListener("click", async () => {
      const input = $("#reset-url");
      try { await navigator.clipboard.writeText(input.value); flash("Link copied.", "ok"); }
      catch (e) { input.select(); flash("Press Ctrl+C to copy the selected link.", "info"); }
    });
  }

  // ------------------------------------------------------------------ password reset (public)

  function initReset() {
    const token = decodeURIComponent(location.hash.slice(1));
    // The token leaves the address bar (and the history entry) at once.
    history.replaceState(null, "", location.pathname);
    $("#reset-form").addEventListener("submit", async ev => {
      ev.preventDefault();
      const errNode = $("#reset-error");
      errNode.hidden = true;
      const pw = $("#reset-new").value;
      if (pw.length < 8) { showError(errNode, new Error("Use 8 characters or more.")); return; }
      if (pw !== $("#reset-again").value) { showError(errNode, new Error("The two passwords differ.")); return; }
      try {
        await api("/api/auth/password-reset", { method: "POST", body: { token, new_password: pw } });
        $("#reset-form").hidden = true;
        const done = $("#reset-done"); done.hidden = false; done.focus();
      } catch (e) { showError(errNode, e); }
    });
  }

  // ------------------------------------------------------------------ playground

  const chatHistory = [];
  let chatAbort = null;

  async function loadChatModels() {
    const org = $("#chat-org").value;
    const sel = $("#chat-model");
    sel.replaceChildren();
    if (!org) { showError($("#chat-error"), new Error("You need a member role in an organisation to chat.")); return; }
    const r = await api("/api/playground/models" + qs({ org_id: org }));
    for (const m of r.items) {
      sel.append(el("option", { value: m.model, text: `${m.model} (${m.deployment}, ${m.status}${m.priced ? ", priced" : ""})` }));
    }
    if (!r.items.length) showError($("#chat-error"), new Error("No chat deployment is open to this organisation."));
    else $("#chat-error").hidden = true;
  }

  function chatEntry(role, text) {
    const body = el("span", { class: "text", text });
    const li = el("li", { class: role }, [el("span", { class: "who-said", text: role === "user" ? "You" : "Model" }), body]);
    $("#chat-log").append(li);
    return { li, body };
  }

  // The answer arrives as server-sent events over a POST (fetch + a stream reader: EventSource
  // only GETs); each "data:" line is one JSON object (see control_api/routes/playground.py).
  async function* sseEvents(response) {
    const reader = response.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        for (const line of block.split("\n")) {
          if (line.startsWith("data:")) yield JSON.parse(line.slice(5));
        }
      }
    }
  }

  function chatStats(d) {
    const u = d.usage || {};
    const cost = d.cost_eur === null ? "cost not known yet" :
      eur(d.cost_eur) + (d.cost_basis === "price" ? "" : " (estimate at this month's € per million tokens)");
    return `${u.prompt_tokens ?? "?"} prompt + ${u.completion_tokens ?? "?"} completion tokens · ${cost} · ` +
           `${d.seconds} s${d.first_token_seconds !== null ? `, first token after ${d.first_token_seconds} s` : ""}` +
           `${d.finish_reason ? " · finish: " + d.finish_reason : ""}`;
  }

  async function sendChat() {
    const errNode = $("#chat-error");
    errNode.hidden = true;
    const text = $("#chat-input").value.trim();
    if (!text) { showError(errNode, new Error("Write a message first.")); $("#chat-input").focus(); return; }
    chatHistory.push({ role: "user", content: text });
    chatEntry("user", text);
    $("#chat-input").value = "";
    const system = $("#chat-system").value.trim();
    const body = { org_id: $("#chat-org").value, model: $("#chat-model").value,
                   messages: (system ? [{ role: "system", content: system }] : []).concat(chatHistory) };
    const max = $("#chat-max").value.trim(); if (max) body.max_tokens = Number(max);
    const temp = $("#chat-temp").value.trim(); if (temp) body.temperature = Number(temp);
    const answer = chatEntry("assistant", "");
    answer.li.setAttribute("aria-busy", "true");
    $("#chat-stats").textContent = "Answering…";
    $("#chat-send").disabled = true; $("#chat-stop").disabled = false;
    chatAbort = new AbortController();
    let got = "";
    try {
      const r = await fetch("/api/playground/chat", { method: "POST", credentials: "same-origin",
        signal: chatAbort.signal,
        headers: { "Content-Type": "application/json", "Accept": "text/event-stream" },
        body: JSON.stringify(body) });
      if (!r.ok) {
        let msg = r.statusText;
        try { msg = ((await r.json()).error || {}).message || msg; } catch (e) { /* not JSON */ }
        throw new ApiFailure(r.status, "http_error", msg);
      }
      for await (const ev of sseEvents(r)) {
        if (ev.type === "delta") {
          got += ev.content;
          answer.body.textContent = got;
          answer.li.dataset.chunks = String(Number(answer.li.dataset.chunks || 0) + 1);
        } else if (ev.type === "done") {
          $("#chat-stats").textContent = chatStats(ev);
          $("#chat-stats").dataset.done = JSON.stringify(ev);
        } else if (ev.type === "error") {
          throw new Error(ev.message);
        }
      }
      chatHistory.push({ role: "assistant", content: got });
    } catch (e) {
      chatHistory.pop();
      if (e.name === "AbortError") $("#chat-stats").textContent = "Stopped.";
      else { $("#chat-stats").textContent = ""; showError(errNode, e); }
      if (!got) answer.li.remove();
    } finally {
      answer.li.removeAttribute("aria-busy");
      $("#chat-send").disabled = false; $("#chat-stop").disabled = true;
      chatAbort = null;
      $("#chat-input").focus();
    }
  }

  function initPlayground() {
    $("#chat-org").addEventListener("change", () => guarded($("#chat-model"), loadChatModels));
    guarded($("#chat-model"), loadChatModels);
    $("#chat-form").addEventListener("submit", ev => { ev.preventDefault(); sendChat(); });
    $("#chat-input").addEventListener("keydown", ev => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); sendChat(); }
    });
    $("#chat-stop").addEventListener("click", () => { if (chatAbort) chatAbort.abort(); });
    $("#chat-clear").addEventListener("click", () => {
      chatHistory.length = 0; $("#chat-log").replaceChildren(); $("#chat-stats").textContent = "";
    });
  }

  const INIT = { login: initLogin, costs: initCosts, instances: initInstances,
                 instance: initInstance, deployments: initDeployments,
                 keys: initKeys, logs: initLogs, catalog: initCatalog,
                 profile: initProfile, reset: initReset, playground: initPlayground,
                 people: () => initPeople().catch(e => flash(e.message, "error")) };
  if (INIT[page]) INIT[page]();
})();
