// The runs page's script: plain JavaScript, no framework, no build step; an ES module, with
// the terminal's drawing and key encoding in terminal.js.
//
// Everything it shows comes from the bridge's authenticated API. Text from runs (logs, final
// messages, diffs, prompts) is untrusted: it reaches the page only through textContent and
// text nodes, never as markup. The token, when the bridge wants one, lives in this tab's
// sessionStorage and travels only in the Authorization header, never in a URL; that is also
// why the live log is read with fetch streaming rather than EventSource, which cannot send
// headers.
import { drawCells, keyBytes, measureFit, pasteText } from '/assets/terminal.js';

(() => {
  'use strict';

  const TOKEN_KEY = 'headless-bridge.token';
  const PAGE_SIZE = 25;
  const LIST_REFRESH_MS = 3000;
  const RECONNECT_MAX_MS = 15000;
  const CLI_EVENT_MAX_CHARS = 2000;

  const view = {
    selected: null, // id of the run shown in detail
    follow: null, // AbortController of the live log being read
    cursor: null, // next_cursor of the last page of runs shown
    shown: PAGE_SIZE, // how many runs the list shows (grows with "older runs")
    records: new Map(), // id -> the latest record seen, for durations
    refresh: null,
    signedIn: false,
  };

  const $ = (id) => document.getElementById(id);

  // ---- the API ----

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const bearer = token();
    if (bearer) headers.set('Authorization', `Bearer ${bearer}`);
    const response = await fetch(path, { ...options, headers, cache: 'no-store', credentials: 'omit' });
    if (response.ok) return response;
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      // Not every failure has a JSON body (a proxy's page, say).
    }
    const code = body && body.error ? body.error.code : null;
    const message = body && body.error ? body.error.message : `${response.status} ${response.statusText}`;
    const error = new ApiError(response.status, code, message);
    if (response.status === 401) askForToken(bearer ? 'The bridge refused that token.' : null);
    throw error;
  }

  async function getJson(path) {
    return (await api(path)).json();
  }

  // ---- small DOM helpers: text only ----

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setText(id, text) {
    $(id).textContent = text === undefined || text === null ? '' : String(text);
  }

  function setPre(id, text, empty) {
    const pre = $(id);
    pre.textContent = text || '';
    pre.classList.toggle('empty', !text);
    pre.dataset.empty = empty;
  }

  function showError(error) {
    const banner = $('error');
    if (!error) {
      banner.hidden = true;
      return;
    }
    if (error instanceof ApiError && error.status === 401) return;
    banner.textContent = error instanceof ApiError && error.code ? `${error.message} (${error.code})` : String(error.message || error);
    banner.hidden = false;
  }

  function badgeClass(word) {
    switch (word) {
      case 'succeeded':
      case 'ok':
        return 'badge good';
      case 'failed':
      case 'timed_out':
      case 'interrupted':
      case 'unhealthy':
        return 'badge bad';
      case 'cancelled':
        return 'badge warn';
      case 'queued':
      case 'preparing':
      case 'running':
      case 'starting':
      case 'busy':
        return 'badge busy';
      case 'idle':
        return 'badge good';
      case 'waiting_for_input':
        return 'badge ask';
      default:
        return 'badge';
    }
  }

  function badge(word) {
    return el('span', badgeClass(word), word);
  }

  function setBadge(id, word) {
    const node = $(id);
    node.className = badgeClass(word);
    node.textContent = word || '';
  }

  // ---- times ----

  function formatDuration(ms) {
    if (!Number.isFinite(ms) || ms < 0) return '';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} m ${Math.round(s % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} m`;
  }

  // How long a run took, or has taken so far: from its start (or its submission while it
  // waits), to its end (or now).
  function runDuration(record) {
    const from = Date.parse(record.started_at || record.created_at);
    const to = record.finished_at ? Date.parse(record.finished_at) : Date.now();
    return formatDuration(to - from);
  }

  function formatTime(text) {
    const at = new Date(text);
    return Number.isNaN(at.getTime()) ? '' : at.toLocaleString();
  }

  // ---- authentication ----

  function askForToken(problem) {
    sessionStorage.removeItem(TOKEN_KEY);
    stopFollowing();
    stopRefreshing();
    closeSession();
    view.signedIn = false;
    $('app').hidden = true;
    $('sign-out').hidden = true;
    $('bridge-health').hidden = true;
    $('login').hidden = false;
    $('login-problem').hidden = !problem;
    $('login-problem').textContent = problem || '';
    $('token').focus();
  }

  function onLogin(event) {
    event.preventDefault();
    const value = $('token').value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $('token').value = '';
    $('login').hidden = true;
    start();
  }

  function onSignOut() {
    askForToken(null);
  }

  // ---- adapters and health ----

  function credentialSummary(credentials) {
    if (!credentials) return '';
    if (!credentials.ok) {
      return [credentials.reason, credentials.problem, credentials.remedy].filter(Boolean).join(': ');
    }
    const parts = [];
    if (credentials.facts && credentials.facts.auth_mode) parts.push(credentials.facts.auth_mode);
    if (Array.isArray(credentials.present) && credentials.present.length) parts.push(`present: ${credentials.present.join(', ')}`);
    const expires = credentials.facts && credentials.facts.access_token_expires_at
      ? Date.parse(credentials.facts.access_token_expires_at)
      : credentials.expires_at ? credentials.expires_at * 1000 : null;
    if (expires) parts.push(`expires ${new Date(expires).toLocaleString()}`);
    if (credentials.note) parts.push(credentials.note);
    return parts.join('; ');
  }

  async function loadAdapters() {
    const { adapters } = await getJson('/v1/adapters');
    const rows = $('adapter-rows');
    rows.replaceChildren();
    const filter = $('filter-adapter');
    const chosen = filter.value;
    filter.replaceChildren(el('option', null, 'any'));
    filter.firstChild.value = '';
    for (const adapter of adapters) {
      const health = adapter.health || {};
      const credentials = health.credentials || {};
      const binary = health.binary || {};
      const row = el('tr');
      row.dataset.adapter = adapter.name;
      const name = el('td');
      name.append(el('strong', null, adapter.name));
      if (adapter.description) name.append(el('div', 'detail', adapter.description));
      const verdict = el('td');
      verdict.append(badge(health.ok ? 'ok' : 'unhealthy'));
      const credentialCell = el('td');
      credentialCell.append(badge(credentials.ok ? 'ok' : credentials.reason || 'unhealthy'));
      credentialCell.append(el('div', 'detail', credentialSummary(credentials)));
      row.append(name, verdict, el('td', 'detail', binary.ok ? binary.version || binary.note || 'ok' : binary.problem), credentialCell);
      rows.append(row);
      const option = el('option', null, adapter.name);
      option.value = adapter.name;
      filter.append(option);
    }
    filter.value = chosen;
  }

  // The deep check answers 503 with its report when something is wrong, so read it either way.
  async function loadHealth() {
    const response = await fetch('/health?deep=1', { cache: 'no-store', credentials: 'omit' });
    const report = await response.json();
    const node = $('bridge-health');
    node.className = badgeClass(report.status);
    node.textContent = `health: ${report.status}`;
    node.title = report.git && report.git.version ? report.git.version : '';
    node.hidden = false;
  }

  // ---- the runs list ----

  function listQuery(cursor) {
    const params = new URLSearchParams();
    params.set('limit', String(cursor ? PAGE_SIZE : Math.min(view.shown, 100)));
    for (const [name, input] of [['state', 'filter-state'], ['adapter', 'filter-adapter'], ['contract_id', 'filter-contract']]) {
      const value = $(input).value.trim();
      if (value) params.set(name, value);
    }
    if (cursor) params.set('cursor', cursor);
    return `/v1/runs?${params}`;
  }

  function runRow(record) {
    const row = el('tr');
    row.dataset.runId = record.id;
    row.dataset.state = record.state;
    row.classList.toggle('selected', record.id === view.selected);
    const id = el('td', 'id', record.id.slice(-8));
    id.title = record.id;
    const state = el('td', 'state');
    state.append(badge(record.state));
    const outcome = el('td', 'outcome');
    if (record.outcome) outcome.append(badge(record.outcome));
    if (record.reason && record.reason !== record.outcome) outcome.append(el('div', 'detail', record.reason));
    const duration = el('td', 'duration', runDuration(record));
    const prompt = el('td', 'prompt', record.spec && record.spec.prompt);
    prompt.title = (record.spec && record.spec.prompt) || '';
    row.append(id, el('td', null, record.spec && record.spec.adapter), state, outcome, duration, el('td', 'detail', formatTime(record.created_at)), prompt);
    row.addEventListener('click', () => select(record.id));
    return row;
  }

  async function loadRuns(older) {
    const page = await getJson(listQuery(older ? view.cursor : null));
    const rows = $('run-rows');
    if (older) {
      view.shown += page.runs.length;
    } else {
      rows.replaceChildren();
    }
    for (const record of page.runs) {
      view.records.set(record.id, record);
      rows.append(runRow(record));
    }
    view.cursor = page.next_cursor;
    $('more').hidden = !page.next_cursor;
    $('no-runs').hidden = rows.childElementCount > 0;
  }

  // Replaces a run's row in place, so the list follows the run shown in detail at once.
  function updateRow(record) {
    view.records.set(record.id, record);
    const old = document.querySelector(`#run-rows tr[data-run-id="${CSS.escape(record.id)}"]`);
    if (old) old.replaceWith(runRow(record));
  }

  function startRefreshing() {
    stopRefreshing();
    view.refresh = setInterval(() => {
      if (document.hidden) return;
      if ($('app').dataset.view === 'sessions') loadSessions().catch(showError);
      else loadRuns(false).catch(showError);
    }, LIST_REFRESH_MS);
  }

  function stopRefreshing() {
    if (view.refresh) clearInterval(view.refresh);
    view.refresh = null;
  }

  // Unfinished runs' durations tick every second.
  function tick() {
    for (const row of document.querySelectorAll('#run-rows tr')) {
      const record = view.records.get(row.dataset.runId);
      if (record && !record.finished_at) row.querySelector('td.duration').textContent = runDuration(record);
    }
    const shown = view.records.get(view.selected);
    if (shown && !shown.finished_at) setText('run-duration', runDuration(shown));
  }

  // ---- one run ----

  function select(id) {
    if (location.hash !== `#run=${id}`) {
      location.hash = `run=${id}`;
    } else {
      showRun(id).catch(showError);
    }
  }

  function selectedFromHash() {
    const match = /^#run=([0-9a-fA-F-]{36})$/.exec(location.hash);
    return match ? match[1] : null;
  }

  function renderRecord(record) {
    view.records.set(record.id, record);
    const section = $('run');
    section.hidden = false;
    section.dataset.runId = record.id;
    section.dataset.state = record.state;
    section.dataset.outcome = record.outcome || '';
    setText('run-id', record.id);
    setBadge('run-state', record.state);
    setBadge('run-outcome', record.outcome);
    setText('run-reason', record.reason && record.reason !== record.outcome ? record.reason : '');
    setText('run-duration', runDuration(record));
    const spec = record.spec || {};
    setText('run-adapter', spec.adapter);
    setText('run-repo', spec.repo ? [spec.repo.url, spec.repo.ref].filter(Boolean).join(' @ ') : '');
    setText('run-contract', spec.contract_id);
    setText('run-message', record.message);
    setPre('run-prompt', spec.prompt, '');
    setPre('run-output', record.output, record.state === 'finished' ? 'no final message' : 'not finished yet');
    renderDiff(record.diff, record.state);
    renderArtifacts(record);
    $('cancel').hidden = record.state === 'finished';
    for (const row of document.querySelectorAll('#run-rows tr')) {
      row.classList.toggle('selected', row.dataset.runId === record.id);
    }
  }

  function renderDiff(diff, state) {
    const pre = $('run-diff');
    pre.replaceChildren();
    pre.classList.toggle('empty', !diff);
    pre.dataset.empty = state === 'finished' ? 'no changes' : 'taken when the run ends';
    if (!diff) return;
    for (const line of diff.split('\n')) {
      let kind = null;
      if (line.startsWith('diff --git') || line.startsWith('+++') || line.startsWith('---')) kind = 'file';
      else if (line.startsWith('@@')) kind = 'hunk';
      else if (line.startsWith('+')) kind = 'add';
      else if (line.startsWith('-')) kind = 'del';
      pre.append(el('span', kind, `${line}\n`));
    }
  }

  function renderArtifacts(record) {
    const list = $('run-artifacts');
    list.replaceChildren();
    const artifacts = record.artifacts || [];
    if (!artifacts.length) {
      list.append(el('li', 'muted', 'none'));
      return;
    }
    for (const artifact of artifacts) {
      const item = el('li');
      const button = el('button', null, artifact.path);
      button.type = 'button';
      button.title = `sha256 ${artifact.sha256}`;
      button.addEventListener('click', () => download(record.id, artifact.path).catch(showError));
      item.append(button, el('span', 'detail', ` ${artifact.size} bytes`));
      list.append(item);
    }
  }

  // Downloads go through fetch so the token stays in a header; the file is handed to the
  // browser as a blob.
  async function download(id, path) {
    const encoded = path.split('/').map(encodeURIComponent).join('/');
    await saveAs(`/v1/runs/${encodeURIComponent(id)}/artifacts/${encoded}`, path.split('/').pop());
  }

  async function saveAs(path, name) {
    const blob = await (await api(path)).blob();
    const url = URL.createObjectURL(blob);
    const link = el('a');
    link.href = url;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  async function showRun(id) {
    stopFollowing();
    view.selected = id;
    const record = await getJson(`/v1/runs/${encodeURIComponent(id)}`);
    if (view.selected !== id) return;
    renderRecord(record);
    $('run-log').replaceChildren();
    follow(id);
  }

  async function cancelRun() {
    const id = view.selected;
    if (!id || !window.confirm('Cancel this run?')) return;
    const record = await (await api(`/v1/runs/${encodeURIComponent(id)}/cancel`, { method: 'POST' })).json();
    renderRecord(record);
    updateRow(record);
  }

  // ---- the live log ----

  function stopFollowing() {
    if (view.follow) view.follow.abort();
    view.follow = null;
  }

  function appendLog(kind, text) {
    const log = $('run-log');
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(el('span', kind, `${text}\n`));
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  // One line for one of the CLI's structured events: Codex's items get a readable form,
  // anything else its JSON.
  function describeCliEvent(data) {
    const item = data.item;
    if (item && item.type === 'command_execution') {
      const exit = item.exit_code === null || item.exit_code === undefined ? '' : ` (exit ${item.exit_code})`;
      const output = data.type === 'item.completed' && item.aggregated_output ? `\n${item.aggregated_output.replace(/\n$/, '')}` : '';
      return `$ ${item.command}${exit}${output}`;
    }
    if (item && (item.type === 'agent_message' || item.type === 'reasoning') && typeof item.text === 'string') {
      return `${item.type}: ${item.text.replace(/\n$/, '')}`;
    }
    if (data.type === 'turn.completed' && data.usage) {
      return `turn.completed (input ${data.usage.input_tokens} tokens, output ${data.usage.output_tokens})`;
    }
    const json = JSON.stringify(data);
    const text = data.type && Object.keys(data).length === 1 ? data.type : json;
    return text.length > CLI_EVENT_MAX_CHARS ? `${text.slice(0, CLI_EVENT_MAX_CHARS)}…` : text;
  }

  // Each SSE message is a stored event, `{seq, at, kind, data}`; `data` is what happened.
  function onRunEvent(id, event) {
    const data = (event.data && event.data.data) || {};
    switch (event.event) {
      case 'state': {
        appendLog('state', `· ${data.state}`);
        const record = view.records.get(id);
        if (record && data.state && record.state !== 'finished') {
          const now = new Date().toISOString();
          const next = { ...record, state: data.state };
          if (data.state === 'running' && !next.started_at) next.started_at = now;
          renderRecord(next);
          updateRow(next);
        }
        break;
      }
      case 'output':
        appendLog('output', data.line);
        break;
      case 'stderr':
        appendLog('stderr', data.line);
        break;
      case 'cli_event':
        appendLog('cli', describeCliEvent(data));
        break;
      case 'notice':
        appendLog('notice', `! ${data.message}`);
        break;
      case 'outcome':
        appendLog('outcome', `= ${data.outcome}${data.reason && data.reason !== data.outcome ? ` (${data.reason})` : ''}${data.message ? `: ${data.message}` : ''}`);
        break;
      default:
        break;
    }
  }

  // Parses one Server-Sent Events frame (https://html.spec.whatwg.org/multipage/server-sent-events.html).
  function parseFrame(frame) {
    const event = { id: null, event: 'message', data: [] };
    for (const raw of frame.split('\n')) {
      const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'id') event.id = value;
      else if (field === 'event') event.event = value;
      else if (field === 'data') event.data.push(value);
    }
    if (!event.data.length) return null;
    try {
      return { id: event.id, event: event.event, data: JSON.parse(event.data.join('\n')) };
    } catch (_) {
      return null;
    }
  }

  // Hands each event of a Server-Sent Events response to `onEvent` until the stream ends.
  async function readEvents(response, onEvent) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const event = parseFrame(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event) onEvent(event);
      }
    }
  }

  // Reads the run's events from the start and follows them live; after a dropped connection
  // it resumes from the last event seen (Last-Event-ID) with a growing pause. Ends after the
  // outcome, then shows the finished record (final message, diff, artifacts).
  async function follow(id) {
    const controller = new AbortController();
    view.follow = controller;
    let lastId = null;
    let failures = 0;
    const status = (text) => {
      if (view.follow === controller) setText('log-status', text);
    };
    while (!controller.signal.aborted) {
      let ended = false;
      try {
        const headers = { Accept: 'text/event-stream' };
        if (lastId) headers['Last-Event-ID'] = lastId;
        const response = await api(`/v1/runs/${encodeURIComponent(id)}/events`, { headers, signal: controller.signal });
        status('(live)');
        failures = 0;
        await readEvents(response, (event) => {
          if (event.id) lastId = event.id;
          onRunEvent(id, event);
          if (event.event === 'outcome') ended = true;
        });
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error instanceof ApiError && error.status !== 503 && error.status !== 429) {
          status(`(${error.message})`);
          return;
        }
      }
      if (ended) {
        status('(ended)');
        if (view.follow === controller) view.follow = null;
        const record = await getJson(`/v1/runs/${encodeURIComponent(id)}`).catch(showError);
        if (record && view.selected === id) {
          renderRecord(record);
          updateRow(record);
        }
        return;
      }
      failures += 1;
      const pause = Math.min(RECONNECT_MAX_MS, 500 * 2 ** failures);
      status('(reconnecting)');
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
  }


  // ---- sessions ----
  //
  // A session's terminal is the bridge's own emulator screen: the events stream
  // (`/v1/sessions/{id}/events?cells=1`) sends it, cells, attributes and cursor, whenever it
  // changes, and the page draws it as rows of text runs (text nodes only; the program's output
  // is as untrusted as a run's log). Taking over opens the session's WebSocket with a
  // single-use ticket asked for just before; keystrokes, pastes and the terminal area's size go
  // over it as the attach protocol has them (binary frames of bytes, `{"resize": ...}` text
  // frames). The socket's raw output is not read: the screen keeps coming from the emulator,
  // so watching and typing show the same thing.

  const SIZE_SETTLE_MS = 100;

  const term = {
    id: null, // the session shown
    record: null, // its latest record
    follow: null, // AbortController of its events
    socket: null, // the WebSocket while taken over
    screen: null, // the latest screen drawn
    drawn: [], // per row, what was drawn there, to redraw only changed rows
    fit: null, // {rows, cols} that fill the terminal area
    sent: null, // the size last sent over the socket
    sizeTimer: null,
  };
  const encoder = new TextEncoder();

  function sessionRow(record) {
    const row = el('tr');
    row.dataset.sessionId = record.id;
    row.dataset.state = record.state;
    row.classList.toggle('selected', record.id === term.id);
    const id = el('td', 'id', record.id.slice(-8));
    id.title = record.id;
    const state = el('td', 'state');
    state.append(badge(record.state));
    if (record.question) state.append(el('div', 'detail question', record.question));
    if (record.state === 'exited') state.append(el('div', 'detail', record.reason));
    row.append(
      id,
      el('td', null, record.adapter),
      state,
      el('td', 'detail', `${record.rows}×${record.cols}`),
      el('td', 'detail', formatTime(record.created_at)),
    );
    row.addEventListener('click', () => {
      location.hash = `session=${record.id}`;
    });
    return row;
  }

  async function loadSessions() {
    const { sessions } = await getJson('/v1/sessions');
    const rows = $('session-rows');
    rows.replaceChildren(...sessions.map(sessionRow));
    $('no-sessions').hidden = sessions.length > 0;
  }

  function renderSession(record) {
    term.record = record;
    const section = $('session');
    section.hidden = false;
    section.dataset.sessionId = record.id;
    section.dataset.state = record.state;
    setText('session-id', record.id);
    setBadge('session-state', record.state);
    const detail = record.state === 'waiting_for_input' ? record.question
      : record.state === 'exited' ? `${record.reason}: ${record.message}` : '';
    setText('session-question', detail);
    setText('session-adapter', record.adapter);
    setText('session-started', formatTime(record.created_at));
    setText('session-size', `${record.rows} rows × ${record.cols} columns`);
    const exited = record.state === 'exited';
    $('session-attach').hidden = exited || Boolean(term.socket);
    $('session-detach').hidden = !term.socket;
    $('session-end').hidden = exited;
    const row = document.querySelector(`#session-rows tr[data-session-id="${CSS.escape(record.id)}"]`);
    if (row) row.replaceWith(sessionRow(record));
    for (const other of document.querySelectorAll('#session-rows tr')) {
      other.classList.toggle('selected', other.dataset.sessionId === record.id);
    }
  }

  // A state event carries the state's fields; the rest of the record stays as it was.
  function onSessionState(data) {
    if (!term.record) return;
    const record = { id: term.record.id, adapter: term.record.adapter, created_at: term.record.created_at, rows: term.record.rows, cols: term.record.cols, ...data };
    renderSession(record);
    if (data.state === 'exited') {
      setTerminalStatus(`The session has ended: ${data.message}`);
      detach();
    }
  }

  function setTerminalStatus(text) {
    setText('terminal-status', text);
  }

  function closeSession() {
    detach();
    if (term.follow) term.follow.abort();
    term.follow = null;
    term.id = null;
    term.record = null;
    term.screen = null;
    term.drawn = [];
    $('session').hidden = true;
    $('terminal-screen').replaceChildren();
  }

  async function showSession(id) {
    if (term.id === id) return;
    closeSession();
    term.id = id;
    const record = await getJson(`/v1/sessions/${encodeURIComponent(id)}`);
    if (term.id !== id) return;
    renderSession(record);
    if (record.state === 'exited') {
      setTerminalStatus('The session has ended; its cast has what it showed.');
      return;
    }
    setTerminalStatus('Watching. Take over to type.');
    followSession(id);
  }

  // Follows the session's state and screen until it exits; after a dropped connection it
  // reconnects with a growing pause (the first events of a stream are the state and screen
  // as they are, so nothing needs resuming).
  async function followSession(id) {
    const controller = new AbortController();
    term.follow = controller;
    let failures = 0;
    while (!controller.signal.aborted) {
      let ended = false;
      try {
        const response = await api(`/v1/sessions/${encodeURIComponent(id)}/events?cells=1`, {
          headers: { Accept: 'text/event-stream' },
          signal: controller.signal,
        });
        failures = 0;
        await readEvents(response, (event) => {
          if (controller.signal.aborted) return;
          if (event.event === 'screen') drawScreen(event.data.screen);
          else if (event.event === 'state') {
            onSessionState(event.data);
            if (event.data.state === 'exited') ended = true;
          }
        });
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error instanceof ApiError && error.status !== 503 && error.status !== 429) {
          setTerminalStatus(error.message);
          return;
        }
      }
      if (ended) return;
      failures += 1;
      setTerminalStatus('Reconnecting…');
      await new Promise((resolve) => setTimeout(resolve, Math.min(RECONNECT_MAX_MS, 500 * 2 ** failures)));
    }
  }

  function drawScreen(screen) {
    if (!screen || !Array.isArray(screen.cells)) return;
    term.screen = screen;
    drawCells($('terminal-screen'), screen, term.drawn);
    const record = term.record;
    if (record && (record.rows !== screen.rows || record.cols !== screen.cols)) {
      renderSession({ ...record, rows: screen.rows, cols: screen.cols });
    }
  }

  // ---- taking over ----

  function onTerminalResized(entries) {
    const box = entries[entries.length - 1].contentRect;
    const fit = measureFit($('terminal-measure'), box.width, box.height);
    if (!fit) return;
    term.fit = fit;
    const node = $('terminal');
    node.dataset.fitRows = String(fit.rows);
    node.dataset.fitCols = String(fit.cols);
    // A drag of the window resizes many times a second; the program hears the last size.
    clearTimeout(term.sizeTimer);
    term.sizeTimer = setTimeout(sendSize, SIZE_SETTLE_MS);
  }

  function sendSize() {
    const { socket, fit, sent } = term;
    if (!socket || socket.readyState !== WebSocket.OPEN || !fit) return;
    if (sent && sent.rows === fit.rows && sent.cols === fit.cols) return;
    term.sent = fit;
    socket.send(JSON.stringify({ resize: fit }));
  }

  async function attach() {
    const id = term.id;
    if (!id || term.socket) return;
    setTerminalStatus('Taking over…');
    // The ticket is asked for right before it is used, works once, and goes nowhere but the
    // socket's URL; the API token itself never leaves the Authorization header.
    const response = await api(`/v1/sessions/${encodeURIComponent(id)}/attach-ticket`, { method: 'POST' });
    const { ticket } = await response.json();
    if (term.id !== id) return;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(`${scheme}//${location.host}/v1/sessions/${encodeURIComponent(id)}/attach?ticket=${encodeURIComponent(ticket)}`);
    socket.binaryType = 'arraybuffer';
    term.socket = socket;
    term.sent = null;
    socket.addEventListener('open', () => {
      if (term.socket !== socket) return;
      $('terminal').classList.add('attached');
      $('terminal').dataset.attached = 'true';
      setTerminalStatus('Taken over: keys typed in the terminal go to the program (Ctrl-Shift-C copies, Ctrl-V pastes).');
      sendSize();
      $('terminal').focus();
    });
    socket.addEventListener('message', (message) => {
      if (typeof message.data !== 'string') return;
      let control = null;
      try {
        control = JSON.parse(message.data);
      } catch (_) {
        return;
      }
      if (control && control.error) setTerminalStatus(`The bridge refused: ${control.error.message} (${control.error.code})`);
    });
    socket.addEventListener('close', (event) => {
      if (term.socket !== socket) return;
      const ended = term.record && term.record.state === 'exited';
      detach();
      if (!ended && event.code !== 1000) setTerminalStatus('The connection to the terminal was lost; take over again to type.');
    });
    if (term.record) renderSession(term.record);
  }

  function detach() {
    const socket = term.socket;
    term.socket = null;
    term.sent = null;
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000);
    const node = $('terminal');
    node.classList.remove('attached');
    delete node.dataset.attached;
    if (term.record) {
      renderSession(term.record);
      if (socket && term.record.state !== 'exited') setTerminalStatus('Watching. Take over to type.');
    }
  }

  function send(text) {
    const socket = term.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(encoder.encode(text));
    return true;
  }

  function onTerminalKey(event) {
    if (!term.socket) return;
    const bytes = keyBytes(event, Boolean(term.screen && term.screen.application_cursor));
    if (bytes === null) return;
    event.preventDefault();
    send(bytes);
  }

  function onTerminalPaste(event) {
    if (!term.socket) return;
    event.preventDefault();
    const text = (event.clipboardData && event.clipboardData.getData('text/plain')) || '';
    if (text) send(pasteText(text, Boolean(term.screen && term.screen.bracketed_paste)));
  }

  async function endSession() {
    const id = term.id;
    if (!id || !window.confirm('End this session? Its program is stopped.')) return;
    const record = await (await api(`/v1/sessions/${encodeURIComponent(id)}`, { method: 'DELETE' })).json();
    if (term.id !== id) return;
    detach();
    renderSession(record);
    setTerminalStatus(`The session has ended: ${record.message}`);
  }

  function downloadCast() {
    const id = term.id;
    if (!id) return Promise.resolve();
    return saveAs(`/v1/sessions/${encodeURIComponent(id)}/recording`, `session-${id}.cast`);
  }

  // ---- views ----

  // `#runs` (or nothing, or `#run=ID`) shows the runs; `#sessions` or `#session=ID` the
  // sessions.
  function route() {
    const session = /^#session=([0-9a-fA-F-]{36})$/.exec(location.hash);
    const shown = session || location.hash === '#sessions' ? 'sessions' : 'runs';
    $('app').dataset.view = shown;
    $('nav-runs').toggleAttribute('aria-current', false);
    $('nav-sessions').toggleAttribute('aria-current', false);
    $(`nav-${shown}`).setAttribute('aria-current', 'page');
    if (shown === 'sessions') {
      // The run shown is left: its live log stops, and "Runs" comes back to the list.
      stopFollowing();
      view.selected = null;
      $('run').hidden = true;
      loadSessions().catch(showError);
      if (session) showSession(session[1]).catch(showError);
      else closeSession();
      return;
    }
    closeSession();
    const id = selectedFromHash();
    if (id) showRun(id).catch(showError);
  }

  // ---- start ----

  async function start() {
    showError(null);
    try {
      await loadRuns(false);
    } catch (error) {
      showError(error);
      return;
    }
    view.signedIn = true;
    $('login').hidden = true;
    $('app').hidden = false;
    $('sign-out').hidden = !token();
    loadAdapters().catch(showError);
    loadHealth().catch(() => {});
    startRefreshing();
    route();
  }

  function onFilter(event) {
    if (event) event.preventDefault();
    view.shown = PAGE_SIZE;
    loadRuns(false).catch(showError);
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', onLogin);
    $('sign-out').addEventListener('click', onSignOut);
    $('filters').addEventListener('submit', onFilter);
    $('filters').addEventListener('change', onFilter);
    $('more').addEventListener('click', () => loadRuns(true).catch(showError));
    $('cancel').addEventListener('click', () => cancelRun().catch(showError));
    window.addEventListener('hashchange', () => {
      if (view.signedIn) route();
    });
    $('session-attach').addEventListener('click', () => attach().catch((error) => {
      detach();
      showError(error);
    }));
    $('session-detach').addEventListener('click', () => {
      detach();
      $('terminal').blur();
    });
    $('session-end').addEventListener('click', () => endSession().catch(showError));
    $('session-recording').addEventListener('click', () => downloadCast().catch(showError));
    $('terminal').addEventListener('keydown', onTerminalKey);
    $('terminal').addEventListener('paste', onTerminalPaste);
    new ResizeObserver(onTerminalResized).observe($('terminal'));
    setInterval(tick, 1000);
    // The bridge says whether it wants a token, so the page asks first instead of being
    // refused (a refusal the browser would log as an error).
    if (document.body.dataset.auth === 'token' && !token()) {
      askForToken(null);
    } else {
      start();
    }
  });
})();
