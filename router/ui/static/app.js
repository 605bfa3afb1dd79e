// The status page: GET /v2/status every 2 s with the token kept in sessionStorage; a form
// that creates and updates deployments (its fields from the API's own schema in
// /openapi.json), delete with a confirmation; a health view per deployment
// (GET /v2/deployments/{name}/health); and a playground that streams a completion from a
// deployment's OpenAI route. No libraries.
"use strict";

const TOKEN_KEY = "wakegate.token";
const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

let overview = null;
let timer = null;

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function authHeaders() {
  return { "Authorization": "Bearer " + token(), "Content-Type": "application/json" };
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function errorText(body, status) {
  const e = body && body.error;
  if (typeof e === "string") return e;
  if (e && e.message) return e.message;
  return "HTTP " + status;
}

// --- signing in -------------------------------------------------------------------------------

function showLogin(message) {
  if (timer) clearInterval(timer);
  timer = null;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("new-deployment").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("new-deployment").hidden = false;
  refresh();
  if (!timer) timer = setInterval(refresh, REFRESH_MS);
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  showApp();
});

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  overview = null;
  showLogin("");
});

// --- the overview -----------------------------------------------------------------------------

async function refresh() {
  let res;
  try {
    res = await fetch("/v2/status", { headers: authHeaders() });
  } catch (err) {
    $("error").textContent = "the gateway cannot be reached: " + err.message;
    return;
  }
  const body = await res.json().catch(() => null);
  if (res.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(errorText(body, res.status));
    return;
  }
  if (!res.ok) {
    $("error").textContent = errorText(body, res.status);
    return;
  }
  $("error").textContent = "";
  overview = body;
  render(body);
  refreshHealth();
}

function render(view) {
  $("tenant").textContent = "tenant " + view.tenant;
  $("updated").textContent = "updated " + clock(view.at);
  const list = $("deployments");
  list.replaceChildren();
  if (view.deployments.length === 0) {
    list.append(el("p", { class: "muted" }, "No deployments yet."));
  }
  for (const d of view.deployments) list.append(card(d, view));
  fillPlayground(view);
}

function stat(name, label, value) {
  return el("span", { class: "stat", "data-stat": name }, label + " ", el("b", {}, value));
}

function card(d, view) {
  const r = d.replicas;
  const head = el("div", { class: "dep-head" },
    el("h2", {}, d.name),
    el("span", { class: "status " + d.status }, d.status),
    stat("ready", "ready", r.ready),
    stat("starting", "starting", r.starting),
    stat("draining", "draining", r.draining),
    stat("queued", "queued", d.queued),
    stat("in-flight", "in flight", d.inFlight),
    el("span", { class: "muted" }, `${d.baseModel} · ${d.minReplicas}–${d.maxReplicas} replicas`),
    actions(d));
  const section = el("section", { class: "card deployment", "data-name": d.name }, head);
  if (d.waitingForCapacity) {
    section.append(el("p", { class: "error" }, "waiting for capacity: " + d.waitingForCapacity));
  }
  if (d.lastDecision) {
    const x = d.lastDecision;
    section.append(el("p", { class: "last-decision" },
      `last decision ${clock(x.at)}: ${x.current} → ${x.desired} (${x.reason})`));
  }
  section.append(chart(d.history, view.at, Math.min(view.windowS, Number($("window").value))));
  section.append(el("div", { class: "legend" },
    legend("var(--ready)", "replicas"), legend("var(--starting)", "of them starting"),
    legend("var(--queued)", "queued"), legend("var(--inflight)", "in flight")));
  const decisions = el("ul", { class: "log decisions" });
  for (const x of d.decisions) {
    decisions.append(el("li", {}, el("time", {}, clock(x.at)),
      `${x.current} → ${x.desired}: ${x.reason}`));
  }
  if (d.decisions.length === 0) decisions.append(el("li", { class: "muted" }, "none yet"));
  const events = el("ul", { class: "log events" });
  for (const e of d.events) {
    const at = Date.parse(e.timestamp) / 1000;
    events.append(el("li", {}, el("time", {}, isNaN(at) ? e.timestamp : clock(at)),
      e.type + (e.message ? ": " + e.message : "")));
  }
  section.append(el("div", { class: "cols" },
    el("div", {}, el("h3", {}, "Scaling decisions"), decisions),
    el("div", {}, el("h3", {}, "Events"), events)));
  return section;
}

