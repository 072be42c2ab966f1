// windowbot console: plain DOM, no build step. Every text from the store is set with
// textContent (never parsed as HTML). Talks to /console/api; live updates over SSE.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { session: null, user: "", page: null, refreshing: false, again: false };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

// WhatsApp's own formatting: *bold*, _italic_, ~strikethrough~, `monospace`.
const FORMATS = { "*": "strong", "_": "em", "~": "s", "`": "code" };
function formatted(text) {
  const node = el("div", { class: "text" });
  for (const part of String(text).split(/(\*[^*\n]+\*|_[^_\n]+_|~[^~\n]+~|`[^`\n]+`)/)) {
    const tag = part.length > 2 && FORMATS[part[0]] && part[0] === part[part.length - 1] ? FORMATS[part[0]] : null;
    node.append(tag ? el(tag, { text: part.slice(1, -1) }) : document.createTextNode(part));
  }
  return node;
}

async function api(path, body) {
  const options = { headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.headers["X-CSRF-Token"] = state.session ? state.session.csrf : "";
    options.body = JSON.stringify(body);
  }
  const response = await fetch("/console/api" + path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = { error: response.statusText }; }
  if (response.status === 401) { location.href = "/console/login"; }
  if (!response.ok && response.status !== 409) {
    showError((data && data.error) || response.statusText);
    throw new Error(data && data.error);
  }
  data.__status = response.status;
  return data;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 3600) return Math.floor(s / 60) + "m";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function when(ts) {
  const d = new Date(ts * 1000);
  return d.toISOString().slice(5, 16).replace("T", " ") + " UTC";
}

function windowText(w) {
  return w.open ? "window open, " + span(w.left_seconds) + " left" : "window closed";
}

// --- the conversation list ---------------------------------------------------------------

function renderUsers(users) {
  const list = $("user-list");
  list.replaceChildren();
  for (const u of users) {
    const tags = el("div", {},
      el("span", { class: "tag " + (u.window.open ? "open" : "closed"), text: windowText(u.window) }),
      u.paused ? el("span", { class: "tag paused", text: "paused" }) : null,
      u.opted_out ? el("span", { class: "tag out", text: "opted out" }) : null);
    const item = el("li", { "data-user": u.key, class: u.key === state.user ? "selected" : "",
                            onclick: () => select(u.key, u.profile_name) },
      el("div", { text: (u.profile_name || u.key) + " · " + u.key }),
      el("div", { class: "meta", text: (u.flow || "-") + "." + (u.state || "-") }),
      tags,
      el("div", { class: "meta last", text: u.last_message || "" }));
    list.append(item);
  }
}

// --- the phone ---------------------------------------------------------------------------

function sendAsUser(body) {
  if (!state.user) return;
  const ago = parseFloat($("compose-ago").value || "0");
  body.name = $("user-name").value || "Sandbox User";
  body.ago_hours = ago;
  $("compose-ago").value = "0";
  return api("/sandbox/" + encodeURIComponent(state.user) + "/message", body).then(refreshSoon);
}

function choiceButton(title, body) {
  const sandbox = state.session && state.session.sandbox;
  const button = el("button", { type: "button", class: "choice", text: title,
                                onclick: () => sandbox && sendAsUser(body) });
  button.disabled = !sandbox;  // only the sandbox's user can press the user's buttons
  return button;
}

function badge(item) {
  let text, kind;
  if (item.status === "skipped") { kind = "skipped"; text = "not sent: " + item.reason; }
  else if (item.status === "failed") { kind = "failed"; text = "failed" + (item.error_code ? " (" + item.error_code + ")" : "") + ": " + item.reason; }
  else if (item.sent_as === "template" && item.template) {
    const t = item.template;
    const params = Array.isArray(t.parameters) ? t.parameters.join(" | ") : Object.entries(t.parameters).map(([k, v]) => k + "=" + v).join(" | ");
    kind = "template";
    text = "template " + t.name + " · " + (t.use || t.category) + " · " + t.language + " · params: " + params + " — " + item.reason;
  } else if (item.sent_as === "session") { kind = "session"; text = "session · " + item.reason; }
  else { kind = "pending"; text = item.job ? "reminder due " + when(item.due_at) : "queued"; }
  return el("div", { class: "badge " + kind, "data-kind": kind, text });
}

function statusMark(item) {
  const marks = { sent: "✓ sent", delivered: "✓✓ delivered", read: "✓✓ read" };
  return el("span", { class: "status " + item.status, text: marks[item.status] || item.status });
}

const openLists = new Set();  // ids of the bot messages whose list the operator opened

function botBubble(item) {
  const bubble = el("div", { class: "bubble bot", "data-id": item.id, "data-sent-as": item.sent_as || item.status });
  const m = item.message, t = item.template;
  if (t && (item.sent_as === "template" || !m)) {
    bubble.append(el("div", { class: "tpl-name", text: "template " + t.name }));
    bubble.append(formatted(t.text || "(template " + t.name + ")"));
    if (t.buttons.length) {
      const box = el("div", { class: "choices" });
      for (const b of t.buttons) box.append(choiceButton(b.title, { type: "button", payload: b.payload || b.title, title: b.title }));
      bubble.append(box);
    }
  } else if (m) {
    if (m.header) bubble.append(el("div", { class: "tpl-name", text: m.header }));
    bubble.append(formatted(m.text));
    if (m.buttons && m.buttons.length) {
      const box = el("div", { class: "choices" });
      for (const b of m.buttons) box.append(choiceButton(b.title, { type: "button_reply", id: b.id, title: b.title }));
      bubble.append(box);
    }
    if (m.list) {
      // which lists are open survives a re-render (a delivery tick redraws the chat)
      const rows = el("div", { class: "rows" });
      rows.hidden = !openLists.has(item.id);
      for (const section of m.list.sections) {
        if (section.title) rows.append(el("div", { class: "section", text: section.title }));
        for (const r of section.rows) {
          const row = choiceButton(r.title + (r.description ? " — " + r.description : ""), { type: "list_reply", id: r.id, title: r.title });
          row.classList.add("row-choice");
          rows.append(row);
        }
      }
      bubble.append(el("div", { class: "choices" }, el("button", { type: "button", class: "list-open", text: "☰ " + m.list.button,
        onclick: () => {
          rows.hidden = !rows.hidden;
          if (rows.hidden) openLists.delete(item.id); else openLists.add(item.id);
        } })), rows);
    }
  }
  bubble.append(badge(item));
  bubble.append(el("div", { class: "time" }, el("span", { text: when(item.at) + " " }), statusMark(item)));
  return bubble;
}

function userBubble(item, user) {
  const late = item.at - item.written_at > 120 ? " · written " + span(item.at - item.written_at) + " earlier" : "";
  const bubble = el("div", { class: "bubble user", "data-id": item.id },
    el("div", { class: "text", text: item.text }),
    el("div", { class: "time", text: when(item.at) + late + (item.status === "pending" ? " · waiting" : "") }));
  if (item.status === "failed") bubble.append(el("div", { class: "badge failed", text: "not handled: " + item.reason }));
  else if (user.paused && item.at >= user.paused_at) bubble.append(el("div", { class: "badge pending", text: "stored; the bot is paused: " + user.paused_reason }));
  return bubble;
}

function renderPage(page) {
  const u = page.user;
  $("title").textContent = (u.profile_name || u.key) + " · " + u.key;
  $("window").textContent = windowText(u.window) + (u.window.closes_at ? " (closes " + when(u.window.closes_at) + ")" : "")
    + (page.clock_offset ? " · clock +" + span(page.clock_offset) : "");
  const chat = $("chat");
  chat.replaceChildren(...page.timeline.filter((i) => !(i.job && i.status === "pending")).map((i) => i.kind === "in" ? userBubble(i, u) : botBubble(i)));
  chat.scrollTop = chat.scrollHeight;
  $("state").textContent = page.known ? (u.flow + "." + u.state + " · " + windowText(u.window) + (u.opted_out ? " · opted out" : "")) : "new user: nothing stored yet";
  $("variables").textContent = JSON.stringify(u.variables, null, 1);
  $("clock").textContent = page.clock_offset ? "clock moved " + span(page.clock_offset) + " ahead: " + when(u.window.now) : "";
  $("jobs").replaceChildren(...page.jobs.map((j) => el("li", { text:
    (j.template ? "template " + j.template.name : (j.message ? j.message.text : ""))
    + (j.fallback && !j.template ? " (else template " + j.fallback + ")" : "")
    + " · due " + when(j.due_at) + " · " + (j.sent_as ? "sent as " + j.sent_as : j.status) })));
  renderTakeover(page);
}

// --- takeover ----------------------------------------------------------------------------

function renderTakeover(page) {
  const u = page.user;
  $("pause-status").textContent = u.paused ? "Paused: " + u.paused_reason : (page.known ? "The bot is answering." : "");
  $("pause-row").hidden = u.paused || !page.known;
  $("operator-box").hidden = !u.paused;
  const select = $("handback-state");
  if (!select.options.length) {
    for (const s of state.session.states) select.append(el("option", { value: s, text: s }));
  }
  if (!u.paused) {
    $("refusal").hidden = true;
    $("templates").replaceChildren();
    if (state.session.states.includes(u.flow + "." + u.state)) select.value = u.flow + "." + u.state;
  }
}

function showTemplates(templates) {
  const box = $("templates");
  box.replaceChildren();
  for (const t of templates) {
    const inputs = t.parameters.map((p) => el("input", { class: "param", "data-param": p, placeholder: "{{" + p + "}}" }));
    const form = el("div", { class: "template-form", "data-name": t.name },
      el("div", { text: t.name + " · " + (t.use || t.category) + " · " + t.language }),
      el("div", { class: "body", text: t.body }),
      ...inputs,
      el("button", { type: "button", class: "send-template", text: "Send template", onclick: async () => {
        const values = inputs.map((i) => i.value);
        const parameters = t.parameter_format === "named"
          ? Object.fromEntries(t.parameters.map((p, n) => [p, values[n]])) : values;
        const result = await api(userPath("/reply"), { template: t.name, parameters });
        if (result.queued) { $("refusal").hidden = true; box.replaceChildren(); refreshSoon(); }
      } }));
    box.append(form);
  }
}

function userPath(suffix) { return "/users/" + encodeURIComponent(state.user) + suffix; }

// --- refresh and wiring ------------------------------------------------------------------

async function refresh() {
  if (state.refreshing) { state.again = true; return; }
  state.refreshing = true;
  try {
    renderUsers(await api("/users"));
    if (state.user) {
      state.page = await api(userPath(""));
      renderPage(state.page);
    }
    showError("");
  } catch (e) { /* shown by api() */ }
  finally {
    state.refreshing = false;
    if (state.again) { state.again = false; refresh(); }
  }
}

let timer = null;
function refreshSoon() { clearTimeout(timer); timer = setTimeout(refresh, 50); }

function select(user, name) {
  state.user = user;
  $("user-id").value = user;
  if (name) $("user-name").value = name;
  $("templates").replaceChildren();
  $("refusal").hidden = true;
  refresh();
}

function on(id, handler) { $(id).addEventListener("click", (e) => { e.preventDefault(); handler(); }); }

function wire() {
  $("who").addEventListener("submit", (e) => { e.preventDefault(); select($("user-id").value.trim(), $("user-name").value); });
  $("compose").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!state.user) select($("user-id").value.trim(), $("user-name").value);
    const text = $("compose-text").value;
    if (!text.trim()) return;
    $("compose-text").value = "";
    sendAsUser({ type: "text", text });
  });
  on("advance", () => api("/sandbox/" + encodeURIComponent(state.user) + "/clock", { hours: parseFloat($("advance-hours").value) }).then(refreshSoon));
  on("fire", () => api("/sandbox/" + encodeURIComponent(state.user) + "/fire", {}).then(refreshSoon));
  on("reset", () => api("/sandbox/" + encodeURIComponent(state.user) + "/reset", {}).then(refreshSoon));
  on("pause", () => api(userPath("/pause"), { reason: $("pause-reason").value }).then(refreshSoon));
  on("operator-send", async () => {
    const result = await api(userPath("/reply"), { text: $("operator-text").value });
    if (result.__status === 409) {
      $("refusal").textContent = result.error;
      $("refusal").hidden = false;
      showTemplates(result.templates);
    } else { $("operator-text").value = ""; refreshSoon(); }
  });
  on("handback", () => api(userPath("/handback"), { state: $("handback-state").value }).then(refreshSoon));
}

async function start() {
  state.session = await api("/session");
  document.body.classList.toggle("sandbox-off", !state.session.sandbox);
  $("mode").textContent = state.session.sandbox ? "sandbox" : "live";
  $("operator").textContent = state.session.operator;
  wire();
  if (state.session.sandbox) state.user = $("user-id").value.trim();
  const events = new EventSource("/console/api/events");
  events.addEventListener("open", () => $("live").classList.add("on"));
  events.addEventListener("error", () => $("live").classList.remove("on"));
  events.addEventListener("change", refreshSoon);
  events.addEventListener("tick", refreshSoon);
  refresh();
}

start();
