// The reference browser client of the support chat: REST for accounts and history, the
// `/ws/chat` socket for answers. Served under a strict CSP: no inline code, no third parties,
// and model output only ever reaches the page as text (textContent), never as HTML.
//
// Session: the refresh token lives in sessionStorage (this tab only, survives a reload), the
// access token in memory. One refresh at a time: refresh tokens rotate and a reused one revokes
// the whole family, so two parallel refreshes would log the user out.
"use strict";

const $ = (id) => document.getElementById(id);
const REFRESH_KEY = "support-chat.refresh";
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;
const APP_PING_MS = 25_000; // an app-level ping finds a dead connection sooner than TCP does
const PONG_WAIT_MS = 10_000;

const session = {
  access: null,
  refresh: sessionStorage.getItem(REFRESH_KEY),
  expiresAt: 0, // ms since the epoch
  user: null,
  refreshing: null, // the one refresh in flight (a shared promise), or null
  renewTimer: 0,
};

// --- small helpers ------------------------------------------------------------------------

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function notice(text, bad = false) {
  const box = $("notice");
  box.textContent = text || "";
  box.hidden = !text;
  box.classList.toggle("bad", bad);
}

/** An error with the server's stable code, its message and an optional retry time. */
class ApiError extends Error {
  constructor(code, message, retryAfter, fields) {
    super(message);
    this.code = code;
    this.retryAfter = retryAfter;
    this.fields = fields || [];
  }
}

/** What a person should read for an error code (REST body or socket `error` frame). */
function explain(code, message, retryAfter) {
  switch (code) {
    case "rate_limited":
      return `Too many requests. Try again in ${retryAfter ?? 60} s.`;
    case "provider_unavailable":
      return "The answering service is unavailable right now. Please try again in a moment.";
    case "content_blocked":
      return "The provider's safety filters blocked this question.";
    case "too_many_in_flight":
      return "Please wait for the current answer to finish.";
    case "token_expired":
      return "Your session has expired. Please log in again.";
    case "unavailable":
      return "The service is starting or cannot reach its database. Please try again shortly.";
    case "interrupted":
      return "The answer was interrupted by a server restart. Please ask again.";
    case "internal":
      return "Something went wrong on the server. Please try again.";
    case "network":
      return "Can't reach the server. Check your connection and try again.";
    default:
      return message || "Something went wrong.";
  }
}

// --- REST ---------------------------------------------------------------------------------

async function request(method, path, body, token) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError("network", explain("network"));
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const e = (data && data.error) || {};
    const retry = e.retry_after ?? (Number(res.headers.get("Retry-After")) || undefined);
    throw new ApiError(e.code || `http_${res.status}`, e.message || res.statusText, retry, e.fields);
  }
  return data;
}

/** A request with the access token, renewed once (shared refresh) when it has expired. */
async function authed(method, path, body) {
  if (!session.access || Date.now() > session.expiresAt - 5_000) await refreshTokens();
  try {
    return await request(method, path, body, session.access);
  } catch (e) {
    if (e.code !== "token_expired" && e.code !== "unauthorized") throw e;
    await refreshTokens();
    return request(method, path, body, session.access);
  }
}

function setTokens(pair) {
  session.access = pair.access;
  session.refresh = pair.refresh;
  session.expiresAt = Date.now() + pair.expires_in * 1000;
  sessionStorage.setItem(REFRESH_KEY, pair.refresh);
  scheduleRenewal(pair.expires_in);
}

/** Renews the access token before it expires; the socket gets it in-band (`auth` frame). */
function scheduleRenewal(expiresIn) {
  clearTimeout(session.renewTimer);
  const lead = Math.min(60, expiresIn * 0.2);
  session.renewTimer = setTimeout(() => {
    refreshTokens().catch((e) => notice(explain(e.code, e.message, e.retryAfter), true));
  }, Math.max(1, expiresIn - lead) * 1000);
}

