// The district fleet view: polls /v1/fleet with the bearer token kept in sessionStorage.
// No framework; every visible text comes from /fleet/static/<lang>.json; data is
// inserted with textContent only (never as HTML).
"use strict";

const LANGS = ["zh-CN", "en"];
// every 2 s, or a quarter of the heartbeat interval when that is shorter (a silent
// gateway shows red soon after two heartbeats)
const POLL_MS = 2000;
let lang = pickLang();
let catalog = {};
let doc = null;
let state = "need_token";  // need_token | ok | rebuilding | unreachable
let timer = null;

function pickLang() {
  const q = new URLSearchParams(location.search).get("lang");
  if (LANGS.includes(q)) return q;
  let saved = null;
  try { saved = localStorage.getItem("lang"); } catch (e) { /* private mode */ }
  return LANGS.includes(saved) ? saved : "zh-CN";
}
function t(key, params) {
  let text = Object.prototype.hasOwnProperty.call(catalog, key) ? catalog[key] : key;
  for (const [k, v] of Object.entries(params || {})) text = text.split("{" + k + "}").join(String(v));
  return text;
}
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}
function ago(iso) {
  if (!iso) return t("time.never");
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 2) return t("time.just_now");
  if (s < 60) return t("time.seconds_ago", { n: s });
  if (s < 3600) return t("time.minutes_ago", { n: Math.floor(s / 60) });
  if (s < 86400) return t("time.hours_ago", { n: Math.floor(s / 3600) });
  return t("time.days_ago", { n: Math.floor(s / 86400) });
}
function duration(sec) {
  const s = Math.max(0, Math.round(sec));
  if (s < 60) return t("time.duration_s", { n: s });
  if (s < 3600) return t("time.duration_m", { n: Math.floor(s / 60) });
  return t("time.duration_h", { h: Math.floor(s / 3600), m: Math.floor(s % 3600 / 60) });
}
function typeName(type) { const k = "type." + type; return catalog[k] ? catalog[k] : type; }

function token() { try { return sessionStorage.getItem("fleet-token"); } catch (e) { return null; } }
function askToken(message) {
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.getElementById("token-error").textContent = message || "";
  form.elements.token.focus();
}

async function loadLang() {
  const r = await fetch("/fleet/static/" + lang + ".json", { cache: "no-store" });
  catalog = await r.json();
  document.documentElement.lang = lang;
  document.title = t("app.title");
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  document.getElementById("lang-btn").textContent = t("lang.switch");
  render();
}

async function poll() {
  clearTimeout(timer);
  const tok = token();
  if (!tok) { state = "need_token"; render(); askToken(); return; }
  try {
    const r = await fetch("/v1/fleet", { headers: { Authorization: "Bearer " + tok }, cache: "no-store" });
    if (r.status === 401 || r.status === 403) {
      sessionStorage.removeItem("fleet-token");
      state = "need_token"; render(); askToken(t("token.rejected")); return;
    }
    if (r.status === 503) state = "rebuilding";
    else if (r.ok) { doc = await r.json(); state = "ok"; }
    else state = "unreachable";
  } catch (e) { state = "unreachable"; }
  render();
  const every = doc ? Math.max(100, Math.min(POLL_MS, doc.heartbeat_s * 250)) : POLL_MS;
  timer = setTimeout(poll, every);
}

function renderBanner() {
  const banner = document.getElementById("banner");
  banner.replaceChildren();
  banner.className = "";
  const lines = [];
  if (state !== "ok") {
    lines.push(t("banner." + state));
    banner.className = state === "unreachable" ? "bad" : "warn";
  }
  if (doc) {
    if (doc.counts.red) { lines.push(t("banner.red", { n: doc.counts.red })); banner.className = "bad"; }
    if (doc.alarms.length) { lines.push(t("banner.alarms", { n: doc.alarms.length })); banner.className = "bad"; }
    if (doc.counts.amber) { lines.push(t("banner.amber", { n: doc.counts.amber })); if (!banner.className) banner.className = "warn"; }
    if (!lines.length) lines.push(t("banner.ok"));
  }
  for (const line of lines) banner.append(el("div", {}, line));
}

