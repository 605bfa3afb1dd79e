// The status page: GET /v2/status every 2 s with the token kept in sessionStorage, and a
// playground that streams a completion from a deployment's OpenAI route. No libraries.
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
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
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
    el("span", { class: "muted" }, `${d.baseModel} · ${d.minReplicas}–${d.maxReplicas} replicas`));
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

if (token()) showApp(); else showLogin("");