function legend(color, label) {
  const i = el("i");
  i.style.background = color;
  return el("span", {}, i, label);
}

// A step chart of the last hour (or less): replicas (starting or ready), starting ones, queued
// and in-flight requests.
function chart(points, now, windowS) {
  const W = 600, H = 120, L = 28, B = 16, T = 6;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const start = now - windowS;
  // The points within the window and the one in force when it opens.
  const opening = points.filter((p) => p.at <= start).pop();
  points = [...(opening ? [opening] : []), ...points.filter((p) => p.at > start)];
  const top = Math.max(1, ...points.map((p) => Math.max(p.queued, p.inFlight, p.ready + p.starting)));
  const x = (t) => L + ((Math.max(t, start) - start) / windowS) * (W - L - 4);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const line = (cls, value) => {
    let d = "";
    points.forEach((p, i) => {
      d += i === 0 ? `M${x(p.at)},${y(value(p))}` : `H${x(p.at)}V${y(value(p))}`;
    });
    d += `H${x(now)}`;
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("class", cls);
    path.setAttribute("d", d);
    svg.append(path);
  };
  const text = (tx, ty, s, anchor) => {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", tx);
    t.setAttribute("y", ty);
    if (anchor) t.setAttribute("text-anchor", anchor);
    t.textContent = s;
    svg.append(t);
  };
  const axis = document.createElementNS(SVG, "path");
  axis.setAttribute("class", "axis");
  axis.setAttribute("d", `M${L},${T}V${H - B}H${W - 4}`);
  svg.append(axis);
  text(L - 4, T + 8, String(top), "end");
  text(L - 4, H - B, "0", "end");
  text(L, H - 3, `-${Math.round(windowS / 60)} min`);
  const half = windowS / 120;
  text((L + W) / 2, H - 3, `-${Number.isInteger(half) ? half : half.toFixed(1)} min`, "middle");
  text(W - 4, H - 3, "now", "end");
  if (points.length) {
    line("inflight", (p) => p.inFlight);
    line("queued", (p) => p.queued);
    line("starting", (p) => p.starting);
    line("replicas", (p) => p.ready + p.starting);
  }
  return svg;
}

// --- playground -------------------------------------------------------------------------------

function setOptions(select, values) {
  const have = Array.from(select.options).map((o) => o.value);
  if (have.join("\n") === values.join("\n")) return;
  const keep = select.value;
  select.replaceChildren(...values.map((v) => el("option", { value: v }, v)));
  if (values.includes(keep)) select.value = keep;
}

function fillPlayground(view) {
  setOptions($("pg-deployment"), view.deployments.map((d) => d.name));
  const d = view.deployments.find((x) => x.name === $("pg-deployment").value);
  setOptions($("pg-model"), d ? [d.baseModel, ...d.adapters] : []);
  $("pg-send").disabled = !d;
}

$("window").addEventListener("change", () => overview && render(overview));

$("pg-deployment").addEventListener("change", () => overview && fillPlayground(overview));

$("pg-send").addEventListener("click", async () => {
  const name = $("pg-deployment").value;
  const out = $("pg-output");
  out.textContent = "";
  $("pg-ttft").textContent = "…";
  $("pg-cold").textContent = "…";
  $("pg-send").disabled = true;
  try {
    // Cold: the deployment had no ready replica when the prompt was sent (read just before).
    await refresh();
    const d = overview && overview.deployments.find((x) => x.name === name);
    if (!d) throw new Error("deployment " + name + " is gone");
    const cold = d.replicas.ready === 0;
    $("pg-cold").textContent = cold ? "yes (0 ready replicas)" : "no";
    $("pg-state").textContent = cold ? "waking the deployment…" : "generating…";
    const started = performance.now();
    const url = `/${encodeURIComponent(overview.tenant)}/deployments/v2/llms/` +
      `${encodeURIComponent(name)}/v1/completions`;
    const res = await fetch(url, {
      method: "POST",
      headers: authHeaders(),
      body: JSON.stringify({
        model: $("pg-model").value,
        prompt: $("pg-prompt").value,
        max_tokens: Number($("pg-max-tokens").value) || 64,
        stream: true,
      }),
    });
    refresh();
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      throw new Error(errorText(body, res.status));
    }
    let first = true;
    await readEvents(res, (data) => {
      if (data.error) throw new Error(errorText(data, 500));
      const text = (data.choices && data.choices[0] && data.choices[0].text) || "";
      if (text && first) {
        first = false;
        $("pg-ttft").textContent = ((performance.now() - started) / 1000).toFixed(2) + " s";
        $("pg-state").textContent = "streaming…";
      }
      out.textContent += text;
    });
    $("pg-state").textContent = "done";
  } catch (err) {
    $("pg-state").textContent = "";
    out.textContent += (out.textContent ? "\n" : "") + "error: " + err.message;
    if ($("pg-ttft").textContent === "…") $("pg-ttft").textContent = "-";
  } finally {
    $("pg-send").disabled = false;
  }
});