function renderAlarms() {
  const list = document.getElementById("alarm-list");
  const section = document.getElementById("alarms");
  list.replaceChildren();
  const alarms = doc ? doc.alarms : [];
  section.classList.toggle("active", alarms.length > 0);
  if (!alarms.length) { list.append(el("li", { class: "muted" }, t("alarms.none"))); return; }
  for (const a of alarms) {
    list.append(el("li", { class: a.severity, "data-alarm": a.alarm_id },
      el("span", { class: "what" }, a.alarm_type || typeName(a.type)),
      el("span", {}, t("alarm.where", { community: a.community, gateway: a.gateway, device: a.device })),
      el("span", { class: "muted" }, t("alarm.since", { when: ago(a.since) }))));
  }
}

function gatewayRow(gw) {
  const hb = gw.heartbeat || {};
  const backlog = hb.outbox_events === undefined ? "—"
    : t("backlog.value", { n: hb.outbox_events, age: duration(hb.oldest_waiting_s || 0) });
  const off = gw.devices.filter((d) => d.online === false).map((d) => d.id);
  const reasons = gw.reasons.map((r) => t("reason." + r)).join("，");
  return el("tr", { class: "gw " + gw.status, "data-gateway": gw.id, "data-status": gw.status },
    el("td", {}, gw.id, hb.version ? el("span", { class: "devs" }, hb.version) : null),
    el("td", {}, el("span", { class: "pill " + gw.status }, t("status." + gw.status)),
      reasons ? el("span", { class: "devs" }, reasons) : null),
    el("td", {}, ago(gw.last_seen)),
    el("td", {}, backlog),
    el("td", {}, String(gw.gaps.unexplained)),
    el("td", {}, t("devices.summary", { n: gw.devices.length, off: off.length }),
      off.length ? el("span", { class: "devs" }, t("devices.offline_list", { list: off.join(", ") })) : null),
    el("td", {}, String(gw.open_alarms)));
}

function renderTree() {
  const tree = document.getElementById("tree");
  tree.replaceChildren();
  if (!doc) return;
  let any = false;
  for (const d of doc.districts) {
    tree.append(el("div", { class: "area" }, t("level.district"), el("span", { class: "code" }, d.code)));
    for (const s of d.streets) {
      tree.append(el("div", { class: "area" }, "· " + t("level.street"), el("span", { class: "code" }, s.code)));
      for (const c of s.communities) {
        any = true;
        tree.append(el("div", { class: "area" }, "·· " + t("level.community"), el("span", { class: "code" }, c.code)));
        const head = el("tr", {}, ...["gateway", "status", "last_seen", "backlog", "gaps", "devices", "alarms"]
          .map((k) => el("th", {}, t("col." + k))));
        tree.append(el("table", { "data-community": c.code }, el("thead", {}, head),
          el("tbody", {}, ...c.gateways.map(gatewayRow))));
      }
    }
  }
  if (!any) tree.append(el("p", { class: "muted" }, t("gw.none")));
}

function render() {
  if (!Object.keys(catalog).length) return;
  renderBanner();
  renderAlarms();
  renderTree();
  const counts = document.getElementById("counts");
  counts.textContent = doc ? t("counts", doc.counts) : "";
  document.getElementById("updated").textContent = doc ? t("updated", { when: new Date(doc.generated_at).toLocaleTimeString(lang) }) : "";
}

document.getElementById("lang-btn").addEventListener("click", () => {
  lang = lang === "zh-CN" ? "en" : "zh-CN";
  try { localStorage.setItem("lang", lang); } catch (e) { /* private mode */ }
  loadLang();
});
document.getElementById("token-btn").addEventListener("click", () => askToken());
document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = ev.target.elements.token.value.trim();
  if (!value) return;
  sessionStorage.setItem("fleet-token", value);
  ev.target.elements.token.value = "";
  ev.target.hidden = true;
  poll();
});
loadLang().then(poll);
