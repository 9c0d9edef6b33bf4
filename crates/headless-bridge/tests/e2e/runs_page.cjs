// The runs page in headless Chromium, driven by playwright-core, started by the Rust tests in
// runs_page.rs. The run under test waits for a model answer the Rust test holds back; this
// script reports its progress as "step: NAME" lines on stdout, and the test releases the
// answer when the running run is on screen. Every wait is on the page's DOM, never on time.
//
// SCENARIO=live: sign in with the token, watch the run finish, check what it shows.
// SCENARIO=cancel: an open loopback bridge (no token); cancel the run from the page.
// SCENARIO=terminal: open a bash session in the Sessions view, take it over, type into it,
// interrupt, recall, paste, resize, download its cast and end it.
//
// Environment: SCENARIO, BRIDGE_URL, BRIDGE_TOKEN (empty for an open bridge; never an
// argument, which `ps` would show), RUN_ID (live, cancel), SESSION_ID and ASKER_ID (terminal),
// CHROMIUM (the executable), SCREENSHOT (where the PNG goes), NODE_PATH (where playwright-core
// is).
'use strict';

const fs = require('node:fs');
const { chromium } = require('playwright-core');

const WAIT_MS = 90_000;
const { SCENARIO, BRIDGE_URL, BRIDGE_TOKEN, RUN_ID, SESSION_ID, ASKER_ID, CHROMIUM, SCREENSHOT } = process.env;

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

function step(name) {
  process.stdout.write(`step: ${name}\n`);
}

async function main() {
  for (const [name, value] of Object.entries({ SCENARIO, BRIDGE_URL, CHROMIUM, SCREENSHOT })) {
    check(value, `${name} is set`);
  }
  // Playwright starts Chromium with --no-sandbox unless chromiumSandbox is set: Chromium's
  // sandbox refuses to run as root, which CI and the development machines are.
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
  const problems = [];
  let page;
  try {
    const context = await browser.newContext({ viewport: { width: 1440, height: 1100 } });
    page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    watch(page, problems);

    // The page loads under its policy.
    const loaded = await page.goto(`${BRIDGE_URL}/`);
    check(loaded.status() === 200, `GET / answers 200, not ${loaded.status()}`);
    const policy = loaded.headers()['content-security-policy'] || '';
    check(policy.includes("script-src 'self'"), `a strict policy: ${policy}`);

    if (SCENARIO === 'live') await live(page);
    else if (SCENARIO === 'cancel') await cancel(page);
    else if (SCENARIO === 'terminal') await terminal(page, problems);
    else throw new Error(`unknown SCENARIO ${SCENARIO}`);

    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    step('screenshot');
    check(problems.length === 0, `no errors in the browser:\n${problems.join('\n')}`);
  } catch (error) {
    if (page) await page.screenshot({ path: SCREENSHOT.replace(/\.png$/, '-failure.png'), fullPage: true }).catch(() => {});
    if (problems.length) process.stderr.write(`${problems.join('\n')}\n`);
    throw error;
  } finally {
    await browser.close();
  }
}

// Collects what must not happen: console errors, uncaught exceptions, failed responses, the
// token in a URL, an API request without the token.
function watch(page, problems) {
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('request', (request) => {
    if (BRIDGE_TOKEN && request.url().includes(BRIDGE_TOKEN)) problems.push(`the token is in a URL: ${request.url()}`);
    const isApi = new URL(request.url()).pathname.startsWith('/v1/');
    const expected = BRIDGE_TOKEN ? `Bearer ${BRIDGE_TOKEN}` : undefined;
    if (isApi && request.headers().authorization !== expected) {
      problems.push(`an API request with the wrong Authorization: ${request.url()}`);
    }
  });
  page.on('response', (response) => {
    if (response.status() >= 400) problems.push(`HTTP ${response.status()} for ${response.url()}`);
  });
}

// Opens the run from the list once it is running and its log shows the CLI's turn.
async function openRunningRun(page) {
  await page.waitForSelector(`#run-rows tr[data-run-id="${RUN_ID}"][data-state="running"]`);
  await page.locator(`#run-rows tr[data-run-id="${RUN_ID}"]`).click();
  await page.waitForSelector(`#run[data-run-id="${RUN_ID}"][data-state="running"]`);
  await page.waitForFunction(() => document.getElementById('run-log').textContent.includes('turn.started'));
  const waitingOutput = await page.locator('#run-output').textContent();
  check(waitingOutput === '', `no final message while running, got ${JSON.stringify(waitingOutput)}`);
}

