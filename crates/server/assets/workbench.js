// Process Factory workbench: live regions, API forms, saved drafts, tabs.
// No framework, no build step. Pages are server-rendered; this script only
// (1) listens to server-sent events and refreshes [data-live] regions,
// (2) submits forms to the JSON API, (3) saves drafts to the run, (4) traces
// a block's lineage on the pipeline graph.
"use strict";

const body = document.body;
const runId = body.dataset.run || null;
let seq = Number(body.dataset.seq || 0);

function setStatus(text, ok) {
  const el = document.getElementById("live-status");
  if (el) { el.textContent = text; el.classList.toggle("ok", !!ok); }
}

// ── Live updates ──
let refreshing = false, again = false;
async function refreshLive() {
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    const response = await fetch(location.href, { headers: { "accept": "text/html" } });
    if (!response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const fresh of doc.querySelectorAll("[data-live]")) {
      const current = document.getElementById(fresh.id);
      if (!current) continue;
      // Never pull a field out from under someone typing in it.
      if (current.contains(document.activeElement) && document.activeElement !== document.body) continue;
      // Only what changed is swapped: the rest keeps its DOM (and scroll).
      if (current.outerHTML === fresh.outerHTML) continue;
      current.replaceWith(fresh);
      bindForms(fresh);
    }
    const freshSeq = Number(doc.body.dataset.seq || 0);
    if (freshSeq > seq) { seq = freshSeq; body.dataset.seq = String(seq); }
    body.dataset.refreshed = String(Date.now());
  } finally {
    refreshing = false;
    if (again) { again = false; refreshLive(); }
  }
}

// An event names the block it changed and its new status: the graph shows
// that at once, from the event alone. The rest of the page (badges,
// durations, timeline, counts) follows with a refresh, at most one a second
// however many events arrive.
function patchBlock(event) {
  if (!event || !event.block || !event.block_status) return;
  const id = CSS.escape(event.block);
  for (const node of document.querySelectorAll(`a.block[data-block="${id}"]`)) {
    node.classList.remove("pending", "ready", "running", "done", "failed", "blocked", "waiting");
    node.classList.add(event.block_status);
    node.dataset.status = event.block_status;
  }
  if (event.block_status === "done") {
    for (const edge of document.querySelectorAll(`path.edge[data-from="${id}"]`)) edge.classList.add("met");
  }
  const run = document.querySelector("[data-run-status]");
  if (run && event.run_status && event.run_id === runId) {
    run.dataset.runStatus = event.run_status;
    run.textContent = event.run_status;
    run.className = `status big ${event.run_status}`;
  }
}
let lastRefresh = 0, trailing = null;
function scheduleRefresh() {
  if (trailing) return;
  const wait = 1000 - (Date.now() - lastRefresh);
  const go = () => { trailing = null; lastRefresh = Date.now(); refreshLive(); };
  if (wait <= 0) go(); else trailing = setTimeout(go, wait);
}

function connect() {
  const url = runId
    ? `/api/v1/runs/${encodeURIComponent(runId)}/stream?after=${seq}`
    : "/api/v1/stream";
  const source = new EventSource(url);
  let opened = false;
  source.addEventListener("hello", () => {
    setStatus("● live", true);
    // After a reconnect (e.g. the server restarted) catch up once.
    if (opened) refreshLive();
    opened = true;
  });
  source.onmessage = () => refreshLive();
  for (const type of ["block_ready", "block_waiting", "block_blocked", "block_started",
    "attempt_finished", "attempt_abandoned", "retry_scheduled", "block_done", "block_failed",
    "review_flagged", "audit_flagged", "gate_approved", "gate_rejected", "block_reset",
    "autonomy_changed", "run_status_changed", "run_created", "corrections_routed",
    "feedback_submitted", "item_changed", "corrections_ingested", "gaps_found", "gap_changed",
    "resync"]) {
    source.addEventListener(type, (event) => {
      if (event.lastEventId && runId) {
        const n = Number(event.lastEventId);
        if (n > seq) { seq = n; body.dataset.seq = String(seq); }
      }
      try { patchBlock(JSON.parse(event.data)); } catch (_) { /* not a block event */ }
      scheduleRefresh();
    });
  }
  source.onerror = () => setStatus("○ reconnecting", false);
  // Browsers allow six HTTP/1.1 connections per host: a stream left open by
  // a page being left (or kept in the back/forward cache) would starve the next.
  window.addEventListener("pagehide", () => source.close(), { once: true });
}
window.addEventListener("pageshow", (event) => { if (event.persisted) { connect(); refreshLive(); } });

