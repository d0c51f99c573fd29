// guacamole-lite, as its README runs it, in front of a guacd, for the benchmark.
//   node guacamole-lite.js <websocket port> <guacd host:port>
// Prints `ready <token>` once listening: the encrypted token of a VNC connection, for `?token=`.
const GuacamoleLite = require('guacamole-lite');
const crypto = require('crypto');

const [port, guacd] = process.argv.slice(2);
const [host, guacdPort] = guacd.split(':');
const key = crypto.randomBytes(16).toString('hex'); // 32 characters: an AES-256 key
const server = new GuacamoleLite(
    {port: Number(port), host: '127.0.0.1'},
    {host, port: Number(guacdPort)},
    {crypt: {cypher: 'AES-256-CBC', key}, log: {level: process.env.GL_LOG || 'ERRORS'}},
);

const iv = crypto.randomBytes(16);
const cipher = crypto.createCipheriv('AES-256-CBC', key, iv);
const settings = {connection: {type: 'vnc', settings: {hostname: 'desk-1', port: '5900'}}};
const value = Buffer.concat([cipher.update(JSON.stringify(settings), 'utf8'), cipher.final()]);
const token = Buffer.from(JSON.stringify({iv: iv.toString('base64'), value: value.toString('base64')}))
    .toString('base64');
server.webSocketServer.on('listening', () => console.log('ready ' + encodeURIComponent(token)));
