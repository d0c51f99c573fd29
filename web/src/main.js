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

function show(text, state = 'info') {
  $('status').textContent = text;
  $('status').dataset.state = state;
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

function connectVnc(token, readOnly) {
  // Our own socket, so the close code and reason can be told to the person (noVNC only says "unclean").
  const socket = new WebSocket(wsUrl(`websockify?token=${encodeURIComponent(token)}`), ['binary']);
  let closed = null;
  socket.addEventListener('close', (event) => { closed = event; });
  const rfb = new RFB(screen, socket, { shared: true });
  rfb.scaleViewport = true;
  rfb.viewOnly = readOnly;
  rfb.addEventListener('connect', () => show(readOnly ? 'Connected (VNC, view only).' : 'Connected (VNC).', 'open'));
  rfb.addEventListener('securityfailure', (event) => ended(`Security failure: ${event.detail.reason}`, 'error'));
  rfb.addEventListener('disconnect', () => {
    if (closed && closed.code !== 1000) ended(meaning(closed.code, closed.reason || 'Connection lost.'), 'error');
    else ended('Disconnected.', 'info');
  });
  show('Connecting to the desktop…');
  return { disconnect: () => rfb.disconnect() };
}

function connectGuacamole(token, transport, readOnly) {
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

  let failed = false;
  const states = ['Idle.', 'Connecting…', 'Waiting for the desktop…', 'Connected.', 'Disconnecting…', 'Disconnected.'];
  client.onstatechange = (state) => {
    if (state === 3) show(`Connected (Guacamole, ${transport}${readOnly ? ', view only' : ''}).`, 'open');
    else if (state === 5) { if (!failed) ended('Disconnected.', 'info'); }
    else show(states[state] ?? `State ${state}.`);
  };
  client.onerror = (status) => {
    failed = true;
    ended(meaning(status.code, status.message), 'error');
  };

  const mouse = new Guacamole.Mouse(display);
  const sendMouse = (state) => client.sendMouseState(state.state ?? state, true);
  if (mouse.onEach) mouse.onEach(['mousedown', 'mouseup', 'mousemove'], sendMouse);
  else mouse.onmousedown = mouse.onmouseup = mouse.onmousemove = sendMouse;
  const keyboard = new Guacamole.Keyboard(screen);
  keyboard.onkeydown = (keysym) => { client.sendKeyEvent(1, keysym); return false; };
  keyboard.onkeyup = (keysym) => client.sendKeyEvent(0, keysym);
  screen.focus();

  client.connect(data.toString());
  return {
    disconnect: () => {
      keyboard.onkeydown = keyboard.onkeyup = null;
      client.disconnect();
    },
  };
}

async function connect() {
  const token = $('token').value.trim();
  if (!token) return;
  current?.disconnect();
  current = null;
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
  current = session.kind === 'vnc'
    ? connectVnc(token, session.read_only)
    : connectGuacamole(token, $('transport').value, session.read_only);
}

$('connect').addEventListener('submit', (event) => { event.preventDefault(); connect(); });
$('reconnect').addEventListener('click', connect);

const params = new URLSearchParams(location.search);
if (params.get('transport')) $('transport').value = params.get('transport');
if (params.get('token')) {
  $('token').value = params.get('token');
  connect();
}
