#!/usr/bin/env node
'use strict';
// The Telegram bot: answers /start, /help and /status through the Bot API's sendMessage, and records every
// update it answered. It takes the updates the webhook queued in Redis (TELEGRAM_MODE=webhook, the app
// serves the webhook), or polls getUpdates itself (TELEGRAM_MODE=polling; no webhook may be set then).
const config = require('./lib/config');
const db = require('./lib/db');
const {connect, BOT_UPDATES} = require('./lib/redis');

const redis = connect();
let stopping = false;

async function api(method, params) {
  const response = await fetch(`${config.telegram.apiUrl}/bot${config.telegram.token()}/${method}`, {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(params),
  });
  const answer = await response.json();
  // the token is part of the URL: errors name the method only
  if (!answer.ok) throw new Error(`${method}: ${answer.error_code} ${answer.description}`);
  return answer.result;
}

function reply(command) {
  switch (command) {
    case '/start': return `Hello! This is the deployctl seed stack, version ${config.version}.`;
    case '/help': return 'Commands: /start, /help, /status';
    case '/status': return `Running version ${config.version}.`;
    default: return 'Unknown command; /help lists them.';
  }
}

async function answer(update) {
  const message = update.message;
  if (!message || typeof message.text !== 'string') return;
  const command = message.text.trim().split(/\s+/)[0].replace(/@.*$/, '');
  // recorded first: an update whose answer fails is tried again, and recorded once
  await db.query('INSERT INTO bot_updates (update_id, chat_id, command, answered_by) VALUES (?, ?, ?, ?) ' +
    'ON DUPLICATE KEY UPDATE answered_by = VALUES(answered_by)',
  [update.update_id, message.chat.id, command.slice(0, 64), config.version]);
  await api('sendMessage', {chat_id: message.chat.id, text: reply(command)});
}

async function fromWebhook() {
  const item = await redis.brPop(BOT_UPDATES, 1);
  if (!item) return;
  try {
    await answer(JSON.parse(item.element));
  } catch (error) {
    await redis.rPush(BOT_UPDATES, item.element); // tried again, not lost
    throw error;
  }
}

let offset = 0;
async function byPolling() {
  for (const update of await api('getUpdates', {offset, timeout: 1, allowed_updates: ['message']})) {
    await answer(update);
    offset = update.update_id + 1;
  }
}

async function main() {
  console.log(`bot ${config.version} (${config.telegram.mode})`);
  const next = config.telegram.mode === 'polling' ? byPolling : fromWebhook;
  while (!stopping) {
    try {
      await next();
    } catch (error) {
      console.error(`bot: ${error.message}`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  await Promise.all([db.end(), redis.quit().catch(() => {})]);
}

process.on('SIGTERM', () => { stopping = true; });
main().then(() => process.exit(0), (error) => { console.error(error); process.exit(1); });