async function waitForOutcome(page, expected) {
  await page.waitForSelector(`#run[data-run-id="${RUN_ID}"][data-state="finished"]`);
  await page.waitForSelector(`#run-rows tr[data-run-id="${RUN_ID}"][data-state="finished"]`);
  const outcome = await page.locator('#run').getAttribute('data-outcome');
  check(outcome === expected, `the run ended as ${expected} on screen, got ${outcome}`);
  const rowText = await page.locator(`#run-rows tr[data-run-id="${RUN_ID}"]`).textContent();
  check(rowText.includes(expected), `the list row shows the outcome: ${rowText}`);
  check(/\d/.test(await page.locator('#run-duration').textContent()), 'a duration is shown');
}

async function signIn(page) {
  check(BRIDGE_TOKEN, 'BRIDGE_TOKEN is set');
  await page.locator('#login').waitFor({ state: 'visible' });
  await page.fill('#token', BRIDGE_TOKEN);
  await page.click('#login-form button[type=submit]');
  await page.locator('#app').waitFor({ state: 'visible' });
  const kept = await page.evaluate(() => sessionStorage.getItem('headless-bridge.token'));
  check(kept === BRIDGE_TOKEN, 'the token is kept in sessionStorage');
}

async function live(page) {
  // The bridge wants a token: the page asks for it before anything else.
  await page.locator('#login').waitFor({ state: 'visible' });
  step('asked-for-token');
  await signIn(page);

  await openRunningRun(page);
  step('running-on-screen');
  // The test releases the model; the run finishes on screen without a reload.
  await waitForOutcome(page, 'succeeded');
  step('finished-on-screen');

  // The final message, the log and the diff are there, and the markup in them is text.
  const output = page.locator('#run-output');
  await page.waitForFunction(() => document.getElementById('run-output').textContent.includes('The command printed'));
  const outputText = await output.textContent();
  check(outputText.includes('<img src=x onerror='), `the final message shows the markup as text: ${outputText}`);
  check(outputText.includes('<script>'), 'the script tag is shown as text');
  check((await output.evaluate((node) => node.childElementCount)) === 0, 'the final message has no elements');
  const log = await page.locator('#run-log').textContent();
  check(log.includes('$ ') && log.includes('notes.html'), `the log shows the command: ${log}`);
  check(log.includes('= succeeded'), 'the log ends with the outcome');
  const diff = await page.locator('#run-diff').textContent();
  check(diff.includes('notes.html') && diff.includes('+<img src=x'), `the diff shows the new file: ${diff}`);
  const injected = await page.evaluate(() => ({
    images: document.querySelectorAll('img').length,
    scripts: [...document.scripts].map((s) => s.src),
    flag: window.__hbInjected === undefined ? null : window.__hbInjected,
  }));
  check(injected.images === 0, 'no <img> from run output on the page');
  check(injected.scripts.length === 1 && injected.scripts[0].endsWith('/assets/page.js'), `only the page's script: ${injected.scripts}`);
  check(injected.flag === null, 'no script from run output ran');

  // Credential health per adapter, and the bridge's deep health.
  const codex = page.locator('#adapter-rows tr[data-adapter="codex"]');
  await codex.waitFor();
  const codexText = await codex.textContent();
  check(codexText.includes('ok') && codexText.includes('api_key'), `codex's health is shown: ${codexText}`);
  await page.waitForFunction(() => document.getElementById('bridge-health').textContent === 'health: ok');
}

async function cancel(page) {
  // An open bridge: no token asked for, none stored, and the page's own POST passes the
  // bridge's loopback Origin check.
  check(!BRIDGE_TOKEN, 'no BRIDGE_TOKEN for an open bridge');
  await page.locator('#app').waitFor({ state: 'visible' });
  check(await page.locator('#login').isHidden(), 'no token is asked for');
  await openRunningRun(page);
  step('running-on-screen');
  page.once('dialog', (dialog) => dialog.accept());
  await page.click('#cancel');
  await waitForOutcome(page, 'cancelled');
  await page.waitForFunction(() => document.getElementById('run-log').textContent.includes('= cancelled'));
  check(await page.locator('#cancel').isHidden(), 'no cancel button on a finished run');
  step('cancelled-on-screen');
}

// Waits until a row of the page's terminal, trailing blanks trimmed, matches `pattern` (a
// RegExp's source) `count` times or more.
async function waitForLine(page, pattern, count = 1) {
  await page.waitForFunction(
    ([source, wanted]) => {
      const regex = new RegExp(source);
      const rows = [...document.querySelectorAll('#terminal-screen .row')];
      return rows.filter((row) => regex.test(row.textContent.trimEnd())).length >= wanted;
    },
    [pattern, count],
  );
}

const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const PROMPT = '^bash-[0-9.]+[#$]';

