#!/usr/bin/env node
'use strict';
// The app: HTTP on APP_PORT.
//
//   GET  /health            200 when the database and Redis answer (JSON: version, database, redis, schema), else 503
//   GET  /version           the version, as text
//   POST /jobs              queue {"input": "..."} for the worker; 202 with the job's id
//   POST /telegram/webhook  the Telegram bot's webhook: checks the secret token header, queues the update for the bot
const crypto = require('crypto');
const http = require('http');
const config = require('./lib/config');
const db = require('./lib/db');
const {connect, JOBS, BOT_UPDATES} = require('./lib/redis');

const redis = connect({offlineQueue: false});

function within(promise, ms) {
  return Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error('timed out')), ms))]);
}

async function health() {
  const report = {status: 'ok', version: config.version};
  try {
    const rows = await within(db.query('SELECT MAX(version) AS version FROM schema_migrations'), 2000);
    report.database = 'ok';
    report.schema = rows[0].version;
  } catch (error) {
    report.database = error.code || error.message;
  }
  try {
    await within(redis.ping(), 2000);
    report.redis = 'ok';
  } catch (error) {
    report.redis = error.message;
  }
  if (report.database !== 'ok' || report.redis !== 'ok') report.status = 'failing';
  if (!config.healthy) {
    report.status = 'failing';
    report.reason = 'this build is deliberately unhealthy';
  }
  return report;
}

function sameSecret(given, expected) {
  const a = Buffer.from(given || '');
  const b = Buffer.from(expected);
  return b.length > 0 && a.length === b.length && crypto.timingSafeEqual(a, b);
}

function readBody(request) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    request.on('data', (chunk) => {
      size += chunk.length;
      if (size > 1 << 20) reject(new Error('body too large'));
      else chunks.push(chunk);
    });
    request.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    request.on('error', reject);
  });
}

async function route(request) {
  const path = new URL(request.url, 'http://app').pathname;
  if (request.method === 'GET' && path === '/health') {
    const report = await health();
    return [report.status === 'ok' ? 200 : 503, report];
  }
  if (request.method === 'GET' && path === '/version') return [200, `${config.version}\n`];
  if (request.method === 'GET' && path === '/') return [200, `deployctl seed stack ${config.version}\n`];
  if (request.method === 'POST' && path === '/jobs') {
    const job = {id: crypto.randomUUID(), input: String(JSON.parse(await readBody(request)).input)};
    await redis.lPush(JOBS, JSON.stringify(job));
    return [202, {id: job.id}];
  }
  if (request.method === 'POST' && path === config.telegram.webhookPath) {
    // Telegram sends the secret_token given to setWebhook in this header: anything else is not Telegram
    if (!sameSecret(request.headers['x-telegram-bot-api-secret-token'], config.telegram.webhookSecret())) {
      return [401, {ok: false}];
    }
    const update = JSON.parse(await readBody(request));
    await redis.lPush(BOT_UPDATES, JSON.stringify(update));
    return [200, {}];
  }
  return [404, {error: 'not found'}];
}

const server = http.createServer((request, response) => {
  route(request).then(([status, body]) => {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    response.writeHead(status, {'Content-Type': typeof body === 'string' ? 'text/plain' : 'application/json'});
    response.end(text);
  }, (error) => {
    response.writeHead(error instanceof SyntaxError ? 400 : 500, {'Content-Type': 'application/json'});
    response.end(JSON.stringify({error: error.message}));
  });
});

server.listen(config.port, '127.0.0.1', () => console.log(`app ${config.version} listening on 127.0.0.1:${config.port}`));

// compose stop: finish the requests in flight, then exit
process.on('SIGTERM', () => server.close(() => Promise.all([db.end(), redis.quit().catch(() => {})]).then(() => process.exit(0))));
