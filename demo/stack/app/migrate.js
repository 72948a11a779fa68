#!/usr/bin/env node
'use strict';
// The migrations: migrations/NNNN_name.sql or .js (lib/schema.js), applied in order, each recorded in
// schema_migrations.
//
//   node migrate.js up        apply the pending ones (npm run migrate)
//   node migrate.js status    list every migration as applied or pending; changes nothing
//
// MariaDB commits DDL at once, so a migration cannot be rolled back by a transaction: one that fails
// halfway leaves its first statements applied and is not recorded (restore the backup).
const fs = require('fs');
const db = require('./lib/db');
const redis = require('./lib/redis');
const schema = require('./lib/schema');

let client = null; // Redis, connected for the first JavaScript migration

async function apply(name) {
  const {kind, file} = schema.source(name);
  if (kind === '.sql') {
    await db.query(fs.readFileSync(file, 'utf8'));
    return;
  }
  if (client === null) {
    client = redis.connect();
    await client.ping(); // waits for the connection: a Redis that is away fails here, not inside the migration
  }
  await require(file).up({db, redis: client});
}

async function status() {
  const done = new Set(await schema.applied());
  for (const name of schema.available()) console.log(`${done.has(name) ? 'applied' : 'pending'} ${name}`);
}

async function up() {
  await db.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version VARCHAR(191) NOT NULL PRIMARY KEY,
    applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))`);
  const done = new Set(await schema.applied());
  const pending = schema.available().filter((name) => !done.has(name));
  for (const name of pending) {
    console.log(`applying ${name}`);
    await apply(name);
    await db.query('INSERT INTO schema_migrations (version) VALUES (?)', [name]);
  }
  console.log(pending.length ? `applied ${pending.length} migration(s)` : 'nothing to migrate');
}

const commands = {up, status};
const command = commands[process.argv[2]];
if (!command) {
  console.error('usage: node migrate.js up|status');
  process.exit(2);
}

async function close() {
  if (client !== null) await client.quit().catch(() => {});
  await db.end();
}

command().then(close, async (error) => {
  console.error(`migrate: ${error.message}`);
  await close();
  process.exitCode = 1;
});
