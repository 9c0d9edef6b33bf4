// The runs page in headless Chromium, driven by playwright-core, started by the Rust tests in
// runs_page.rs. The run under test waits for a model answer the Rust test holds back; this
// script reports its progress as "step: NAME" lines on stdout, and the test releases the
// answer when the running run is on screen. Every wait is on the page's DOM, never on time.
//
// SCENARIO=live: sign in with the token, watch the run finish, check what it shows.
// SCENARIO=cancel: an open loopback bridge (no token); cancel the run from the page.
//
// Environment: SCENARIO, BRIDGE_URL, BRIDGE_TOKEN (empty for an open bridge; never an
// argument, which `ps` would show), RUN_ID, CHROMIUM (the executable), SCREENSHOT (where the
// PNG goes), NODE_PATH (where playwright-core is).
'use strict';

const { chromium } = require('playwright-core');

const WAIT_MS = 90_000;
const { SCENARIO, BRIDGE_URL, BRIDGE_TOKEN, RUN_ID, CHROMIUM, SCREENSHOT } = process.env;

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

function step(name) {
  process.stdout.write(`step: ${name}\n`);
}

async function main() {
  for (const [name, value] of Object.entries({ SCENARIO, BRIDGE_URL, RUN_ID, CHROMIUM, SCREENSHOT })) {
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

async function live(page) {
  // The bridge wants a token: the page asks for it before anything else.
  check(BRIDGE_TOKEN, 'BRIDGE_TOKEN is set');
  await page.locator('#login').waitFor({ state: 'visible' });
  step('asked-for-token');
  await page.fill('#token', BRIDGE_TOKEN);
  await page.click('#login-form button[type=submit]');
  await page.locator('#app').waitFor({ state: 'visible' });
  const kept = await page.evaluate(() => sessionStorage.getItem('headless-bridge.token'));
  check(kept === BRIDGE_TOKEN, 'the token is kept in sessionStorage');

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

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`${error.stack || error}\n`);
    process.exit(1);
  },
);