// Server-sent events: `data:` lines, events split by blank lines; comments (keep-alives) and
// OpenAI's closing [DONE] skipped.
async function readEvents(res, onData) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let carry = "";  // a "\r" at a chunk's end may be half of a "\r\n"
  for (;;) {
    const { value, done } = await reader.read();
    let text = carry + decoder.decode(value || new Uint8Array(), { stream: !done });
    carry = !done && text.endsWith("\r") ? "\r" : "";
    if (carry) text = text.slice(0, -1);
    buffer += text.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (data && data !== "[DONE]") onData(JSON.parse(data));
    }
    if (done) return;
  }
}

// --- managing deployments ---------------------------------------------------------------------

// The fields shown first; every other field of the API's ConfigUpdate schema goes under
// "More fields". The fields themselves (names, types, choices) come from /openapi.json only.
const FIRST_FIELDS = ["baseModel", "minReplicas", "maxReplicas", "cooldownTime",
  "scaleUpRequestThreshold", "customArgs"];
let schema = null;   // { props: ConfigUpdate's properties, defs: every component schema }
let editing = null;  // null: the form creates; else the deployment (API object) it updates

function actions(d) {
  const box = el("span", { class: "actions" });
  if (d.status === "deleting") return box;
  const button = (label, cls, onClick) => {
    const b = el("button", { type: "button", class: cls }, label);
    b.addEventListener("click", onClick);
    return b;
  };
  box.append(
    button("Health", "show-health", () => showHealth(d.name)),
    button("Edit", "edit", () => openForm(d.name)),
    button("Delete", "delete danger", () => askDelete(d.name)));
  return box;
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method, headers: authHeaders(), body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => null);
  return { res, json };
}

async function loadSchema() {
  if (schema) return schema;
  const res = await fetch("/openapi.json");
  if (!res.ok) throw new Error("the API's schema cannot be read: HTTP " + res.status);
  const doc = await res.json();
  schema = { props: doc.components.schemas.ConfigUpdate.properties, defs: doc.components.schemas };
  buildFields();
  return schema;
}

// A property's schema without its `null` branch, a $ref followed.
function shape(prop) {
  let s = prop;
  if (s.anyOf) s = s.anyOf.find((b) => b.type !== "null") || s.anyOf[0];
  if (s.$ref) return { type: "object", ref: s.$ref.split("/").pop() };
  return s;
}

function kindOf(s) {
  if (s.enum) return "choice";
  if (s.type === "boolean") return "bool";
  if (s.type === "integer" || s.type === "number") return "number";
  if (s.type === "array") return "list";
  if (s.type === "object") return "json";
  return "text";
}

function hint(s, kind) {
  if (kind === "number") {
    const lo = s.minimum ?? s.exclusiveMinimum, hi = s.maximum ?? s.exclusiveMaximum;
    return lo !== undefined && hi !== undefined ? `${lo}–${hi}` : "a number";
  }
  if (kind === "list") return "one per line";
  if (kind === "json") return `JSON (${s.ref})`;
  return "";
}

function buildFields() {
  const first = $("config-fields"), more = $("config-more");
  first.replaceChildren();
  more.replaceChildren();
  const names = Object.keys(schema.props);
  const ordered = [...FIRST_FIELDS.filter((n) => names.includes(n)),
    ...names.filter((n) => !FIRST_FIELDS.includes(n))];
  for (const name of ordered) {
    const s = shape(schema.props[name]);
    const kind = kindOf(s);
    let input;
    if (kind === "choice" || kind === "bool") {
      const values = kind === "bool" ? ["true", "false"] : s.enum.map(String);
      input = el("select", {}, el("option", { value: "" }, "(default)"),
        ...values.map((v) => el("option", { value: v }, v)));
    } else if (kind === "list" || kind === "json") {
      input = el("textarea", { rows: kind === "json" ? 3 : 2, placeholder: hint(s, kind) });
    } else {
      input = el("input", { autocomplete: "off", placeholder: hint(s, kind) });
      if (name === "hfToken") input.type = "password";
    }
    input.name = "config." + name;
    input.dataset.kind = kind;
    const label = el("label", { class: "field", "data-field": "config." + name }, name, input,
      el("span", { class: "field-error", "data-error-for": "config." + name }));
    (FIRST_FIELDS.includes(name) ? first : more).append(label);
  }
}

