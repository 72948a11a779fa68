'use strict';
// Redis through Debian's node-redis. A client with no offline queue fails at once while Redis is away
// (the health check says so) instead of waiting for it; blocking pops need a client of their own.
const {createClient} = require('redis');
const config = require('./config');

function connect({offlineQueue = true} = {}) {
  const client = createClient({url: config.redisUrl, disableOfflineQueue: !offlineQueue});
  client.on('error', () => {}); // it reconnects by itself; callers see the failed commands
  client.connect().catch(() => {});
  return client;
}

module.exports = {connect, JOBS: 'jobs', BOT_UPDATES: 'bot:updates'};
