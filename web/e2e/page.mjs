// Drives the web client page in headless Chromium (Debian's, through playwright-core: no browser download)
// for deskbroker's end-to-end tests. Takes one JSON argument:
//   { url, screenshot, type?: string, click?: [x, y], settleMs?: number, expect?: 'open' | 'error' }
// opens the page, waits until it says it is connected (or, with expect 'error', that it failed), clicks and types as asked, takes a screenshot, and
// prints one JSON line: { status, colours, console }. Exits non-zero if the page never connects.
import { inflateSync } from 'node:zlib';
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
  // Distinct colours the page shows below its header, from the screenshot: what a person would see (a
  // canvas can be drawn yet hidden behind the page), and a blank screen has one.
  const colours = visibleColours(await page.screenshot({ path: job.screenshot }), 50);
  console.log(JSON.stringify({ status, colours, console: logs }));
} finally {
  await browser.close();
}

// Distinct colours (up to 1000) in an 8-bit RGB or RGBA PNG, from row `top` down.
function visibleColours(png, top) {
  let offset = 8;
  let width = 0, height = 0, channels = 0;
  const idat = [];
  while (offset < png.length) {
    const length = png.readUInt32BE(offset);
    const type = png.toString('latin1', offset + 4, offset + 8);
    const data = png.subarray(offset + 8, offset + 8 + length);
    if (type === 'IHDR') {
      [width, height] = [data.readUInt32BE(0), data.readUInt32BE(4)];
      channels = { 2: 3, 6: 4 }[data[9]];
    } else if (type === 'IDAT') idat.push(data);
    offset += 12 + length;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const seen = new Set();
  let previous = Buffer.alloc(stride);
  for (let y = 0; y < height && seen.size < 1000; y++) {
    const filter = raw[y * (stride + 1)];
    const line = Buffer.from(raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)));
    for (let i = 0; i < stride; i++) {
      const left = i >= channels ? line[i - channels] : 0;
      const up = previous[i];
      const upLeft = i >= channels ? previous[i - channels] : 0;
      const guess = left + up - upLeft;
      const [pa, pb, pc] = [Math.abs(guess - left), Math.abs(guess - up), Math.abs(guess - upLeft)];
      const paeth = pa <= pb && pa <= pc ? left : pb <= pc ? up : upLeft;
      line[i] = (line[i] + [0, left, up, (left + up) >> 1, paeth][filter]) & 0xff;
    }
    if (y >= top) {
      for (let i = 0; i < stride; i += channels) seen.add((line[i] << 16) | (line[i + 1] << 8) | line[i + 2]);
    }
    previous = line;
  }
  return seen.size;
}