// ── Forms → API ──
async function api(method, url, payload) {
  const response = await fetch(url, {
    method,
    headers: { "content-type": "application/json" },
    body: payload === undefined ? undefined : JSON.stringify(payload),
  });
  if (response.ok) {
    return response.status === 204 ? null : response.json();
  }
  let message = `HTTP ${response.status}`, problems = [];
  try {
    const error = (await response.json()).error;
    message = error.message;
    problems = error.problems || [];
  } catch (_) { /* not JSON */ }
  const failure = new Error(message);
  failure.problems = problems;
  throw failure;
}

function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

const blockUrl = (form) =>
  `/api/v1/runs/${encodeURIComponent(runId)}/blocks/${encodeURIComponent(form.dataset.block)}`;

const actions = {
  async "create-run"(form) {
    const data = new FormData(form);
    const params = {};
    for (const [key, value] of data.entries()) {
      if (key.startsWith("param.") && value !== "") params[key.slice(6)] = value;
    }
    const files = [];
    for (const file of form.querySelector("input[type=file]").files) {
      files.push({ name: file.name, content_base64: await fileToBase64(file) });
    }
    const run = await api("POST", "/api/v1/runs", {
      template: data.get("template"),
      params,
      autonomy_profile: data.get("autonomy_profile") || null,
      files,
    });
    location.href = `/runs/${run.run_id}`;
  },
  async "add-record"(form) {
    let record;
    try { record = JSON.parse(form.record.value); } catch (e) { throw new Error(`not JSON: ${e.message}`); }
    await api("POST", `/api/v1/records/${encodeURIComponent(form.dataset.template)}?block=${encodeURIComponent(form.dataset.block)}`, record);
    form.record.value = "";
  },
  async gap(form) {
    await api("POST", `/api/v1/runs/${encodeURIComponent(runId)}/gaps/${encodeURIComponent(form.dataset.gap)}`,
      { status: form.dataset.status, note: form.note.value });
  },
  async "retry-notification"(form) {
    await api("POST", `/api/v1/notifications/${encodeURIComponent(form.dataset.id)}/retry`);
  },
  async "retry-record"(form) {
    await api("POST", `/api/v1/records/${encodeURIComponent(form.dataset.template)}/${encodeURIComponent(form.dataset.key)}/retry`);
  },
  async approve(form) {
    await api("POST", `${blockUrl(form)}/approve`, { note: form.note.value || null });
  },
  async reject(form) {
    await api("POST", `${blockUrl(form)}/reject`, { feedback: form.feedback.value });
    await saveDraft(form.feedback.dataset.draft, { feedback: "" });
    form.feedback.value = "";
  },
  async autonomy(form) {
    await api("PUT", `${blockUrl(form)}/autonomy`, { autonomy: form.autonomy.value });
  },
  async run(form) {
    await api("POST", `${blockUrl(form)}/run`);
  },
  async chat(form) {
    const message = form.message.value;
    form.message.value = "";
    await saveDraft(form.message.dataset.draft, { message: "" });
    await api("POST", `${blockUrl(form)}/chat`, { message });
  },
  // The META chat: questions about the whole run.
  async "run-chat"(form) {
    const message = form.message.value;
    // Kept in the box (and its draft) until the answer is in: a failed turn
    // loses nothing.
    await api("POST", `/api/v1/runs/${encodeURIComponent(runId)}/chat`, { message });
    form.message.value = "";
    await saveDraft(form.message.dataset.draft, { message: "" });
  },
  // The extraction review: one verdict per marked item.
  async review(form) {
    const items = [];
    for (const row of form.querySelectorAll("tr.review-item")) {
      const n = row.querySelector("input[type=radio]").name.slice(1);
      const verdict = form.querySelector(`input[name="v${n}"]:checked`);
      if (!verdict) continue;
      items.push({
        source_key: row.dataset.key,
        skill_target: row.dataset.target,
        verdict: verdict.value,
        source_text: row.dataset.text,
        priority: form[`p${n}`].value,
        correction: form[`c${n}`].value,
      });
    }
    await submitReview(form, { items, free_text: form.free_text.value, close: form.close.checked });
  },
  // The expert audit: scenario ratings (each also a vote on that scenario),
  // answers, extra findings.
  async audit(form) {
    const items = [], ratings = [], answers = [];
    form.querySelectorAll("fieldset[data-scenario]").forEach((set, n) => {
      const choice = form.querySelector(`input[name="r${n}"]:checked`);
      if (!choice) return;
      const yes = choice.value === "yes";
      const correction = form[`c${n}`].value;
      ratings.push({ scenario: set.dataset.scenario, sounds_like_me: yes, note: correction });
      items.push({
        source_key: set.dataset.key,
        skill_target: form[`t${n}`].value,
        verdict: yes ? "correct" : "wrong",
        source_text: `Scenario ${set.dataset.scenario}: ${set.dataset.text}`,
        priority: form[`p${n}`].value,
        correction,
      });
    });
    for (const label of form.querySelectorAll("label[data-question]")) {
      const answer = label.querySelector("textarea").value;
      if (answer) answers.push({ question: label.dataset.question, answer });
    }
    for (const row of form.querySelectorAll("div[data-finding]")) {
      const n = row.dataset.finding;
      const target = form[`ft${n}`].value, finding = form[`ff${n}`].value;
      if (!target || !finding) continue;
      const slug = finding.toLowerCase().replace(/[^a-z0-9]+/g, "-").slice(0, 48);
      items.push({
        source_key: `expert-audit:${target}:${slug}`,
        skill_target: target,
        verdict: "wrong",
        source_text: finding,
        priority: form[`fp${n}`].value,
        correction: form[`fc${n}`].value,
      });
    }
    await submitReview(form, { items, ratings, answers, free_text: form.free_text.value, close: form.close.checked });
  },
  async "review-links"(form) {
    const result = await api("POST", `/api/v1/runs/${encodeURIComponent(runId)}/review-links`,
      { tester: form.tester.value, tester_role: form.tester_role.value });
    const list = form.querySelector("[data-links]");
    list.textContent = "";
    for (const link of result.links) {
      const item = document.createElement("li");
      const a = document.createElement("a");
      a.href = link.url;
      a.textContent = `${link.page} for ${result.tester} (${result.tester_role})`;
      a.dataset.page = link.page;
      item.append(a, ` — ${location.origin}${link.url}`);
      list.append(item);
    }
  },
  async "review-chat"(form) {
    const message = form.message.value;
    form.message.value = "";
    await api("POST", `${blockUrl(form)}/review-chat`, { message });
  },
  async rate(form) {
    await api("POST", `/api/v1/runs/${encodeURIComponent(runId)}/ratings`,
      { block: form.dataset.block, score: Number(form.score.value), comment: form.comment.value });
  },
  async reflection(form) {
    const answers = {};
    for (const field of ["worked", "broke", "change", "automate"]) answers[field] = form[field].value;
    await api("PUT", `/api/v1/runs/${encodeURIComponent(runId)}/reflection`, answers);
  },
};

