'use strict';
// The migrations this build carries, and which of them the database has applied.
const fs = require('fs');
const config = require('./config');
const db = require('./db');

function available() {
  return fs.readdirSync(config.migrationsDir).filter((name) => name.endsWith('.sql')).sort()
    .map((name) => name.slice(0, -'.sql'.length));
}

function has(migration) {
  return available().includes(migration);
}

async function applied() {
  const rows = await db.query(
    "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'schema_migrations'");
  if (rows[0].n === 0) return [];
  return (await db.query('SELECT version FROM schema_migrations ORDER BY version')).map((row) => row.version);
}

module.exports = {available, has, applied};
