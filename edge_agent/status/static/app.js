// The gateway's status page: renders /api/status, kept live by /api/stream (server-sent
// events). No framework, no network beyond this gateway. Every visible text comes from
// /i18n/<lang>.json; data is inserted with textContent only (never as HTML).
"use strict";

const LANGS = ["zh-CN", "en"];
const UNITS = { density_db_m: "dB/m", temperature_c: "°C", battery_pct: "%", level_m: "m",
  pressure_kpa: "kPa", held_s: "s", offline_s: "s", fps: "fps" };
const STATE_RANK = { error: 0, offline: 1, unknown: 2, online: 3 };
const SEVERITY_RANK = { critical: 0, warning: 1, info: 2 };

let lang = pickLang();
let catalog = {};
let doc = null;
let stream = null;
let streamLost = false;
let poller = null;

function pickLang() {
  const q = new URLSearchParams(location.search).get("lang");
  if (LANGS.includes(q)) return q;
  let saved = null;
  try { saved = localStorage.getItem("lang"); } catch (e) { /* private mode */ }
  return LANGS.includes(saved) ? saved : "zh-CN";
}

function t(key, params) {
  let text = Object.prototype.hasOwnProperty.call(catalog, key) ? catalog[key] : null;
  if (text === null) return null;
  for (const [k, v] of Object.entries(params || {})) text = text.split("{" + k + "}").join(String(v));
  return text;
}
function tt(key, params, fallback) { const v = t(key, params); return v === null ? (fallback ?? key) : v; }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function ageSeconds(iso) { return Math.max(0, (Date.now() - Date.parse(iso)) / 1000); }
function ago(iso) {
  if (!iso) return tt("time.never");
  const s = Math.round(ageSeconds(iso));
  if (s < 5) return tt("time.just_now");
  if (s < 60) return tt("time.seconds_ago", { n: s });
  if (s < 3600) return tt("time.minutes_ago", { n: Math.floor(s / 60) });
  if (s < 86400) return tt("time.hours_ago", { n: Math.floor(s / 3600) });
  return tt("time.days_ago", { n: Math.floor(s / 86400) });
}
function duration(sec) {
  const s = Math.max(0, Math.round(sec));
  if (s < 60) return tt("time.duration_s", { n: s });
  if (s < 3600) return tt("time.duration_m", { n: Math.floor(s / 60) });
  if (s < 86400) return tt("time.duration_h", { h: Math.floor(s / 3600), m: Math.floor(s % 3600 / 60) });
  return tt("time.duration_d", { d: Math.floor(s / 86400), h: Math.floor(s % 86400 / 3600) });
}
function clock(iso) {
  if (!iso) return tt("time.never");
  const d = new Date(iso);
  const sameDay = new Date().toDateString() === d.toDateString();
  const opts = sameDay ? { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }
    : { month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hour12: false };
  return new Intl.DateTimeFormat(lang, opts).format(d);
}
function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : v) + " " + units[i];
}
function eventName(type) { return tt("event." + type, null, type); }
function value(v) { return typeof v === "string" ? tt("value." + v, null, v) : String(v); }
function dataText(data) {
  if (!data) return "";
  return Object.entries(data).filter(([k]) => k !== "alarm_id")
    .map(([k, v]) => tt("field." + k, null, k) + " " + value(v) + (UNITS[k] ? " " + UNITS[k] : ""))
    .join(" · ");
}
function withoutState(data) { const rest = { ...data }; delete rest.state; return rest; }
function deviceLabel(name, id) { return name ? name + " (" + id + ")" : id; }

// --------------------------------------------------------------------------- rendering

function render() {
  document.documentElement.lang = lang;
  document.title = tt("app.title");
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = tt(node.dataset.i18n);
  document.getElementById("lang-btn").textContent = tt("lang.switch");
  if (!doc) return;
  const gw = doc.gateway;
  document.getElementById("gw-name").textContent = (gw.name || gw.id) + " · " + gw.community;
  renderLogin();
  renderBanner();
  renderAlarms();
  renderCards();
  renderDevices();
  renderSnapshots();
  renderRecent();
  document.getElementById("updated").textContent = tt("misc.updated", { time: clock(doc.generated_at) });
}

function renderLogin() {
  const btn = document.getElementById("login-btn");
  btn.hidden = !doc.viewer.login_available;
  btn.textContent = doc.viewer.authenticated ? tt("login.logout") : tt("login.button");
}

function renderBanner() {
  const banner = document.getElementById("banner");
  const lines = [];
  const down = doc.summary.offline + doc.summary.error;
  if (streamLost) lines.push(tt("banner.stream_lost"));
  const open = doc.summary.open_alarms;  // all of them, listed or not
  if (open) lines.push(tt("banner.alarms", { n: open }));
  if (down) lines.push(tt("banner.devices_down", { n: down }));
  if (!doc.uplink.connected) lines.push(tt("banner.uplink_down"));
  banner.className = open || streamLost ? "bad" : lines.length ? "warn" : "";
  banner.replaceChildren(...(lines.length ? lines : [tt("banner.ok")]).map((l) => el("div", null, l)));
}