/** The one refresh in flight, shared by every caller. Ends the session if it is refused. */
function refreshTokens() {
  if (!session.refreshing) {
    session.refreshing = (async () => {
      if (!session.refresh) throw new ApiError("token_expired", explain("token_expired"));
      try {
        setTokens(await request("POST", "/api/token/refresh/", { refresh: session.refresh }));
      } catch (e) {
        if (e.code === "unauthorized" || e.code === "token_expired" || e.code === "forbidden") {
          endSession(explain("token_expired"));
        }
        throw e;
      }
      if (chat.ws && chat.ws.readyState === WebSocket.OPEN && chat.ready) {
        chat.ws.send(JSON.stringify({ type: "auth", token: session.access }));
      }
    })().finally(() => {
      session.refreshing = null;
    });
  }
  return session.refreshing;
}

// --- log in, sign up, log out --------------------------------------------------------------

let signingUp = false;

function setAuthMode(signup) {
  signingUp = signup;
  $("auth-title").textContent = signup ? "Create an account" : "Log in";
  $("auth-submit").textContent = signup ? "Sign up" : "Log in";
  $("auth-switch-text").textContent = signup ? "Have an account?" : "New here?";
  $("auth-switch").textContent = signup ? "Log in" : "Create an account";
  $("signup-fields").hidden = !signup;
  $("password-rules").hidden = !signup;
  $("username-rules").hidden = !signup;
  $("email").required = signup;
  $("password").minLength = signup ? 8 : 0;
  $("password").autocomplete = signup ? "new-password" : "current-password";
  $("username").pattern = signup ? "[A-Za-z0-9_.\\-]{3,32}" : ".*";
  $("auth-error").textContent = "";
}

async function submitAuth(event) {
  event.preventDefault();
  const username = $("username").value.trim();
  const password = $("password").value;
  const button = $("auth-submit");
  $("auth-error").textContent = "";
  button.disabled = true;
  try {
    if (signingUp) {
      await request("POST", "/api/signup/", { username, email: $("email").value.trim(), password });
    }
    setTokens(await request("POST", "/api/login/", { username, password }));
    $("password").value = "";
    setAuthMode(false);
    startChat();
  } catch (e) {
    const details = e.fields.map((f) => `${f.field} ${f.message}`).join("; ");
    $("auth-error").textContent =
      e.code === "rate_limited" ? explain(e.code, e.message, e.retryAfter) : details || explain(e.code, e.message);
  } finally {
    button.disabled = false;
  }
}

async function logout() {
  $("logout").disabled = true;
  try {
    if (session.refresh) await authed("POST", "/api/logout/", { refresh: session.refresh });
    endSession("You are logged out.");
  } catch (e) {
    // Forget the tokens here anyway; the refresh token expires on its own.
    endSession(`Logged out on this page, but the server could not be told: ${explain(e.code, e.message)}`);
  } finally {
    $("logout").disabled = false;
  }
}

/** Forgets the tokens, closes the socket and shows the login form. */
function endSession(message) {
  clearTimeout(session.renewTimer);
  session.access = session.refresh = session.user = null;
  sessionStorage.removeItem(REFRESH_KEY);
  closeSocket();
  if (chat.current) finishCurrent();
  chat.conversationId = null;
  chat.authRetried = false;
  chat.holdUntil = 0;
  $("send").textContent = "Send";
  for (const pending of pendingFeedback.values()) clearTimeout(pending.timer);
  pendingFeedback.clear();
  $("log").replaceChildren();
  $("conversations").replaceChildren();
  $("chat-view").hidden = true;
  $("logout").hidden = true;
  $("toggle-list").hidden = true;
  $("whoami").textContent = "";
  $("auth-view").hidden = false;
  notice(message, false);
}

// --- conversations ------------------------------------------------------------------------

const list = { nextBefore: null };

