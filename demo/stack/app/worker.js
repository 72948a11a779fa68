#!/usr/bin/env node
'use strict';
// The background worker: takes jobs from the Redis list `jobs` and writes their results to the database,
// with the version of the worker that did it.
const config = require('./lib/config');
const db = require('./lib/db');
const schema = require('./lib/schema');
const {connect, JOBS} = require('./lib/redis');

const redis = connect();
// from v2 on (migration 0003) the results say how long the job took
const recordsDuration = schema.has('0003_job_results_duration');
let stopping = false;

async function work(job) {
  const started = Date.now();
  const result = [...job.input].reverse().join('');
  if (recordsDuration) {
    await db.query('INSERT INTO job_results (job_id, result, worker_version, duration_ms) VALUES (?, ?, ?, ?)',
      [job.id, result, config.version, Date.now() - started]);
  } else {
    await db.query('INSERT INTO job_results (job_id, result, worker_version) VALUES (?, ?, ?)',
      [job.id, result, config.version]);
  }
}

async function main() {
  console.log(`worker ${config.version} waiting for jobs`);
  while (!stopping) {
    let item = null;
    try {
      item = await redis.brPop(JOBS, 1);
    } catch (error) {
      console.error(`worker: redis: ${error.message}`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
      continue;
    }
    if (!item) continue;
    const job = JSON.parse(item.element);
    try {
      await work(job);
    } catch (error) {
      // back on the queue: a job is never lost because the database was away
      console.error(`worker: job ${job.id}: ${error.message}`);
      await redis.rPush(JOBS, item.element);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  await Promise.all([db.end(), redis.quit().catch(() => {})]);
}

process.on('SIGTERM', () => { stopping = true; });
main().then(() => process.exit(0), (error) => { console.error(error); process.exit(1); });