function configInputs() {
  return Array.from($("deploy-form").querySelectorAll("[name^='config.']"));
}

// The text an input shows for a value the API gave.
function shown(kind, value) {
  if (value === null || value === undefined) return "";
  if (kind === "list") return value.join("\n");
  if (kind === "json") return JSON.stringify(value);
  return String(value);
}

// An input's value as JSON for the API; undefined when empty. A number that does not read
// as one goes as typed, for the API to refuse with its own message.
function valueOf(input) {
  const raw = input.value.trim();
  if (raw === "") return undefined;
  switch (input.dataset.kind) {
    case "number": return /^-?\d+(\.\d+)?$/.test(raw) ? Number(raw) : raw;
    case "bool": return raw === "true";
    case "list": return raw.split("\n").map((l) => l.trim()).filter((l) => l);
    case "json":
      try { return JSON.parse(raw); } catch (err) { throw { field: input.name, message: "not JSON: " + err.message }; }
    default: return raw;
  }
}

function clearErrors() {
  for (const e of $("deploy-form").querySelectorAll(".field-error")) e.textContent = "";
  for (const e of $("deploy-form").querySelectorAll(".field.invalid")) e.classList.remove("invalid");
  $("deploy-error").textContent = "";
}

// The API's message beside the field it names (a nested one, config.scalingPolicy.params.x,
// beside its top field); elsewhere at the form's foot.
function showError(field, message) {
  const form = $("deploy-form");
  let path = field || "";
  while (path && !form.querySelector(`[data-error-for="${CSS.escape(path)}"]`)) {
    path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
  }
  const text = field && message.startsWith(field + ": ") ? message.slice(field.length + 2) : message;
  if (!path) {
    $("deploy-error").textContent = text;
    return;
  }
  const label = form.querySelector(`.field[data-field="${CSS.escape(path)}"]`);
  label.classList.add("invalid");
  form.querySelector(`[data-error-for="${CSS.escape(path)}"]`).textContent =
    path === field ? text : `${field}: ${text}`;
  if (label.closest("details")) label.closest("details").open = true;
}

async function openForm(name) {
  try {
    await loadSchema();
  } catch (err) {
    $("error").textContent = err.message;
    return;
  }
  clearErrors();
  $("deploy-state").textContent = "";
  editing = null;
  let config = {};
  if (name) {
    const { res, json } = await api("GET", "/v2/deployments/" + encodeURIComponent(name));
    if (!res.ok) {
      $("error").textContent = errorText(json, res.status);
      return;
    }
    editing = json.data;
    config = editing.config || {};
  }
  $("deploy-title").textContent = editing ? "Update " + editing.name : "New deployment";
  $("deploy-submit").textContent = editing ? "Update" : "Create";
  $("deploy-name").value = editing ? editing.name : "";
  $("deploy-name").disabled = !!editing;
  $("deploy-description").value = editing ? editing.description || "" : "";
  for (const input of configInputs()) {
    input.value = shown(input.dataset.kind, config[input.name.slice(7)]);
    input.dataset.was = input.value;
  }
  $("deploy-form").hidden = false;
  $("deploy-form").scrollIntoView({ block: "start" });
}

$("new-deployment").addEventListener("click", () => openForm(null));
$("deploy-cancel").addEventListener("click", () => { $("deploy-form").hidden = true; });