async function loadConversations(more = false) {
  const query = more && list.nextBefore ? `&before=${encodeURIComponent(list.nextBefore)}` : "";
  try {
    const page = await authed("GET", `/api/conversations/?limit=20${query}`);
    if (!more) $("conversations").replaceChildren();
    for (const c of page.items) $("conversations").append(conversationItem(c));
    list.nextBefore = page.next_before;
    $("more-conversations").hidden = !page.next_before;
    $("no-conversations").hidden = $("conversations").children.length > 0;
    markCurrentConversation();
  } catch (e) {
    notice(`Could not load your conversations: ${explain(e.code, e.message, e.retryAfter)}`, true);
  }
}

function conversationItem(c) {
  const when = new Date(c.updated_at).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
  const open = el("button", { type: "button", class: "open", "data-id": c.id, onclick: () => openConversation(c.id) }, [
    el("span", { text: c.title || "Untitled" }),
    el("small", { text: when }),
  ]);
  const remove = el("button", {
    type: "button",
    class: "delete",
    "aria-label": `Delete conversation “${c.title}”`,
    title: "Delete",
    text: "✕",
    onclick: () => deleteConversation(c),
  });
  return el("li", {}, [open, remove]);
}

function markCurrentConversation() {
  for (const button of $("conversations").querySelectorAll(".open")) {
    button.setAttribute("aria-current", String(button.dataset.id === chat.conversationId));
  }
}

async function deleteConversation(c) {
  if (!confirm(`Delete the conversation “${c.title}”? This cannot be undone.`)) return;
  try {
    await authed("DELETE", `/api/conversations/${c.id}`);
    if (chat.conversationId === c.id) newConversation();
    await loadConversations();
  } catch (e) {
    notice(`Could not delete: ${explain(e.code, e.message, e.retryAfter)}`, true);
  }
}

function newConversation() {
  if (chat.current) {
    notice("Wait for the answer to finish (or stop it) before starting a new conversation.");
    return;
  }
  chat.conversationId = null;
  chat.olderBefore = null;
  $("log").replaceChildren();
  $("older-messages").hidden = true;
  $("empty-hint").hidden = false;
  markCurrentConversation();
  closeListOnPhone();
  $("question").focus();
}

async function openConversation(id, older = false) {
  if (chat.current && !older) {
    notice("Wait for the answer to finish (or stop it) before switching conversations.");
    return;
  }
  const query = older && chat.olderBefore ? `&before=${encodeURIComponent(chat.olderBefore)}` : "";
  try {
    const page = await authed("GET", `/api/conversations/${id}/messages?limit=50${query}`);
    const nodes = page.items.reverse().map(messageNode); // pages are newest first
    if (older) {
      $("log").prepend(...nodes);
    } else {
      chat.conversationId = id;
      $("log").replaceChildren(...nodes);
      scrollLog();
      closeListOnPhone();
      $("question").focus();
    }
    chat.olderBefore = page.next_before;
    $("older-messages").hidden = !page.next_before;
    $("empty-hint").hidden = $("log").children.length > 0;
    markCurrentConversation();
  } catch (e) {
    notice(`Could not open the conversation: ${explain(e.code, e.message, e.retryAfter)}`, true);
    if (e.code === "not_found") loadConversations();
  }
}

/** A stored message from the history API as a bubble. */
function messageNode(m) {
  if (m.role === "user") return el("div", { class: "msg user", text: m.content });
  const bubble = botBubble();
  renderAnswer(bubble.body, m.content);
  showSources(bubble, m.sources || []);
  if (m.status === "cancelled") bubble.note("Stopped.");
  else if (m.status === "error") bubble.note("This answer failed.", true);
  else if (m.status === "pending") bubble.note("Still being written…");
  else addFeedback(bubble, m.id);
  return bubble.node;
}

function toggleList(open) {
  const show = open ?? !document.body.classList.contains("list-open");
  document.body.classList.toggle("list-open", show);
  $("toggle-list").setAttribute("aria-expanded", String(show));
  if (show) $("new-conversation").focus();
}