async function submitReview(form, payload) {
  const result = await api("POST", `${blockUrl(form)}/feedback`, payload);
  const out = form.querySelector("[data-result]");
  if (out) {
    const changed = result.changes.filter((c) => c.from !== c.to).length;
    let text = `Thank you: ${result.changes.length} item(s) recorded for ${result.version}, ${changed} changed status.`;
    if (result.gate) text += ` ${result.gate.approved ? "Review closed" : "Review still open"}: ${result.gate.reason}`;
    out.textContent = text;
    out.dataset.gate = result.gate ? String(result.gate.approved) : "";
  }
}

function bindForms(root) {
  for (const form of root.querySelectorAll("form[data-action]")) {
    if (form.dataset.bound) continue;
    form.dataset.bound = "1";
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = form.querySelector("[data-error]");
      if (error) error.textContent = "";
      const button = form.querySelector("button[type=submit]");
      if (button) button.disabled = true;
      try {
        await actions[form.dataset.action](form);
        document.activeElement && document.activeElement.blur();
        await refreshLive();
      } catch (e) {
        if (error) {
          error.textContent = e.message;
          // Several reasons: one line each, then bring them into view.
          if (e.problems && e.problems.length) {
            const list = document.createElement("ul");
            for (const problem of e.problems) {
              const item = document.createElement("li");
              item.textContent = problem;
              list.append(item);
            }
            error.append(list);
          }
          error.scrollIntoView({ block: "nearest" });
        }
      } finally {
        if (button) button.disabled = false;
      }
    });
  }
  for (const select of root.querySelectorAll("select[data-reload-with]")) {
    select.addEventListener("change", () => {
      location.href = `?${select.dataset.reloadWith}=${encodeURIComponent(select.value)}`;
    });
  }
  bindVoice(root);
  for (const field of root.querySelectorAll("[data-draft]")) {
    if (field.dataset.draftBound) continue;
    field.dataset.draftBound = "1";
    let timer = null;
    field.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        const key = field.dataset.draft;
        const values = {};
        for (const f of document.querySelectorAll(`[data-draft="${key}"]`)) values[f.name] = f.value;
        saveDraft(key, values);
      }, 400);
    });
  }
}