function renderAlarms() {
  const list = document.getElementById("alarm-list");
  const notListed = doc.alarms_not_listed || 0;  // the document lists the first ones only
  document.getElementById("alarms").classList.toggle("active", doc.alarms.length + notListed > 0);
  if (!doc.alarms.length && !notListed) { list.replaceChildren(el("li", { class: "muted none" }, tt("alarms.none"))); return; }
  const more = notListed
    ? el("li", { class: "muted more", "data-testid": "alarms-not-listed" }, tt("alarms.not_listed", { n: notListed }))
    : null;
  list.replaceChildren(...doc.alarms.map((a) => el("li",
    { class: a.severity, "data-testid": "alarm", "data-device": a.device, "data-type": a.type },
    el("span", { class: "what" }, eventName(a.type)),
    el("span", { class: "device" }, deviceLabel(a.device_name, a.device)),
    el("span", { class: "muted" }, tt("alarm.since") + " " + clock(a.raised_at) + " (" + ago(a.raised_at) + ")"),
    dataText(withoutState(a.data)) ? el("span", { class: "muted" }, dataText(withoutState(a.data))) : null,
    a.snapshot ? el("img", { src: "/snapshots/" + a.snapshot + ".jpg", alt: eventName(a.type) }) : null)),
  ...(more ? [more] : []));
}

function dl(id, rows) {
  document.getElementById(id).replaceChildren(...rows.flatMap(([k, v, attrs]) =>
    [el("dt", null, tt(k)), el("dd", attrs || null, v)]));
}

function renderCards() {
  const g = doc.gateway; const u = doc.uplink; const o = doc.outbox;
  const disk = g.disk.free_bytes === null ? "?" : tt("gateway.disk_value", { free: bytes(g.disk.free_bytes), pct: g.disk.used_pct });
  dl("gateway", [["gateway.id", g.id], ["gateway.name", g.name || tt("misc.none")],
    ["gateway.community", g.community], ["gateway.version", g.version],
    ["gateway.uptime", duration(ageSeconds(g.started_at))], ["gateway.disk", disk]]);
  const state = u.connected
    ? el("span", { class: "pill connected" }, tt("uplink.connected"))
    : el("span", { class: "pill offline" }, tt("uplink.offline"));
  const stateText = u.connected ? tt("uplink.connected_since", { time: clock(u.since) })
    : tt("uplink.offline_since", { time: clock(u.since), ago: ago(u.since) });
  const rows = [["uplink.state", el("span", null, state, " ", el("span", { "data-testid": "uplink-state" }, stateText))],
    ["uplink.broker", u.broker], ["uplink.last_ack", u.last_ack_at ? clock(u.last_ack_at) + " (" + ago(u.last_ack_at) + ")" : tt("time.never")],
    ["uplink.sent", u.events_sent + " / " + u.events_acked]];
  if (u.last_error && !u.connected) rows.push(["uplink.last_error", u.last_error]);
  dl("uplink", rows);
  dl("outbox", [["outbox.events", tt("outbox.events_value", { n: o.events }), { "data-testid": "outbox-events" }],
    ["outbox.oldest", o.oldest_created_at ? duration(ageSeconds(o.oldest_created_at)) : tt("misc.none")],
    ["outbox.evicted", String(o.evicted_total)], ["outbox.bytes", bytes(o.bytes) + " / " + bytes(o.max_bytes)],
    ...(o.disk_full ? [["outbox.disk", el("span", { class: "pill offline", "data-testid": "outbox-disk-full" }, tt("outbox.disk_full"))]] : [])]);
}

