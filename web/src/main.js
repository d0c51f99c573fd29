// deskbroker's web client: given a session token, opens the session with the right client (noVNC for raw
// VNC sessions, guacamole-common-js for guacd sessions) on the edge that served this page, and tells the
// person what is happening in words. Also an example of embedding: everything below is the clients' public
// API, used as their own documentation describes.
import RFB from '@novnc/novnc';
import Guacamole from 'guacamole-common-js';

const $ = (id) => document.getElementById(id);
const screen = $('screen');
let current = null;

/** What the edge's close codes and Guacamole statuses mean, for people. */
const MEANINGS = {
  4400: 'This client or session cannot be used here.',
  4403: 'Unknown or expired session token.',
  4408: 'The connection timed out.',
  4409: 'Another connection took over this session.',
  4410: 'The session was closed.',
  4429: 'Too many connections for this account.',
  4502: 'The remote desktop server is unreachable or failed.',
  4503: 'The service is unavailable; try again.',
  4504: 'The remote desktop server timed out.',
  512: 'Internal server error.',
  513: 'The server is busy; try again.',
  514: 'The remote desktop server timed out.',
  515: 'The remote desktop server failed.',
  516: 'The session has ended.',
  519: 'The remote desktop server is unreachable.',
  520: 'The service is unavailable; try again.',
  521: 'Another connection took over this session.',
  522: 'The session expired.',
  523: 'The session was closed.',
  768: 'The server refused a malformed request.',
  769: 'Unknown or expired session token.',
  771: 'Not allowed.',
  776: 'The connection timed out.',
  781: 'A message was too large.',
  797: 'Too many connections for this account.',
};

/** Guacamole statuses that say to try again: the node is stopping or lost, or full (docs/errors.md). */
const TRY_AGAIN_GUACAMOLE = new Set([520, 513]);
/** Raw relay closes that say to try again: 4503, and a connection that ended without a close frame. */
const TRY_AGAIN_VNC = new Set([4503, 1006]);
/** How many times in a row the page tries to reconnect before it gives up and says why. */
const RECONNECT_TRIES = 8;
/**
 * How long a reconnect goes on trying while the tenant's limit refuses it: the slot of the tunnel it replaces
 * comes back when that tunnel's node notices it is gone, at worst when the HTTP tunnel's 15 s timeout ends it.
 */
const LIMIT_PATIENCE_MS = 30000;

/**
 * What the page has been through, for people and for the end-to-end tests: each reconnect's pause, in ms, and
 * the status (code, or 'silent') of each loss it reconnected after.
 */
window.deskbroker = { pauses: [], reconnects: 0, retried: [] };

function show(text, state = 'info') {
  $('status').textContent = text;
  $('status').dataset.state = state;
  $('overlay').hidden = state !== 'reconnecting';
}

/** The session being shown, as `client/session` described it. */
let session = null;

function idleText() {
  const seconds = session.idle_timeout_s;
  const span = seconds % 60 === 0 ? `${seconds / 60} minute${seconds === 60 ? '' : 's'}` : `${seconds} seconds`;
  return `Closed after ${span} without input.`;
}

function meaning(code, fallback) {
  // An idle timeout and the session's expiry both end a Guacamole tunnel with 522; the relay says which.
  const idle = session?.idle_timeout_s && (code === 522
    ? !(session.expires_ms && Date.now() >= session.expires_ms)
    : code === 4408 && fallback === 'closed after a period without input');
  if (idle) return idleText();
  return MEANINGS[code] ?? fallback ?? `Error ${code}.`;
}

function ended(text, state) {
  show(text, state);
  $('reconnect').hidden = false;
}

/**
 * Whether a Guacamole status says to try again. A connection that ended without a status reaches
 * guacamole-common-js as 519 without a message (a server that sent 519 says so in words), and its own receive
 * timeout as 514 "Server timeout." (the tunnel stalled, as through a frozen node). During a reconnect, the
 * tenant's limit may still count the tunnel that died, until its node's lease lapses.
 */
function guacamoleRetries(status, reconnecting) {
  return TRY_AGAIN_GUACAMOLE.has(status.code)
    || (status.code === 519 && !status.message)
    || (status.code === 514 && status.message === 'Server timeout.')
    || (reconnecting && status.code === 797);
}

