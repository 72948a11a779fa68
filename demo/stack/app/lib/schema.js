'use strict';
// The migrations this build carries, and which of them the database has applied. A migration is SQL
// (NNNN_name.sql) or JavaScript (NNNN_name.js, exporting `async up({db, redis})`) for data outside the
// schema, Redis's included.
const fs = require('fs');
const path = require('path');
const config = require('./config');
const db = require('./db');

const KINDS = ['.sql', '.js'];

function available() {
  return fs.readdirSync(config.migrationsDir).filter((name) => KINDS.includes(path.extname(name)))
    .map((name) => path.basename(name, path.extname(name))).sort();
}

// where migration `name` is: {kind: '.sql' or '.js', file}
function source(name) {
  for (const kind of KINDS) {
    const file = path.join(config.migrationsDir, `${name}${kind}`);
    if (fs.existsSync(file)) return {kind, file};
  }
  throw new Error(`no migration ${name}`);
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

module.exports = {available, source, has, applied};