$("deploy-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  clearErrors();
  const config = {};
  try {
    for (const input of configInputs()) {
      // An update sends what changed only (absent: unchanged); hfToken is never shown back.
      if (editing && input.value === input.dataset.was) continue;
      const value = valueOf(input);
      if (value !== undefined) config[input.name.slice(7)] = value;
      else if (editing) throw { field: input.name, message: "cannot be emptied by an update; give a value" };
    }
  } catch (err) {
    showError(err.field, err.message);
    return;
  }
  const description = $("deploy-description").value.trim();
  let call;
  if (editing) {
    const body = { config };
    if (description !== (editing.description || "")) body.description = description;
    call = api("PUT", "/v2/deployments/" + encodeURIComponent(editing.name), body);
  } else {
    const body = { name: $("deploy-name").value.trim(), config };
    if (description) body.description = description;
    call = api("POST", "/v2/deployments", body);
  }
  $("deploy-submit").disabled = true;
  $("deploy-state").textContent = editing ? "updating…" : "creating…";
  try {
    const { res, json } = await call;
    if (!res.ok) {
      $("deploy-state").textContent = "";
      showError(json && json.field, errorText(json, res.status));
      return;
    }
    $("deploy-state").textContent = (editing ? "updated " : "created ") + json.data.name;
    $("deploy-form").hidden = true;
    refresh();
  } catch (err) {
    $("deploy-state").textContent = "";
    $("deploy-error").textContent = "the gateway cannot be reached: " + err.message;
  } finally {
    $("deploy-submit").disabled = false;
  }
});

function askDelete(name) {
  const dialog = $("confirm-delete");
  $("confirm-name").textContent = name;
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "yes") return;
    if (healthOf === name) closeHealth();
    if (editing && editing.name === name) $("deploy-form").hidden = true;
    const { res, json } = await api("DELETE", "/v2/deployments/" + encodeURIComponent(name));
    if (!res.ok) $("error").textContent = errorText(json, res.status);
    refresh();
  };
  dialog.showModal();
}

// --- a deployment's health --------------------------------------------------------------------

let healthOf = null;  // the deployment the health view shows
let healthBusy = false;

function showHealth(name) {
  healthOf = name;
  $("health-name").textContent = name;
  $("health").hidden = false;
  refreshHealth().then(() => $("health").scrollIntoView({ block: "start" }));
}

function closeHealth() {
  healthOf = null;
  $("health").hidden = true;
}

$("health-close").addEventListener("click", closeHealth);
$("health-window").addEventListener("change", () => refreshHealth());

async function refreshHealth() {
  if (!healthOf || healthBusy) return;
  // Only a deployment the overview has, and not one on its way out (that would be a 404).
  const d = overview && overview.deployments.find((x) => x.name === healthOf);
  if (!d || d.status === "deleting") {
    closeHealth();
    return;
  }
  healthBusy = true;
  try {
    const name = healthOf;
    const { res, json } = await api("GET",
      `/v2/deployments/${encodeURIComponent(name)}/health?window=${$("health-window").value}`);
    if (name !== healthOf) return;
    if (!res.ok) {
      $("error").textContent = errorText(json, res.status);
      return;
    }
    renderHealth(json);
  } catch (err) {
    $("error").textContent = "the gateway cannot be reached: " + err.message;
  } finally {
    healthBusy = false;
  }
}

function secs(v) {
  return v === null || v === undefined ? "–" : v < 1 ? Math.round(v * 1000) + " ms" : v.toFixed(2) + " s";
}

function renderHealth(h) {
  const t = h.totals;
  const totals = $("health-totals");
  totals.dataset.requests = t.requests;
  totals.dataset.tokens = t.tokens;
  totals.dataset.coldStarts = t.coldStarts;
  totals.textContent = `${Math.round(h.windowS / 60)} min: ${t.requests} requests ` +
    `(${t.errors} failed) · ${t.tokens} tokens · time to first token p50 ${secs(t.ttftP50S)}, ` +
    `p95 ${secs(t.ttftP95S)} · queue wait p95 ${secs(t.queueWaitP95S)} · ${t.coldStarts} cold ` +
    `starts (mean ${secs(t.coldStartMeanS)})`;
  const end = h.at, start = h.at - h.windowS;
  const p = h.points;
  $("health-charts").replaceChildren(
    seriesChart("requests", "requests/s", start, end, h.stepS, p,
      [["requestsPerS", "rate"]], (v) => v.toFixed(2)),
    seriesChart("tokens", "tokens/s", start, end, h.stepS, p,
      [["tokensPerS", "rate"]], (v) => v.toFixed(1)),
    seriesChart("ttft", "time to first token", start, end, h.stepS, p,
      [["ttftP50S", "p50"], ["ttftP95S", "p95"]], secs),
    seriesChart("queue-wait", "queue wait", start, end, h.stepS, p,
      [["queueWaitP50S", "p50"], ["queueWaitP95S", "p95"]], secs),
    seriesChart("cold-starts", "cold starts (bars) and their time to first token", start, end,
      h.stepS, p, [["coldStartMeanS", "mean"]], secs, "coldStarts"),
    replicaChart(start, end, h.replicas));
}