function wsUrl(path) {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

async function lookUp(token) {
  const response = await fetch(`client/session?token=${encodeURIComponent(token)}`);
  if (response.status === 404) throw new Error(MEANINGS[769]);
  if (!response.ok) throw new Error(meaning(Number(response.headers.get('Guacamole-Status-Code')), `Server error (${response.status}).`));
  return response.json();
}

/**
 * Opens a raw VNC session with noVNC and reports through `events`: `open(text)`, `end(text, state)` (final) or
 * `retry(why)` (try again).
 */
function connectVnc(token, readOnly, events, reconnecting) {
  // Our own socket, so the close code and reason can be told to the person (noVNC only says "unclean").
  const socket = new WebSocket(wsUrl(`websockify?token=${encodeURIComponent(token)}`), ['binary']);
  let closed = null;
  let leaving = false;
  socket.addEventListener('close', (event) => { closed = event; });
  screen.replaceChildren();
  const rfb = new RFB(screen, socket, { shared: true });
  rfb.scaleViewport = true;
  rfb.viewOnly = readOnly;
  rfb.addEventListener('connect', () => events.open(readOnly ? 'Connected (VNC, view only).' : 'Connected (VNC).'));
  rfb.addEventListener('securityfailure', (event) => events.end(`Security failure: ${event.detail.reason}`, 'error'));
  rfb.addEventListener('disconnect', () => {
    if (leaving) return;
    const code = closed?.code ?? 1006;
    console.info(`deskbroker: relay closed ${code} ${closed?.reason ?? ''}`);
    if (code === 1000) events.end('Disconnected.', 'info');
    else if (TRY_AGAIN_VNC.has(code) || (reconnecting && code === 4429)) events.retry(meaning(code, 'Connection lost.'), code);
    else events.end(meaning(code, closed?.reason || 'Connection lost.'), 'error');
  });
  show(reconnecting ? 'Reconnecting…' : 'Connecting to the desktop…', reconnecting ? 'reconnecting' : 'info');
  return { disconnect: () => { leaving = true; rfb.disconnect(); } };
}

/**
 * Opens a guacd session with guacamole-common-js and reports as `connectVnc` does. The client only hears its
 * tunnel's instructions, not how the tunnel closed: an HTTP tunnel whose read was cut closes without an error
 * while the client still says it is connected. So the page watches the tunnel too.
 */
function connectGuacamole(token, transport, readOnly, events, reconnecting) {
  const websocket = () => new Guacamole.WebSocketTunnel('websocket-tunnel');
  const http = () => new Guacamole.HTTPTunnel('tunnel');
  const tunnel = transport === 'websocket' ? websocket()
    : transport === 'http' ? http()
    : new Guacamole.ChainedTunnel(websocket(), http());
  const client = new Guacamole.Client(tunnel);
  const display = client.getDisplay().getElement();
  screen.replaceChildren(display);

  const data = new URLSearchParams({
    token,
    GUAC_WIDTH: String(Math.max(screen.clientWidth, 320)),
    GUAC_HEIGHT: String(Math.max(screen.clientHeight, 240)),
    GUAC_DPI: String(Math.round(96 * (window.devicePixelRatio || 1))),
    GUAC_TIMEZONE: Intl.DateTimeFormat().resolvedOptions().timeZone,
  });
  for (const type of ['image/png', 'image/jpeg', 'image/webp']) data.append('GUAC_IMAGE', type);
  // A reconnect names the tunnel it replaces: that one ends, and its quota slot goes to the new one.
  if (reconnecting && previousTunnel) data.set('replaces', previousTunnel);

  let clientState = 0;
  let clientError = null;
  let tunnelError = null;
  let leaving = false;
  const states = ['Idle.', 'Connecting…', 'Waiting for the desktop…', 'Connected.', 'Disconnecting…', 'Disconnected.'];
  client.onstatechange = (state) => {
    clientState = state;
    if (state === 3) events.open(`Connected (Guacamole, ${transport}${readOnly ? ', view only' : ''}).`);
    else if (state < 3 && !reconnecting) show(states[state] ?? `State ${state}.`);
  };
  client.onerror = (status) => { clientError = status; };
  tunnel.onerror = (status) => { tunnelError = status; };
  tunnel.onstatechange = (state) => {
    if (state !== Guacamole.Tunnel.State.CLOSED || leaving) return;
    leaving = true;
    previousTunnel = tunnel.uuid ?? previousTunnel;
    // Whether the client was ending (guacd said `disconnect`, or sent an error) before the tunnel closed.
    const clientEnding = clientState >= 4;
    stopInput();
    client.disconnect();
    const status = clientError ?? tunnelError;
    console.info(`deskbroker: tunnel closed: ${status ? `${status.code} ${status.message}` : 'no status'}`);
    if (status && guacamoleRetries(status, reconnecting)) events.retry(meaning(status.code, status.message), status.code);
    else if (status) events.end(meaning(status.code, status.message), 'error');
    else if (clientEnding) events.end('Disconnected.', 'info');
    // The tunnel closed by itself, without a word (a read cut mid-response): try again.
    else events.retry('Connection lost.', 'silent');
  };

  const mouse = new Guacamole.Mouse(display);
  const sendMouse = (state) => client.sendMouseState(state.state ?? state, true);
  if (mouse.onEach) mouse.onEach(['mousedown', 'mouseup', 'mousemove'], sendMouse);
  else mouse.onmousedown = mouse.onmouseup = mouse.onmousemove = sendMouse;
  const keyboard = new Guacamole.Keyboard(screen);
  keyboard.onkeydown = (keysym) => { client.sendKeyEvent(1, keysym); return false; };
  keyboard.onkeyup = (keysym) => client.sendKeyEvent(0, keysym);
  const stopInput = () => { keyboard.onkeydown = keyboard.onkeyup = null; };
  screen.focus();

  if (reconnecting) show('Reconnecting…', 'reconnecting');
  client.connect(data.toString());
  return {
    disconnect: () => {
      leaving = true;
      stopInput();
      client.disconnect();
    },
  };
}

/** Jittered backoff: the first try at once, then doubling from 250 ms up to 3 s, each a random half to whole. */
function backoff(tries) {
  if (tries === 0) return 0;
  const ceiling = Math.min(3000, 250 * 2 ** (tries - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

let tries = 0;
let lostAt = null;
/** The id of the last Guacamole tunnel that closed, which its reconnect replaces. */
let previousTunnel = null;
let retryTimer = null;

/** Opens the looked-up session; on a loss that says to try again, again, with the same token. */
function open(token) {
  const reconnecting = lostAt !== null;
  const events = {
    open(text) {
      if (lostAt !== null) window.deskbroker.pauses.push(Math.round(performance.now() - lostAt));
      lostAt = null;
      tries = 0;
      show(text, 'open');
    },
    end(text, state) {
      current = null;
      lostAt = null;
      ended(text, state);
    },
    retry(why, status) {
      current = null;
      window.deskbroker.retried.push(status);
      lostAt ??= performance.now();
      const limited = status === 797 || status === 4429;
      if (tries >= RECONNECT_TRIES && !(limited && performance.now() - lostAt < LIMIT_PATIENCE_MS)) {
        lostAt = null;
        ended(`${why} Reconnecting failed ${tries} times.`, 'error');
        return;
      }
      window.deskbroker.reconnects += 1;
      show('Reconnecting…', 'reconnecting');
      retryTimer = setTimeout(() => open(token), backoff(tries++));
    },
  };
  current = session.kind === 'vnc'
    ? connectVnc(token, session.read_only, events, reconnecting)
    : connectGuacamole(token, $('transport').value, session.read_only, events, reconnecting);
}

async function connect() {
  const token = $('token').value.trim();
  if (!token) return;
  clearTimeout(retryTimer);
  current?.disconnect();
  current = null;
  tries = 0;
  lostAt = null;
  previousTunnel = null;
  $('reconnect').hidden = true;
  screen.replaceChildren();
  show('Looking up the session…');
  session = null;
  try {
    session = await lookUp(token);
  } catch (error) {
    ended(error.message, 'error');
    return;
  }
  open(token);
}

$('connect').addEventListener('submit', (event) => { event.preventDefault(); connect(); });
$('reconnect').addEventListener('click', connect);

const params = new URLSearchParams(location.search);
if (params.get('transport')) $('transport').value = params.get('transport');
if (params.get('token')) {
  $('token').value = params.get('token');
  connect();
}
