// The dashboard in a real browser: Debian's Chromium (headless, no network beyond loopback)
// driven by playwright-core. Run by e2e/tests/dashboard.rs against a `canopy up` stack:
//
//   CANOPY_URL=http://127.0.0.1:P CANOPY_USER=Admin CANOPY_PASSWORD=… CANOPY_TICKER=/abs/ticker.wat \
//   CANOPY_SCREENSHOTS=docs/screenshots CANOPY_PROFILE=/tmp/empty-dir node dashboard.test.mjs
//
// Logs in, shows an SLA problem at its JSON path, deploys a wasm ticker, sees its instance
// turn RUNNING without a reload, follows its log, scales to 2 and back to 1, looks at the
// clusters and the admin pages, checks a phone-sized screen has no horizontal overflow, and
// deletes the application; screenshots of the main pages go to CANOPY_SCREENSHOTS. Every
// wait is for something on the page; the timeouts only bound a failure.
// Prints one line `RESULT {json}` at the end; exits non-zero on the first failed step.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = name => {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return v;
};
const URL_ = env('CANOPY_URL');
const USER = env('CANOPY_USER');
const PASSWORD = env('CANOPY_PASSWORD');
const TICKER = env('CANOPY_TICKER');
const SHOTS = env('CANOPY_SCREENSHOTS');
const PROFILE = env('CANOPY_PROFILE');
const CHROMIUM = process.env.CANOPY_CHROMIUM || '/usr/bin/chromium';
const TICK = 'tick from the canopy wasm demo';
const SLOW = 90_000; // bound on waits for the stack (placement, a wasm start)

mkdirSync(SHOTS, { recursive: true });

const context = await chromium.launchPersistentContext(PROFILE, {
  executablePath: CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 860 },
  deviceScaleFactor: 1,
});
context.setDefaultTimeout(30_000);
const page = context.pages()[0] || await context.newPage();
const pageErrors = [];
page.on('pageerror', e => pageErrors.push(String(e)));
page.on('console', m => {
  if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) pageErrors.push(m.text());
});
// Confirmation dialogs (delete) are accepted, as a user would.
page.on('dialog', d => d.accept());

const result = {};
let n = 0;
async function step(name, f) {
  n += 1;
  try {
    await f();
    console.log(`ok ${n} - ${name}`);
  } catch (e) {
    console.log(`not ok ${n} - ${name}`);
    console.error(e);
    try {
      await page.screenshot({ path: join(PROFILE, '..', 'dashboard-failure.png'), fullPage: true });
      console.error(`page at failure: ${page.url()}\n${(await page.locator('main').innerText()).slice(0, 4000)}`);
    } catch { /* the page is gone */ }
    await context.close();
    process.exit(1);
  }
}

// Toasts come and go: cleared before a picture (Playwright's `style` option would be an
// inline style, which the page's content security policy refuses).
const shot = async name => {
  await page.evaluate(() => document.getElementById('toast').replaceChildren());
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
};
const check = (cond, message) => {
  if (!cond) throw new Error(message);
};
const noOverflow = async what => {
  const { scroll, width } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth, width: window.innerWidth,
  }));
  check(scroll <= width, `${what}: the page is ${scroll}px wide on a ${width}px screen`);
};

const sla = (service, extra = {}) => JSON.stringify({
  sla_version: 'v2.0',
  customerID: USER,
  applications: [{
    application_name: 'dash',
    application_namespace: 'browser',
    application_desc: 'deployed from the dashboard',
    microservices: [{
      microservice_name: service,
      microservice_namespace: 'browser',
      virtualization: 'wasm',
      code: TICKER,
      memory: 16,
      vcpus: 0,
      ...extra,
    }],
  }],
}, null, 2);

let serviceId;