function closeListOnPhone() {
  if (document.body.classList.contains("list-open")) toggleList(false);
}

// --- answers as text ----------------------------------------------------------------------

const LIST_ITEM = /^\s*(?:[-*•]|\d+[.)])\s+/;

/** Model text → paragraphs and lists, built from text nodes only (never parsed as HTML). */
function renderAnswer(container, text) {
  const blocks = text.replace(/\r\n/g, "\n").split(/\n\s*\n/);
  const nodes = [];
  for (const block of blocks) {
    const lines = block.split("\n").filter((l) => l.trim() !== "");
    if (lines.length === 0) continue;
    if (lines.every((l) => LIST_ITEM.test(l))) {
      const ordered = /^\s*\d/.test(lines[0]);
      nodes.push(el(ordered ? "ol" : "ul", {}, lines.map((l) => el("li", { text: l.replace(LIST_ITEM, "") }))));
    } else {
      nodes.push(el("p", { text: lines.join("\n") }));
    }
  }
  container.replaceChildren(...nodes);
}

function botBubble() {
  const body = el("div", { class: "body" });
  const node = el("div", { class: "msg bot" }, [body]);
  return {
    node,
    body,
    note(text, bad = false) {
      const p = el("p", { class: bad ? "note bad" : "note", text });
      node.append(p);
      return p;
    },
  };
}

function showSources(bubble, sources) {
  if (!sources.length) return;
  const items = sources.map((s) => {
    const title = s.heading ? `${s.document} › ${s.heading}` : s.document;
    return el("details", {}, [
      el("summary", { text: `${title} (${Number(s.score).toFixed(2)})` }),
      el("blockquote", { text: s.snippet }),
    ]);
  });
  const label = sources.length === 1 ? "1 source" : `${sources.length} sources`;
  bubble.node.append(el("details", { class: "sources" }, [el("summary", { text: label }), ...items]));
}

// --- feedback -----------------------------------------------------------------------------

const pendingFeedback = new Map(); // message_id → { status element, timer }

function addFeedback(bubble, messageId) {
  if (!messageId) return;
  const status = el("span", { class: "muted", role: "status" });
  const comment = el("input", { type: "text", maxlength: "1000", placeholder: "Comment (optional)", "aria-label": "Comment" });
  const form = el("form", {}, [comment, el("button", { type: "submit", text: "Send" })]);
  form.hidden = true;
  let rating = null;
  const rate = (value) => {
    rating = value;
    up.setAttribute("aria-pressed", String(value === "up"));
    down.setAttribute("aria-pressed", String(value === "down"));
    form.hidden = false;
    sendFeedback(messageId, rating, "", status);
  };
  const up = el("button", { type: "button", "aria-pressed": "false", "aria-label": "Helpful", text: "✓ Helpful", onclick: () => rate("up") });
  const down = el("button", { type: "button", "aria-pressed": "false", "aria-label": "Not helpful", text: "✗ Not helpful", onclick: () => rate("down") });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (rating && comment.value.trim()) sendFeedback(messageId, rating, comment.value.trim(), status);
  });
  bubble.node.append(el("div", { class: "feedback" }, [up, down, form, status]));
}

function sendFeedback(messageId, rating, comment, status) {
  if (!chat.ready) {
    status.textContent = "Not connected; try again in a moment.";
    return;
  }
  const frame = { type: "feedback", message_id: messageId, rating };
  if (comment) frame.comment = comment;
  chat.ws.send(JSON.stringify(frame));
  status.textContent = "Sending…";
  const previous = pendingFeedback.get(messageId);
  if (previous) clearTimeout(previous.timer);
  const timer = setTimeout(() => {
    pendingFeedback.delete(messageId);
    status.textContent = "Feedback could not be saved.";
  }, 10_000);
  pendingFeedback.set(messageId, { status, timer });
}

