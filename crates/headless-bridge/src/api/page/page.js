// The runs page's only script: plain JavaScript, no framework, no build step.
//
// Everything it shows comes from the bridge's authenticated API. Text from runs (logs, final
// messages, diffs, prompts) is untrusted: it reaches the page only through textContent and
// text nodes, never as markup. The token, when the bridge wants one, lives in this tab's
// sessionStorage and travels only in the Authorization header, never in a URL; that is also
// why the live log is read with fetch streaming rather than EventSource, which cannot send
// headers.
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
        return 'badge busy';
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
      loadRuns(false).catch(showError);
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
    const blob = await (await api(`/v1/runs/${encodeURIComponent(id)}/artifacts/${encoded}`)).blob();
    const url = URL.createObjectURL(blob);
    const link = el('a');
    link.href = url;
    link.download = path.split('/').pop();
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
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const event = parseFrame(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
            if (!event) continue;
            if (event.id) lastId = event.id;
            onRunEvent(id, event);
            if (event.event === 'outcome') ended = true;
          }
        }
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
    const id = selectedFromHash();
    if (id) showRun(id).catch(showError);
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
      const id = selectedFromHash();
      if (id && view.signedIn) showRun(id).catch(showError);
    });
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