// ── Voice input (seed 003: the reflection "with mic input"; the review
// pages' free text): where the browser has the Web Speech API, a textarea
// marked data-voice gets a Dictate button. What is heard is appended to the
// text, which stays editable and is saved like typed text (drafts too).
// Without the API there is no button and the text box works as before. ──
const speechApi = () => window.SpeechRecognition || window.webkitSpeechRecognition;
function bindVoice(root) {
  if (!speechApi()) return;
  for (const area of root.querySelectorAll("textarea[data-voice]")) {
    if (area.dataset.voiceBound) continue;
    area.dataset.voiceBound = "1";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "voice";
    button.dataset.voiceFor = area.name;
    button.setAttribute("aria-pressed", "false");
    button.textContent = "Dictate";
    button.title = "Speak: the words are added to this text, which you can edit before saving";
    const note = document.createElement("span");
    note.className = "voice-note muted";
    note.setAttribute("role", "status");
    let listening = null;
    button.addEventListener("click", () => {
      if (listening) { listening.stop(); return; }
      const Api = speechApi();
      if (!Api) return;
      const recognition = new Api();
      recognition.lang = document.documentElement.lang || navigator.language || "en-US";
      recognition.interimResults = false;
      recognition.continuous = true;
      recognition.onresult = (event) => {
        let heard = "";
        for (let i = event.resultIndex; i < event.results.length; i++) {
          if (event.results[i].isFinal) heard += event.results[i][0].transcript;
        }
        heard = heard.trim();
        if (!heard) return;
        area.value = area.value.trim() ? `${area.value.replace(/\s+$/, "")} ${heard}` : heard;
        area.dispatchEvent(new Event("input", { bubbles: true }));
      };
      recognition.onerror = (event) => { note.textContent = `Dictation stopped: ${event.error}`; };
      recognition.onend = () => {
        listening = null;
        button.setAttribute("aria-pressed", "false");
        button.textContent = "Dictate";
      };
      listening = recognition;
      note.textContent = "";
      button.setAttribute("aria-pressed", "true");
      button.textContent = "Stop dictating";
      try { recognition.start(); } catch (e) { note.textContent = `Dictation unavailable: ${e.message}`; recognition.onend(); }
    });
    area.insertAdjacentElement("afterend", note);
    area.insertAdjacentElement("afterend", button);
  }
}

async function saveDraft(key, values) {
  if (!runId || !key) return;
  try {
    await api("PUT", `/api/v1/runs/${encodeURIComponent(runId)}/drafts/${encodeURIComponent(key)}`, values);
    body.dataset.draftSaved = key;
  } catch (_) { /* a viewer cannot save drafts; the field still works */ }
}

// ── Tabs ──
// A tablist as ARIA describes it: the selected tab alone is in the Tab order;
// arrow keys, Home and End move between tabs and show the one they reach.
function bindTabs() {
  const buttons = [...document.querySelectorAll("[data-tab]")];
  const show = (name) => {
    for (const b of buttons) {
      const on = b.dataset.tab === name;
      b.classList.toggle("active", on);
      b.setAttribute("aria-selected", String(on));
      b.tabIndex = on ? 0 : -1;
    }
    for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== `tab-${name}`;
  };
  const choose = (b) => { show(b.dataset.tab); history.replaceState(null, "", `${location.search}#${b.dataset.tab}`); };
  buttons.forEach((b, i) => {
    b.addEventListener("click", () => choose(b));
    b.addEventListener("keydown", (e) => {
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: buttons.length - 1 }[e.key];
      if (next === undefined) return;
      e.preventDefault();
      const to = buttons[(next + buttons.length) % buttons.length];
      choose(to);
      to.focus();
    });
  });
  const wanted = location.hash.slice(1);
  if (wanted && document.getElementById(`tab-${wanted}`)) show(wanted);
}

