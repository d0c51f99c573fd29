// Keeps several sessions of the web client page open in headless Chromium (Debian's, through playwright-core)
// while a test restarts, stops and kills the nodes under them. Takes one JSON argument:
//   { pages: [{ name, url }] }
// opens every page in a tab of its own and waits until each says it is connected, then prints one JSON line
// { event: 'ready', pages } and answers commands, one JSON object per line on stdin:
//   { cmd: 'type', name, text }  types into that page's desktop (after a click on it), answers { event: 'typed' }
//   { cmd: 'report' }            answers { event: 'report', pages }
//   { cmd: 'quit' }              closes the browser and exits
// Each page in `pages` is { name, state, status, pauses, reconnects, retried, console }: the page's own status,
// the pauses it measured, in ms, from losing its tunnel to having it back, and the status of each loss it
// reconnected after (window.deskbroker).
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const job = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
    // Tabs in the background are throttled; these are all someone's foreground.
    '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows'],
});
const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
const tabs = new Map();
const say = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

async function report(name, { page, logs }) {
  const seen = await page.evaluate(() => ({
    state: document.getElementById('status')?.dataset.state ?? '',
    status: document.getElementById('status')?.textContent ?? '',
    pauses: window.deskbroker?.pauses ?? [],
    reconnects: window.deskbroker?.reconnects ?? 0,
    retried: window.deskbroker?.retried ?? [],
  })).catch((error) => ({ state: 'gone', status: String(error), pauses: [], reconnects: 0 }));
  return { name, ...seen, console: logs.slice(-40) };
}

async function reportAll() {
  return Promise.all([...tabs].map(([name, tab]) => report(name, tab)));
}

for (const { name, url } of job.pages) {
  const page = await context.newPage();
  const logs = [];
  page.on('console', (message) => logs.push(`${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => logs.push(`pageerror: ${error.message}`));
  await page.goto(url);
  tabs.set(name, { page, logs });
}
for (const { page } of tabs.values()) {
  await page.waitForFunction(() => document.getElementById('status')?.dataset.state === 'open', null, { timeout: 30000 })
    .catch(() => {});
}
say({ event: 'ready', pages: await reportAll() });

for await (const line of createInterface({ input: process.stdin })) {
  const command = JSON.parse(line);
  if (command.cmd === 'quit') break;
  if (command.cmd === 'report') say({ event: 'report', pages: await reportAll() });
  if (command.cmd === 'type') {
    const { page } = tabs.get(command.name);
    // The desktop must be under the pointer: a click gives it the keyboard.
    const box = await page.locator('#screen').boundingBox();
    await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
    await page.keyboard.type(command.text, { delay: 40 });
    say({ event: 'typed', name: command.name });
  }
}
await browser.close();
