'use strict';
// The app's settings: environment variables, and secrets read from the files compose mounts under
// /run/secrets (NAME_FILE), so that no password is in the environment `docker inspect` shows.
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');

function secret(name) {
  const file = process.env[`${name}_FILE`];
  return file ? fs.readFileSync(file, 'utf8').trim() : (process.env[name] || '');
}

module.exports = {
  version: fs.readFileSync(path.join(root, 'VERSION'), 'utf8').trim(),
  // a build made to fail its health check (UNHEALTHY=yes at build time)
  healthy: !fs.existsSync(path.join(root, 'UNHEALTHY')),
  migrationsDir: path.join(root, 'migrations'),
  port: Number(process.env.APP_PORT || 3000),
  database: {
    host: process.env.DB_HOST || '127.0.0.1',
    port: Number(process.env.DB_PORT || 3306),
    database: process.env.DB_NAME || 'app',
    user: process.env.DB_USER || 'app',
    password: secret('DB_PASSWORD'),
  },
  redisUrl: process.env.REDIS_URL || 'redis://127.0.0.1:6379',
  telegram: {
    mode: process.env.TELEGRAM_MODE || 'webhook',
    apiUrl: (process.env.TELEGRAM_API_URL || 'https://api.telegram.org').replace(/\/+$/, ''),
    webhookPath: process.env.TELEGRAM_WEBHOOK_PATH || '/telegram/webhook',
    token: () => secret('TELEGRAM_TOKEN'),
    webhookSecret: () => secret('TELEGRAM_WEBHOOK_SECRET'),
  },
};