await step('the root serves the login page at /', async () => {
  await page.goto(`${URL_}/`);
  await page.waitForURL(/#\/login$/);
  await page.locator('input[name=username]').waitFor();
  await shot('login');
});

await step('a wrong password is refused with a message', async () => {
  await page.fill('input[name=username]', USER);
  await page.fill('input[name=password]', 'not-the-password');
  await page.click('button[type=submit]');
  await page.locator('#login-error', { hasText: /invalid username or password/i }).waitFor();
});

await step('logs in and lands on the applications', async () => {
  await page.fill('input[name=password]', PASSWORD);
  await page.click('button[type=submit]');
  await page.locator('main h1', { hasText: 'Applications' }).waitFor();
  await page.locator('#live[data-state=open]').waitFor();
  // Set once; a reload would lose it.
  await page.evaluate(() => { window.__noReload = 'still the same page'; });
});

await step('an invalid SLA shows its problems at their JSON paths', async () => {
  await page.click('#nav a[data-nav=deploy]');
  await page.locator('textarea#sla').fill(sla('ticker', { port: '80:99999' }));
  await page.click('button#deploy');
  const port = page.locator('#problems li[data-path="applications[0].microservices[0].port"]');
  await port.waitFor();
  check(/99999/.test(await port.innerText()), 'the port problem names the bad port');
  // Its "show" selects the offending value in the text.
  await port.locator('button', { hasText: 'show' }).click();
  const selected = await page.$eval('textarea#sla', t => t.value.slice(t.selectionStart, t.selectionEnd));
  check(selected === '"80:99999"', `"show" selected ${JSON.stringify(selected)}`);
  await shot('deploy-error');
});

await step('a JSON syntax error is shown with its line', async () => {
  await page.locator('textarea#sla').fill('{"sla_version": "v2.0",\n  "applications": [}');
  await page.click('button#deploy');
  await page.locator('#problems li', { hasText: /line 2/ }).waitFor();
});

await step('deploys a wasm ticker and its instance turns RUNNING without a reload', async () => {
  await page.locator('textarea#sla').fill(sla('ticker'));
  await page.click('button#deploy');
  await page.waitForURL(/#\/service\/[0-9a-f]+$/);
  serviceId = page.url().split('/').pop();
  await page.locator('#instances tr[data-instance="0"][data-status="RUNNING"]').waitFor({ timeout: SLOW });
  check(await page.evaluate(() => window.__noReload) === 'still the same page', 'the page was reloaded');
});

await step('follows the instance\'s log', async () => {
  await page.click('#instances tr[data-instance="0"] button[data-action=log]');
  const log = page.locator('#log');
  await page.waitForFunction(t => document.getElementById('log')?.textContent.includes(t), TICK, { timeout: SLOW });
  const count = async () => (await log.textContent()).split(TICK).length - 1;
  const first = await count();
  // New output is appended while the view stays open.
  await page.waitForFunction(([t, k]) => document.getElementById('log').textContent.split(t).length - 1 > k,
    [TICK, first], { timeout: SLOW });
  result.logMode = await page.$eval('#log-card', c => c.dataset.mode);
  check(result.logMode === 'stream', `log mode ${result.logMode}`);
});

await step('scales to 2 instances, both RUNNING', async () => {
  await page.click('button[data-action=scale-up]');
  await page.locator('#instances tr[data-instance="1"][data-status="RUNNING"]').waitFor({ timeout: SLOW });
  await page.locator('#instances tr[data-instance="0"][data-status="RUNNING"]').waitFor();
  await page.locator('#instance-count[data-count="2"]').waitFor();
  await shot('service');
});

await step('scales back to 1', async () => {
  await page.click('button[data-action=scale-down]');
  await page.locator('#instances tr[data-instance="1"]').waitFor({ state: 'detached', timeout: SLOW });
  await page.locator('#instance-count[data-count="1"]').waitFor();
  await page.locator('#instances tr[data-instance="0"][data-status="RUNNING"]').waitFor();
});

await step('the applications page lists it, and the event stream brought its RUNNING', async () => {
  await page.click('#nav a[data-nav=apps]');
  await page.locator('[data-app][data-name=dash] tr[data-name=ticker]').waitFor();
  await page.locator(`#activity li[data-kind=instance][data-status=RUNNING][data-service="${serviceId}"]`).first().waitFor();
  await shot('applications');
});

await step('clusters and workers with capacity and usage', async () => {
  await page.click('#nav a[data-nav=clusters]');
  await page.locator('[data-cluster][data-name=local]').waitFor();
  await page.locator('#workers tr[data-node][data-name=worker1]').waitFor();
  await shot('clusters');
});

await step('admin: creates a user', async () => {
  await page.click('#nav a[data-nav=users]');
  await page.locator('#users tr[data-user=Admin]').waitFor();
  await page.fill('#new-user input[name=name]', 'browseruser');
  await page.fill('#new-user input[name=password]', 'browser-pw-1');
  await page.click('#new-user button[type=submit]');
  await page.locator('#users tr[data-user=browseruser]').waitFor();
  await shot('users');
});

await step('admin: creates an organisation', async () => {
  await page.click('#nav a[data-nav=organizations]');
  await page.fill('#new-organization input[name=name]', 'edgeteam');
  await page.click('#new-organization button[type=submit]');
  await page.locator('[data-organization=edgeteam]').waitFor();
});

await step('a phone-sized screen: no horizontal overflow, navigation usable', async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('#nav a[data-nav=apps]');
  await page.locator('[data-app][data-name=dash]').waitFor();
  await noOverflow('applications');
  await shot('phone');
  await page.click('[data-app][data-name=dash] tr[data-name=ticker] a');
  await page.locator('#instances tr[data-instance="0"]').waitFor();
  await noOverflow('service');
  await shot('phone-service');
  await page.click('#nav a[data-nav=clusters]');
  await page.locator('[data-cluster]').first().waitFor();
  await noOverflow('clusters');
  await page.click('#nav a[data-nav=deploy]');
  await page.locator('textarea#sla').waitFor();
  await noOverflow('deploy');
  await page.setViewportSize({ width: 1280, height: 860 });
});

await step('deletes the application and it disappears without a reload', async () => {
  await page.click('#nav a[data-nav=apps]');
  await page.click('[data-app][data-name=dash] button[data-action=delete-app]');
  await page.locator('[data-app][data-name=dash]').waitFor({ state: 'detached', timeout: SLOW });
  check(await page.evaluate(() => window.__noReload) === 'still the same page', 'the page was reloaded');
});

await step('no script error and no blocked resource on any page', async () => {
  check(pageErrors.length === 0, `errors: ${pageErrors.join('\n')}`);
});

await context.close();
console.log(`RESULT ${JSON.stringify({ ...result, serviceId })}`);