function feedbackAnswered(messageId, text) {
  const pending = pendingFeedback.get(messageId);
  if (!pending) return false;
  clearTimeout(pending.timer);
  pending.status.textContent = text;
  pendingFeedback.delete(messageId);
  return true;
}

// --- the socket ---------------------------------------------------------------------------

const chat = {
  ws: null,
  ready: false,
  attempts: 0, // failed connections in a row (for the backoff)
  authRetried: false, // a refresh after 4001 was already tried for this connection
  reconnectTimer: 0,
  pingTimer: 0,
  pongTimer: 0,
  lastAuthError: null, // code of an `error` frame seen before `ready`
  conversationId: null,
  olderBefore: null,
  current: null, // the answer being streamed: { id, bubble, text, lastSeq, sources, resumed, ... }
  connecting: false, // connect() is getting a token before it opens the socket
  holdUntil: 0, // Send stays disabled until then (a rate limit's retry time)
};

function closeSocket() {
  clearTimeout(chat.reconnectTimer);
  clearInterval(chat.pingTimer);
  clearTimeout(chat.pongTimer);
  if (chat.ws) {
    chat.ws.onclose = null;
    chat.ws.close(1000, "bye");
  }
  chat.ws = null;
  chat.ready = false;
  updateControls();
}

async function connect() {
  clearTimeout(chat.reconnectTimer);
  if (!session.refresh || chat.ws || chat.connecting) return;
  chat.connecting = true;
  try {
    if (!session.access || Date.now() > session.expiresAt - 5_000) await refreshTokens();
  } catch (e) {
    if (session.refresh) scheduleReconnect(e.code);
    return;
  } finally {
    chat.connecting = false;
  }
  if (!session.refresh || chat.ws) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/chat`);
  chat.ws = ws;
  chat.ready = false;
  chat.lastAuthError = null;
  ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: session.access }));
  ws.onmessage = (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    onFrame(frame);
  };
  ws.onclose = (event) => onClose(ws, event);
}

function onClose(ws, event) {
  if (ws !== chat.ws) return;
  clearInterval(chat.pingTimer);
  clearTimeout(chat.pongTimer);
  const wasReady = chat.ready;
  chat.ready = false;
  chat.ws = null;
  updateControls();
  if (chat.current) chat.current.bubble.node.classList.remove("streaming");
  // 4001: the token expired. Older servers close with 4003 after a `token_expired` error.
  const expired = event.code === 4001 || (event.code === 4003 && chat.lastAuthError === "token_expired");
  if (expired || event.code === 4003) {
    if (chat.authRetried) {
      endSession(explain("token_expired"));
      return;
    }
    chat.authRetried = true;
    notice("Renewing your session…");
    session.access = null; // connect() refreshes first
    connect();
    return;
  }
  // 4010: an administrator closed this session; 4029: this account has too many sockets open.
  // Reconnecting on our own would only repeat it: say why and let the person decide.
  if (event.code === 4010) {
    notice(`An administrator closed this connection (${event.reason || "no reason given"}). Reload the page to reconnect.`, true);
    return;
  }
  if (event.code === 4029) {
    notice("Too many chat windows are open for this account. Close one, then reload this page.", true);
    return;
  }
  // 1012: this server instance is draining for a restart; another one takes the reconnect
  // (through the load balancer) and resumes the answer, so start over from the first backoff.
  if (wasReady || event.code === 1012) chat.attempts = 0;
  scheduleReconnect(event.code === 1001 || event.code === 1012 ? "going_away" : "network");
}

function scheduleReconnect(reason) {
  chat.attempts += 1;
  // Exponential backoff with full jitter: many clients reconnecting after an outage spread out.
  const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (chat.attempts - 1));
  const delay = Math.round(cap / 2 + Math.random() * (cap / 2));
  const what = reason === "going_away" ? "The server is restarting." : "Connection lost.";
  const down = chat.attempts > 2 ? " The server seems to be down." : "";
  notice(`${what}${down} Reconnecting in ${Math.ceil(delay / 1000)} s…`, chat.attempts > 2);
  if (chat.current) chat.current.waiting ??= chat.current.bubble.note("Connection lost; the answer will resume when it is back.");
  chat.reconnectTimer = setTimeout(connect, delay);
}

function send(frame) {
  if (!chat.ready) return false;
  chat.ws.send(JSON.stringify(frame));
  return true;
}

function onFrame(frame) {
  const current = chat.current;
  const mine = current && frame.id === current.id;
  switch (frame.type) {
    case "ready":
      chat.ready = true;
      chat.authRetried = false;
      session.user = frame.user;
      $("whoami").textContent = frame.user.username;
      notice("");
      startPings();
      updateControls();
      if (current) {
        send({ type: "resume", id: current.id, after_seq: current.lastSeq });
        current.resumed = true;
        current.bubble.node.classList.add("streaming");
        if (current.waiting) current.waiting.textContent = "Reconnected; resuming the answer…";
      }
      break;
    case "pong":
      clearTimeout(chat.pongTimer);
      break;
    case "sources":
      if (!mine) break;
      current.sources = frame.sources;
      if (!chat.conversationId) chat.conversationId = frame.conversation_id;
      break;
    case "delta":
      if (!mine || (current.lastSeq !== null && frame.seq <= current.lastSeq)) break;
      current.text += frame.text;
      current.lastSeq = frame.seq;
      if (current.waiting) {
        current.waiting.textContent = "Resumed after a reconnect.";
        current.waiting.classList.add("resumed");
        current.waiting = null;
      }
      scheduleRender();
      break;
    case "done":
      if (mine) answerDone(frame);
      break;
    case "feedback_ack":
      feedbackAnswered(frame.message_id, "Thanks for your feedback.");
      break;
    case "error":
      onError(frame);
      break;
  }
}

/** Codes of a question refused before it was stored: no `done` follows their `error`. */
const REFUSALS = new Set(["rate_limited", "validation_failed", "payload_too_large", "conflict", "too_many_in_flight", "bad_request"]);

function onError(frame) {
  const text = explain(frame.code, frame.message, frame.retry_after);
  if (!chat.ready) {
    chat.lastAuthError = frame.code;
    return;
  }
  if (chat.current && frame.id === chat.current.id) {
    if (frame.code === "not_found" && chat.current.resumed) {
      // The server no longer holds this answer: show what was stored instead.
      const id = chat.conversationId;
      finishCurrent();
      if (id) openConversation(id);
      notice("The answer could not be resumed; showing what was saved.");
      return;
    }
    const current = chat.current;
    current.bubble.note(text, true);
    current.failed = true;
    if (frame.code === "rate_limited") holdSend(frame.retry_after ?? 60);
    // A question refused before it was stored ends here; a failed answer is followed by its
    // `done` (stored with the error status). Don't wait for a `done` that may never come.
    if (REFUSALS.has(frame.code)) finishCurrent();
    else setTimeout(() => chat.current === current && finishCurrent(), 3_000);
    return;
  }
  // A frame-level error with no ask id: maybe the answer to a feedback frame (a server without
  // feedback calls the frame type unknown: bad_request).
  const why = frame.code === "bad_request" ? "this server does not accept feedback." : text;
  for (const id of pendingFeedback.keys()) {
    if (feedbackAnswered(id, `Feedback not saved: ${why}`)) return;
  }
  notice(text, true);
}

/** Keeps Send disabled for a rate limit's retry time, counting down. */
function holdSend(seconds) {
  chat.holdUntil = Date.now() + seconds * 1000;
  const tick = () => {
    const left = Math.ceil((chat.holdUntil - Date.now()) / 1000);
    if (left > 0) {
      $("send").textContent = `Wait ${left} s`;
      setTimeout(tick, 1000);
    } else {
      $("send").textContent = "Send";
    }
    updateControls();
  };
  tick();
}

function startPings() {
  clearInterval(chat.pingTimer);
  chat.pingTimer = setInterval(() => {
    if (!send({ type: "ping" })) return;
    clearTimeout(chat.pongTimer);
    // No pong in time: the connection is dead even if the browser has not noticed yet.
    chat.pongTimer = setTimeout(() => chat.ws && chat.ws.close(4000, "no pong"), PONG_WAIT_MS);
  }, APP_PING_MS);
}

// --- asking -------------------------------------------------------------------------------

function ask(event) {
  event.preventDefault();
  const message = $("question").value.trim();
  if (!message || chat.current || !chat.ready) return;
  const id = `a-${randomId()}`;
  $("empty-hint").hidden = true;
  $("log").append(el("div", { class: "msg user", text: message }));
  const bubble = botBubble();
  bubble.node.classList.add("streaming");
  bubble.node.setAttribute("aria-busy", "true");
  $("log").append(bubble.node);
  chat.current = { id, bubble, text: "", lastSeq: null, sources: [], resumed: false, waiting: null };
  send({ type: "ask", id, message, conversation_id: chat.conversationId });
  $("question").value = "";
  updateControls();
  scrollLog();
}

function stop() {
  if (chat.current) send({ type: "cancel", id: chat.current.id });
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    if (!chat.current) return;
    renderAnswer(chat.current.bubble.body, chat.current.text);
    scrollLog();
  });
}

function answerDone(frame) {
  const current = chat.current;
  renderAnswer(current.bubble.body, current.text);
  showSources(current.bubble, current.sources);
  chat.conversationId = frame.conversation_id;
  if (frame.finish_reason === "cancelled") current.bubble.note("Stopped.");
  else if (frame.finish_reason === "error") {
    if (!current.failed) current.bubble.note("The answer failed part-way.", true);
  }
  else addFeedback(current.bubble, frame.message_id);
  finishCurrent();
  // The list is ordered by creation: a new conversation goes on top; others stay put.
  if (!$("conversations").querySelector(`[data-id="${frame.conversation_id}"]`)) loadConversations();
  else markCurrentConversation();
}

function finishCurrent() {
  const current = chat.current;
  if (!current) return;
  current.bubble.node.classList.remove("streaming");
  current.bubble.node.removeAttribute("aria-busy");
  chat.current = null;
  updateControls();
  scrollLog();
}

function updateControls() {
  const busy = Boolean(chat.current);
  const held = chat.holdUntil && Date.now() < chat.holdUntil;
  $("send").disabled = busy || !chat.ready || held;
  $("stop").hidden = !busy;
  $("stop").disabled = !chat.ready;
}

function scrollLog() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

// --- start --------------------------------------------------------------------------------

function startChat() {
  $("auth-view").hidden = true;
  $("chat-view").hidden = false;
  $("logout").hidden = false;
  $("toggle-list").hidden = false;
  notice("Connecting…");
  chat.attempts = 0;
  updateControls();
  newConversation();
  loadConversations();
  connect();
}

function init() {
  setAuthMode(false);
  $("auth-form").addEventListener("submit", submitAuth);
  $("auth-switch").addEventListener("click", () => {
    setAuthMode(!signingUp);
    $("username").focus();
  });
  $("logout").addEventListener("click", logout);
  $("ask-form").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask-form").requestSubmit();
    }
  });
  $("stop").addEventListener("click", stop);
  $("new-conversation").addEventListener("click", newConversation);
  $("more-conversations").addEventListener("click", () => loadConversations(true));
  $("older-messages").addEventListener("click", () => chat.conversationId && openConversation(chat.conversationId, true));
  $("toggle-list").addEventListener("click", () => toggleList());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeListOnPhone();
  });
  // Back online: reconnect now rather than at the end of the backoff.
  window.addEventListener("online", () => {
    if (session.refresh && !chat.ws) connect();
  });
  if (session.refresh) {
    startChat();
  } else {
    $("auth-view").hidden = false;
    $("username").focus();
  }
}

init();
