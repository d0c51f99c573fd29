// Drives the web client page in headless Chromium (Debian's, through playwright-core: no browser download)
// for deskbroker's end-to-end tests. Takes one JSON argument:
//   { url, screenshot, type?: string, click?: [x, y], settleMs?: number, expect?: 'open' | 'error' }
// opens the page, waits until it says it is connected (or, with expect 'error', that it failed), clicks and types as asked, takes a screenshot, and
// prints one JSON line: { status, colours, console }. Exits non-zero if the page never connects.
import { chromium } from 'playwright-core';

const job = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
});
const logs = [];
let status = '';
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  page.on('console', (message) => logs.push(`${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => logs.push(`pageerror: ${error.message}`));
  await page.goto(job.url);
  const expected = job.expect ?? 'open';
  await page.waitForFunction((state) => document.getElementById('status')?.dataset.state === state, expected, { timeout: 20000 })
    .catch(() => {});
  status = await page.textContent('#status');
  if (job.click) {
    // The desktop must be under the pointer first: the page says it is connected on guacd's `ready`, and
    // the display takes its size from the `size` that follows.
    await page.waitForFunction(([x, y]) => {
      const screen = document.getElementById('screen');
      const target = document.elementFromPoint(x, y);
      const sized = [...screen.querySelectorAll('canvas')].some((canvas) => canvas.width > 0);
      return sized && target !== screen && screen.contains(target);
    }, job.click, { timeout: 10000 }).catch(() => {});
    await page.mouse.click(job.click[0], job.click[1]);
  }
  if (job.type) await page.keyboard.type(job.type, { delay: 40 });
  await page.waitForTimeout(job.settleMs ?? 1000);
  status = await page.textContent('#status');
  // Distinct colours over every canvas on the page: a blank screen has one.
  const colours = await page.evaluate(() => {
    const seen = new Set();
    for (const canvas of document.querySelectorAll('canvas')) {
      if (!canvas.width || !canvas.height) continue;
      const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < data.length && seen.size < 1000; i += 4 * 7) seen.add(`${data[i]},${data[i + 1]},${data[i + 2]}`);
    }
    return seen.size;
  });
  await page.screenshot({ path: job.screenshot });
  console.log(JSON.stringify({ status, colours, console: logs }));
} finally {
  await browser.close();
}
