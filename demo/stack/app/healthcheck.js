#!/usr/bin/env node
'use strict';
// The container's healthcheck (Docker runs it in the container): exit 0 when /health answers 200.
const http = require('http');

const request = http.get({host: '127.0.0.1', port: Number(process.env.APP_PORT || 3000), path: '/health', timeout: 3000},
  (response) => process.exit(response.statusCode === 200 ? 0 : 1));
request.on('timeout', () => request.destroy());
request.on('error', () => process.exit(1));