// Records the attach socket: its URL and what the page sent over it.
function watchSockets(page) {
  const sockets = { urls: [], sent: [], all: [] };
  page.on('websocket', (socket) => {
    sockets.urls.push(socket.url());
    sockets.all.push(socket);
    socket.on('framesent', (frame) => sockets.sent.push(Buffer.isBuffer(frame.payload) ? frame.payload.toString('utf8') : `text:${frame.payload}`));
  });
  return sockets;
}

async function terminal(page, problems) {
  const sockets = watchSockets(page);
  const tickets = [];
  page.on('response', async (response) => {
    if (response.url().endsWith('/attach-ticket')) tickets.push((await response.json()).ticket);
  });
  const requests = [];
  page.on('request', (request) => requests.push(`${request.method()} ${request.url()}`));
  await signIn(page);

  // The Sessions view lists both sessions; the one waiting for a person shows its question.
  await page.click('#nav-sessions');
  const asker = page.locator(`#session-rows tr[data-session-id="${ASKER_ID}"][data-state="waiting_for_input"]`);
  await asker.waitFor();
  check((await asker.textContent()).includes('Favourite colour?'), 'the question is listed');
  await page.locator(`#session-rows tr[data-session-id="${SESSION_ID}"][data-state="idle"]`).waitFor();
  step('sessions-listed');

  // Opened, it shows bash's screen live, read-only until taken over.
  await page.locator(`#session-rows tr[data-session-id="${SESSION_ID}"]`).click();
  await page.waitForSelector(`#session[data-session-id="${SESSION_ID}"]`);
  await waitForLine(page, PROMPT);
  check((await page.locator('#terminal').getAttribute('data-attached')) === null, 'not attached while watching');
  check(sockets.urls.length === 0, 'no socket while watching');
  step('watching');

  await page.click('#session-attach');
  await page.waitForSelector('#terminal[data-attached="true"]');
  check(await page.locator('#session-attach').isHidden(), 'no take-over button while attached');
  step('attached');

  // Typed in the page, a typo taken back with Backspace.
  await page.keyboard.type('echo hi-from-browserZ');
  await page.keyboard.press('Backspace');
  await page.keyboard.press('Enter');
  await waitForLine(page, '^hi-from-browser$');
  step('typed');

  // Ctrl-C reaches the program in the foreground: sleep dies of SIGINT (status 130). The
  // program says it runs before the key goes: bash echoes a command line before it has
  // started the command, and a Ctrl-C in between may reach bash instead.
  await page.keyboard.type("sh -c 'echo sleeping-now; exec sleep 600'");
  await page.keyboard.press('Enter');
  await waitForLine(page, '^sleeping-now$');
  await page.keyboard.press('Control+C');
  await waitForLine(page, PROMPT, 3);
  await page.keyboard.type('echo "interrupted $?"');
  await page.keyboard.press('Enter');
  await waitForLine(page, '^interrupted 130$');
  step('interrupted');

  // Up recalls the last line from bash's history; run again, it sees the echo's status.
  await page.keyboard.press('ArrowUp');
  await page.keyboard.press('Enter');
  await waitForLine(page, '^interrupted 0$');
  step('recalled');

  // A paste goes as one piece.
  await page.evaluate(() => {
    const data = new DataTransfer();
    data.setData('text/plain', 'echo pasted-in-one-piece');
    const paste = new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true });
    document.getElementById('terminal').dispatchEvent(paste);
  });
  await page.keyboard.press('Enter');
  await waitForLine(page, '^pasted-in-one-piece$');
  step('pasted');

  // Colours are drawn; markup the program prints is text.
  await page.keyboard.type("printf '\\033[1;31m%s\\033[0m\\n' red-and-bold");
  await page.keyboard.press('Enter');
  await page.waitForSelector('#terminal-screen span.b.fg-1:text-is("red-and-bold")');
  // Beyond the 16 base colours, the colour is set through the CSSOM, which the policy allows.
  await page.keyboard.type("printf '\\033[38;5;208m%s\\033[0m\\n' orange-208");
  await page.keyboard.press('Enter');
  const orange = page.locator('#terminal-screen span:text-is("orange-208")');
  await orange.waitFor();
  const colour = await orange.evaluate((node) => getComputedStyle(node).color);
  check(colour === 'rgb(255, 135, 0)', `xterm colour 208 is drawn: ${colour}`);
  const markup = '<img src=x onerror="window.__hbInjected=1">';
  await page.keyboard.type(`echo '${markup}'`);
  await page.keyboard.press('Enter');
  await waitForLine(page, `^${escape(markup)}$`);
  const injected = await page.evaluate(() => ({
    images: document.querySelectorAll('img').length,
    elements: document.querySelectorAll('#terminal-screen .row > span > *').length,
    flag: window.__hbInjected === undefined ? null : window.__hbInjected,
  }));
  check(injected.images === 0 && injected.elements === 0, `the screen holds text only: ${JSON.stringify(injected)}`);
  check(injected.flag === null, 'no script from the screen ran');
  step('drawn-as-text');

  // A smaller window makes a smaller terminal area; the pty follows and bash sees its size.
  const before = await page.locator('#terminal').evaluate((node) => `${node.dataset.fitRows} ${node.dataset.fitCols}`);
  await page.setViewportSize({ width: 1000, height: 700 });
  await page.waitForFunction((old) => {
    const node = document.getElementById('terminal');
    return `${node.dataset.fitRows} ${node.dataset.fitCols}` !== old;
  }, before);
  const fit = await page.locator('#terminal').evaluate((node) => ({ rows: node.dataset.fitRows, cols: node.dataset.fitCols }));
  await page.waitForSelector(`#terminal-screen[data-rows="${fit.rows}"][data-cols="${fit.cols}"]`);
  await page.keyboard.type('stty size');
  await page.keyboard.press('Enter');
  await waitForLine(page, `^${fit.rows} ${fit.cols}$`);
  check(sockets.sent.includes(`text:${JSON.stringify({ resize: { rows: Number(fit.rows), cols: Number(fit.cols) } })}`), 'the resize went over the socket');
  step('resized');

  // The cast has what was typed and shown.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#session-recording')]);
  check(download.suggestedFilename() === `session-${SESSION_ID}.cast`, `the cast's name: ${download.suggestedFilename()}`);
  const cast = fs.readFileSync(await download.path(), 'utf8').split('\n');
  check(JSON.parse(cast[0]).version === 2, `an asciinema v2 header: ${cast[0]}`);
  const events = cast.slice(1).filter(Boolean).map((line) => JSON.parse(line));
  check(events.some(([, kind, data]) => kind === 'o' && data.includes('hi-from-browser')), 'the output is in the cast');
  check(events.some(([, kind]) => kind === 'i'), 'the input is in the cast');
  check(events.some(([, kind, data]) => kind === 'r' && data === `${fit.cols}x${fit.rows}`), 'the resize is in the cast');
  step('cast-downloaded');

  // Let go, the socket closes and the session runs on; taking over again needs a new ticket.
  await page.click('#session-detach');
  const [first] = sockets.all;
  if (!first.isClosed()) await first.waitForEvent('close');
  await page.waitForSelector('#terminal:not([data-attached])');
  await page.waitForSelector('#session-attach:visible');
  check((await page.locator('#session').getAttribute('data-state')) !== 'exited', 'the session runs on');
  await page.click('#session-attach');
  await page.waitForSelector('#terminal[data-attached="true"]');
  await page.keyboard.type('echo taken-over-again');
  await page.keyboard.press('Enter');
  await waitForLine(page, '^taken-over-again$');
  step('taken-over-again');

  // Ended from the page: the state says so and the socket is closed.
  page.once('dialog', (dialog) => dialog.accept());
  await page.click('#session-end');
  await page.waitForSelector(`#session[data-session-id="${SESSION_ID}"][data-state="exited"]`);
  await page.waitForSelector(`#session-rows tr[data-session-id="${SESSION_ID}"][data-state="exited"]`);
  check((await page.locator('#session-question').textContent()).startsWith('deleted'), 'the end reason is shown');
  check(await page.locator('#session-attach').isHidden(), 'no take-over of an ended session');
  check((await page.locator('#terminal').getAttribute('data-attached')) === null, 'let go at the end');
  step('ended');

  // The keys went over the socket, not the input route; the ticket only into its URL.
  const typed = sockets.sent.filter((frame) => !frame.startsWith('text:')).join('');
  check(typed.includes('echo hi-from-browserZ\x7f\r'), `the keystrokes went as bytes: ${JSON.stringify(typed.slice(0, 80))}`);
  check(typed.includes('\x03'), 'Ctrl-C went as ETX');
  check(typed.includes('\x1b[A'), 'Up went as its escape sequence');
  check(!requests.some((r) => r.includes('/input')), 'nothing typed through POST /input');
  check(tickets.length === 2 && sockets.urls.length === 2, `one ticket for each socket: ${tickets.length}, ${sockets.urls.length}`);
  check(tickets[0] !== tickets[1], 'a new ticket for the second socket');
  tickets.forEach((ticket, index) => {
    check(sockets.urls[index].endsWith(`/v1/sessions/${SESSION_ID}/attach?ticket=${ticket}`), 'the socket URL holds its ticket');
    check(!sockets.urls[index].includes(BRIDGE_TOKEN), 'the socket URL holds no token');
    check(!requests.some((r) => r.includes(ticket)), 'no HTTP request carries the ticket');
    check(!problems.some((p) => p.includes(ticket)), 'no message shows the ticket');
  });
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`${error.stack || error}\n`);
    process.exit(1);
  },
);