// ── The pipeline graph: a block under the pointer or the keyboard focus
// lights up with everything upstream and downstream of it ──
function lineage(svg, id) {
  const edges = [...svg.querySelectorAll("path.edge")];
  const lit = new Set([id]);
  for (const [from, to] of [["from", "to"], ["to", "from"]]) {
    const stack = [id];
    while (stack.length) {
      const at = stack.pop();
      for (const e of edges) {
        if (e.dataset[to] !== at) continue;
        e.classList.add("lit");
        const next = e.dataset[from];
        if (!lit.has(next)) { lit.add(next); stack.push(next); }
      }
    }
  }
  for (const b of svg.querySelectorAll("a.block")) b.classList.toggle("lit", lit.has(b.dataset.block));
  svg.classList.add("tracing");
}
function unlight(svg) {
  svg.classList.remove("tracing");
  for (const el of svg.querySelectorAll(".lit")) el.classList.remove("lit");
}
for (const [on, off] of [["mouseover", "mouseout"], ["focusin", "focusout"]]) {
  document.addEventListener(on, (e) => {
    const block = e.target.closest && e.target.closest("svg.graph a.block");
    if (block) { unlight(block.ownerSVGElement); lineage(block.ownerSVGElement, block.dataset.block); }
  });
  document.addEventListener(off, (e) => {
    const block = e.target.closest && e.target.closest("svg.graph a.block");
    if (block) unlight(block.ownerSVGElement);
  });
}

// ── Elapsed time on running blocks: the page says how long an attempt had
// run when it was drawn; count on from there until the next refresh ──
function durationWords(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`;
  const s = Math.floor(ms / 1000), h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, r = s % 60;
  return [[h, "h"], [m, "min"], [r, "s"]].filter(([n]) => n > 0).map(([n, u]) => `${n} ${u}`).join(" ");
}
setInterval(() => {
  for (const el of document.querySelectorAll("[data-elapsed]")) {
    el.__since = el.__since || Date.now();
    el.textContent = durationWords(Math.round((Number(el.dataset.elapsed) + Date.now() - el.__since) / 1000) * 1000);
  }
}, 1000);

// ── A running attempt's output: asked for every second while it shows ──
setInterval(async () => {
  for (const pre of document.querySelectorAll("pre[data-live-log]")) {
    try {
      const response = await fetch(pre.dataset.liveLog, { headers: { "accept": "text/plain" } });
      if (!response.ok) continue;
      const text = await response.text();
      if (pre.textContent !== text) {
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.textContent = text;
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      }
      // The attempt ended: its stored logs come with the next refresh.
      if (response.headers.get("x-factory-log") !== "live") delete pre.dataset.liveLog;
    } catch (_) { /* the next tick tries again */ }
  }
}, 1000);

// ── The extraction review: narrow the list by file, status and text ──
function filterReview() {
  const form = document.getElementById("review-form");
  if (!form) return;
  const source = document.getElementById("filter-source").value;
  const status = document.getElementById("filter-status").value;
  const text = document.getElementById("filter-text").value.trim().toLowerCase();
  const rows = [...form.querySelectorAll("tr.review-item")];
  let shown = 0;
  for (const row of rows) {
    const marked = row.querySelector("input[type=radio]:checked") !== null;
    const ok = (!source || row.dataset.target === source)
      && (!status || (status === "marked" && marked) || (status === "unmarked" && !marked)
        || (status === "finding" && row.querySelector("[data-item-status]") !== null))
      && (!text || row.textContent.toLowerCase().includes(text) || (row.dataset.key || "").toLowerCase().includes(text));
    row.hidden = !ok;
    if (ok) shown++;
  }
  for (const section of form.querySelectorAll("section[data-source]")) {
    section.hidden = !section.querySelector("tr.review-item:not([hidden])");
  }
  document.getElementById("filter-count").textContent = `${shown} of ${rows.length} items`;
}
for (const id of ["filter-source", "filter-status", "filter-text"]) {
  const control = document.getElementById(id);
  if (control) control.addEventListener("input", filterReview);
}
document.addEventListener("change", (e) => {
  if (e.target.matches && e.target.matches("#review-form input[type=radio]")) filterReview();
});

bindForms(document);
bindTabs();
if (document.getElementById("live-status")) connect();

// Pages no event stream covers (a stream's records) look again every few seconds.
if (body.dataset.poll) setInterval(refreshLive, Math.max(500, Number(body.dataset.poll)));