function renderDevices() {
  // devices with an open alarm first (critical before warning), then fault, offline, ...
  // (each device says its most severe open alarm: the alarm list shows only the first ones)
  const alarmRank = new Map();
  for (const d of doc.devices) {
    if (d.alarm_severity) alarmRank.set(d.id, SEVERITY_RANK[d.alarm_severity] ?? 2);
  }
  const alarmed = { has: (id) => alarmRank.has(id) };
  const devices = [...doc.devices].sort((a, b) => ((alarmRank.get(a.id) ?? 9) - (alarmRank.get(b.id) ?? 9))
    || (STATE_RANK[a.state] - STATE_RANK[b.state]) || a.id.localeCompare(b.id));
  document.querySelector("#devices tbody").replaceChildren(...devices.map((d) => {
    const down = d.state === "offline" || d.state === "error";
    // an online device shows its reason only when it is a note (a camera without events)
    const reason = (down || d.reason_code === "no_events") && d.reason ? el("span", null, tt("reason." + d.reason_code, null, d.reason),
      el("span", { class: "raw" }, d.reason)) : "";
    const last = d.last_event_type ? eventName(d.last_event_type) + (d.last_data ? ": " + dataText(d.last_data) : "") : "";
    return el("tr", { class: (alarmed.has(d.id) ? "alarm " : "") + d.state, "data-testid": "device-row",
      "data-device": d.id, "data-state": d.state },
    el("td", null, deviceLabel(d.name, d.id)), el("td", null, d.driver),
    el("td", null, el("span", { class: "pill " + d.state, "data-testid": "device-state" }, tt("state." + d.state)),
      alarmed.has(d.id) ? el("span", { class: "pill offline" }, tt("device.has_alarm")) : null,
      down ? el("span", { class: "raw" }, ago(d.since)) : null),
    el("td", null, reason), el("td", null, last),
    el("td", null, d.last_event_at ? clock(d.last_event_at) : ""));
  }));
}

function renderSnapshots() {
  const box = document.getElementById("snapshot-list");
  const section = document.getElementById("snapshots");
  section.hidden = !doc.viewer.login_available;
  if (!doc.viewer.authenticated) { box.replaceChildren(el("p", { class: "muted" }, tt("snapshots.locked"))); return; }
  const snaps = doc.snapshots || [];
  if (!snaps.length) { box.replaceChildren(el("p", { class: "muted" }, tt("snapshots.none"))); return; }
  box.replaceChildren(...snaps.map((s) => el("figure", { "data-testid": "snapshot" },
    el("img", { src: "/snapshots/" + s.snapshot + ".jpg", alt: eventName(s.type), loading: "lazy" }),
    el("figcaption", null, eventName(s.type) + " · " + deviceLabel(s.device_name, s.device) + " · " + clock(s.time)))));
}

function renderRecent() {
  const list = document.getElementById("recent");
  if (!doc.recent.length) { list.replaceChildren(el("li", { class: "muted" }, tt("recent.none"))); return; }
  list.replaceChildren(...doc.recent.map((e) => el("li", { class: e.severity, "data-testid": "recent-event" },
    el("span", { class: "when" }, clock(e.time)),
    el("span", { class: "type" }, eventName(e.type)), " · ",
    el("span", null, deviceLabel(e.device_name, e.device)),
    dataText(e.data) ? el("span", { class: "muted" }, " · " + dataText(e.data)) : null)));
}

// --------------------------------------------------------------------------- data

async function loadCatalog() {
  const r = await fetch("/i18n/" + lang + ".json");
  catalog = await r.json();
}

async function refresh() {
  const r = await fetch("/api/status", { cache: "no-store" });
  if (r.ok) { doc = await r.json(); streamLost = false; render(); }
}

function connect() {
  if (stream) stream.close();
  if (!window.EventSource) { setInterval(() => refresh().catch(() => {}), 3000); return; }
  stream = new EventSource("/api/stream");
  stream.addEventListener("status", (ev) => { doc = JSON.parse(ev.data); streamLost = false; render(); });
  stream.onerror = () => {
    streamLost = true; render();
    // refused (503: too many open pages) or broken for good: the browser gives up, so
    // poll instead and try the stream again later
    if (stream.readyState === EventSource.CLOSED) pollForAWhile();
  };
}

function pollForAWhile() {
  if (poller) return;
  poller = setInterval(() => refresh().catch(() => {}), 3000);
  setTimeout(() => { clearInterval(poller); poller = null; connect(); }, 30000);
}

function setupLogin() {
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  document.getElementById("login-btn").addEventListener("click", async () => {
    if (doc && doc.viewer.authenticated) {
      await fetch("/logout", { method: "POST" });
      await refresh(); connect();
      return;
    }
    error.textContent = ""; form.hidden = false; form.elements.password.focus();
  });
  document.getElementById("login-cancel").addEventListener("click", () => { form.hidden = true; });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await fetch("/login", { method: "POST", body: new URLSearchParams(new FormData(form)) });
    form.elements.password.value = "";
    if (r.ok) { form.hidden = true; await refresh(); connect(); return; }
    const body = await r.json().catch(() => ({}));
    error.textContent = body.error === "no_credential" ? tt("login.no_credential")
      : body.error === "too_many_attempts" ? tt("login.too_many") : tt("login.wrong");
  });
}

async function main() {
  document.getElementById("lang-btn").addEventListener("click", async () => {
    lang = lang === "zh-CN" ? "en" : "zh-CN";
    try { localStorage.setItem("lang", lang); } catch (e) { /* private mode */ }
    await loadCatalog(); render();
  });
  setupLogin();
  await loadCatalog();
  render();
  await refresh().catch(() => {});
  connect();
  setInterval(render, 5000);  // relative times ("3 分钟前") move on between updates
}

main();
