'use strict';
// MariaDB through Debian's node-mysql: one small pool, queries as promises.
const mysql = require('mysql');
const config = require('./config');

const pool = mysql.createPool({...config.database, connectionLimit: 4, multipleStatements: true});

function query(sql, params = []) {
  return new Promise((resolve, reject) => {
    pool.query(sql, params, (error, rows) => (error ? reject(error) : resolve(rows)));
  });
}

function end() {
  return new Promise((resolve) => pool.end(() => resolve()));
}

module.exports = {query, end};
