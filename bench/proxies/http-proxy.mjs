// Comparison point: what a Node developer would write with node-http-proxy, a keep-alive agent
// and a static bearer header. Env: PORT, TARGET (http://host:port), AUTHORIZATION.
import { Agent, createServer } from 'node:http';
import process from 'node:process';
import httpProxy from 'http-proxy';

const agent = new Agent({ keepAlive: true }); // without an agent http-proxy sends `Connection: close`
const proxy = httpProxy.createProxyServer({
  target: process.env.TARGET,
  agent,
  headers: { authorization: process.env.AUTHORIZATION },
});
proxy.on('error', (_err, _req, res) => {
  if (!res.headersSent) res.writeHead(502);
  res.end();
});
const server = createServer((req, res) => proxy.web(req, res));
server.keepAliveTimeout = 120_000;
server.listen(Number(process.env.PORT), '127.0.0.1');