function svgNode(tag, attrs, text) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}

const SERIES_COLOR = { rate: "var(--inflight)", p50: "var(--ready)", p95: "var(--queued)",
  mean: "var(--queued)" };
const CW = 360, CH = 110, CL = 44, CB = 14, CT = 6;

function frame(id, title, start, end, top, fmt) {
  const svg = svgNode("svg", { class: "chart health-chart", viewBox: `0 0 ${CW} ${CH}`,
    preserveAspectRatio: "none", "data-chart": id });
  svg.append(svgNode("path", { class: "axis", d: `M${CL},${CT}V${CH - CB}H${CW - 4}` }));
  svg.append(svgNode("text", { x: CL - 4, y: CT + 8, "text-anchor": "end" }, fmt(top)));
  svg.append(svgNode("text", { x: CL - 4, y: CH - CB, "text-anchor": "end" }, "0"));
  svg.append(svgNode("text", { x: CL, y: CH - 2 }, `-${Math.round((end - start) / 60)} min`));
  svg.append(svgNode("text", { x: CW - 4, y: CH - 2, "text-anchor": "end" }, "now"));
  const x = (t) => CL + ((Math.min(Math.max(t, start), end) - start) / (end - start)) * (CW - CL - 4);
  const y = (v) => CT + (1 - v / top) * (CH - CT - CB);
  return { svg, x, y, box: el("figure", { class: "health-figure" }, el("figcaption", {}, title), svg) };
}

// Lines over the health points (a gap where a value is null; a dot on each value, so that a
// lone one shows), and bars of `bars` if given.
function seriesChart(id, title, start, end, step, points, lines, fmt, bars) {
  const values = points.flatMap((q) => lines.map(([k]) => q[k]).filter((v) => v !== null));
  const barValues = bars ? points.map((q) => q[bars]) : [];
  const topLine = Math.max(0, ...values), topBar = Math.max(1, ...barValues);
  const f = frame(id, title, start, end, topLine > 0 ? topLine : 1, fmt);
  if (bars) {
    const yb = (v) => CT + (1 - v / topBar) * (CH - CT - CB);
    for (const q of points) {
      if (!q[bars]) continue;
      f.svg.append(svgNode("rect", { class: "bar", x: f.x(q.at), y: yb(q[bars]),
        width: Math.max(1, f.x(q.at + step) - f.x(q.at) - 1), height: CH - CB - yb(q[bars]) }));
    }
    f.svg.append(svgNode("text", { x: CW - 4, y: CT + 8, "text-anchor": "end" }, `${topBar} max`));
  }
  const dots = [];
  for (const [key, cls] of lines) {
    let d = "", open = false;
    for (const q of points) {
      const v = q[key];
      if (v === null || v === undefined) { open = false; continue; }
      const px = f.x(q.at + step / 2), py = f.y(v);
      d += (open ? "L" : "M") + `${px.toFixed(1)},${py.toFixed(1)}`;
      open = true;
      if (v > 0) dots.push(svgNode("circle", { class: "dot " + cls, cx: px, cy: py, r: 2 }));
    }
    if (d) f.svg.append(svgNode("path", { class: "series " + cls, d, "data-series": key }));
    f.svg.append(...dots.splice(0));
  }
  if (lines.length > 1) {
    f.box.firstChild.append(...lines.map(([, cls]) => el("span", { class: "key " + cls },
      legend(SERIES_COLOR[cls], cls))));
  }
  return f.box;
}

// Replicas by state, a step line each, from the scaler's samples.
function replicaChart(start, end, samples) {
  const top = Math.max(1, ...samples.map((q) => q.starting + q.ready + q.draining));
  const f = frame("replicas", "replicas: ready, starting, draining", start, end, top, String);
  const last = samples[samples.length - 1];
  if (last) f.svg.setAttribute("data-ready", last.ready);
  for (const [key, cls] of [["ready", "replicas"], ["starting", "starting"], ["draining", "draining"]]) {
    let d = "";
    samples.forEach((q, i) => {
      d += i === 0 ? `M${f.x(q.at)},${f.y(q[key])}` : `H${f.x(q.at)}V${f.y(q[key])}`;
    });
    if (d) f.svg.append(svgNode("path", { class: cls, d: d + `H${f.x(end)}`, "data-series": key }));
  }
  return f.box;
}

if (token()) showApp(); else showLogin("");
