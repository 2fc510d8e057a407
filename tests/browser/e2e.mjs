// Drive the browser client (web/dist) in Debian's Chromium through playwright-core
// and print one JSON line per scenario for tests/browser/test_browser_e2e.py.
//
// Usage: node tests/browser/e2e.mjs '<plan JSON>'
// plan: {"chromium": "/usr/bin/chromium", "screenshots": "DIR",
//        "scenarios": [{"name", "transport": "connect" | "grpc-web", "url", "email"}]}
// Each scenario: page 1 logs in (its own browser context: its own device key in IndexedDB)
// and runs a verified user.profile.get; page 2 (another context, same email, so another
// session of the same user) creates a note, which page 1 must receive as a verified event;
// page 1 lists notes, revokes its own session and must show its stream ending.
// Output: {"scenario": name, ...facts} per scenario, then {"done": true}; a failed step
// prints {"scenario": name, "error": "..."} and the script goes on with the next one.

import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { chromium } from "playwright-core";

const plan = JSON.parse(process.argv[2]);
const STEP_MS = 15_000;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function openPage(browser, scenario, log) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 820 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("console", (msg) => { if (msg.type() === "error") log.push(`console: ${msg.text()}`); });
  page.on("pageerror", (err) => log.push(`pageerror: ${err.message}`));
  const rpc = [];
  page.on("request", (req) => {
    const url = new URL(req.url());
    if (url.pathname.startsWith("/gateway.v1.Gateway/")) {
      rpc.push({ method: url.pathname.split("/").pop(), origin: url.origin, contentType: req.headers()["content-type"] });
    }
  });
  await page.goto(scenario.url);
  await page.waitForSelector("#app[data-ready=true]");
  await page.check(scenario.transport === "grpc-web" ? "#transport-grpc-web" : "#transport-connect");
  return { context, page, rpc };
}

async function login(page, email, t) {
  const t0 = Date.now();
  await page.fill("#email", email);
  await page.click("#send-code");
  await page.waitForSelector("#login-status[data-kind=ok]");
  await page.fill("#code", "000000");
  await page.click("#confirm");
  await page.waitForSelector("#session[data-logged-in=true]");
  const t1 = Date.now();
  // Events published after gateway.server_time reach the stream: wait for it before acting.
  await page.waitForSelector("#stream-status[data-state=open]");
  if (t) t.push({ login: t1 - t0, streamOpen: Date.now() - t1 });
  return (await page.textContent("#session-id")).trim();
}

/** Click ``button`` and read the newest result for ``messageType`` (there are no others by then). */
async function command(page, button, messageType) {
  const before = await page.locator(`.result[data-message-type="${messageType}"]`).count();
  await page.click(button);
  const results = page.locator(`.result[data-message-type="${messageType}"]`);
  await results.nth(before).waitFor();
  const el = results.first(); // newest first
  const text = await el.locator("pre").textContent();
  let payload = text;
  try { payload = JSON.parse(text); } catch { /* an error's message */ }
  return {
    verified: await el.getAttribute("data-verified"),
    resultCode: await el.getAttribute("data-result-code"),
    payload,
  };
}

async function runScenario(browser, scenario) {
  const log = [];
  const out = { scenario: scenario.name, transport: scenario.transport, timings: [] };
  const started = Date.now();
  const mark = (name) => out.timings.push({ [name]: Date.now() - started });
  const one = await openPage(browser, scenario, log);
  let two = null;
  try {
    out.pageOrigin = new URL(one.page.url()).origin;
    out.gateway = await one.page.inputValue("#gateway");
    out.session1 = await login(one.page, scenario.email, out.timings);
    mark('out.profile');
    out.profile = await command(one.page, "#profile-get", "user.profile.get");

    mark('two');
    two = await openPage(browser, scenario, log);
    out.session2 = await login(two.page, scenario.email, out.timings);
    const text = `note from ${scenario.name} ${Date.now()}`;
    await two.page.fill("#note-text", text);
    mark('out.created');
    out.created = await command(two.page, "#note-create", "user.notes.create");
    out.noteText = text;
    const event = one.page.locator('li.event[data-event-type="user.note.created"]', { hasText: text });
    await event.waitFor();
    out.event = {
      verified: await event.getAttribute("data-verified"),
      payload: JSON.parse(await event.locator(".payload").textContent()),
    };
    mark('out.list');
    out.list = await command(one.page, "#notes-list", "user.notes.list");

    mark('out.revoke');
    out.revoke = await command(one.page, "#revoke", "user.sessions.revoke");
    await one.page.waitForSelector("#stream-status[data-state=ended]");
    out.streamEnd = await one.page.textContent("#stream-status");
    out.streamEndVisible = await one.page.isVisible("#stream-status");
    mark('out.otherStream');
    out.otherStream = await two.page.getAttribute("#stream-status", "data-state");
    // The revoked session is refused from now on (UNAUTHENTICATED at stage 2).
    out.afterRevoke = await command(one.page, "#profile-get", "user.profile.get");
    mark('out.rpc');
    out.rpc = one.rpc;
    mkdirSync(plan.screenshots, { recursive: true });
    out.screenshot = join(plan.screenshots, `browser-${scenario.name}.png`);
    await one.page.screenshot({ path: out.screenshot, fullPage: true });
  } catch (e) {
    out.error = String(e && e.stack ? e.stack : e);
    try {
      out.screenshot = join(plan.screenshots, `browser-${scenario.name}-failed.png`);
      mkdirSync(plan.screenshots, { recursive: true });
      await one.page.screenshot({ path: out.screenshot, fullPage: true });
    } catch { /* the page is gone */ }
  } finally {
    out.log = log;
    await one.context.close();
    if (two) await two.context.close();
  }
  emit(out);
}

const browser = await chromium.launch({
  executablePath: plan.chromium,
  headless: true,
  // Playwright gives each launch a fresh temporary profile (its own --user-data-dir) and,
  // without a sandbox option, passes --no-sandbox (needed as root).
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-proxy-server",
  ],
});
try {
  emit({ browser: browser.version() });
  // Scenarios are independent (each its own users and contexts): side by side is ~30% faster.
  await Promise.all(plan.scenarios.map((scenario) => runScenario(browser, scenario)));
} finally {
  await browser.close();
}
emit({ done: true });
