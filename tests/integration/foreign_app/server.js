// A small app deployctl was not written for: plain node:http, no npm dependencies.
// It reads its configuration from .env beside it (shared/.env, which the operator writes and
// deployctl links into every release) and refuses to start without it.
"use strict";
const fs = require("node:fs");
const http = require("node:http");
const path = require("node:path");

const envFile = path.join(__dirname, ".env");
try {
  process.loadEnvFile(envFile);
} catch (err) {
  console.error(`refusing to start: cannot read ${envFile}: ${err.message}`);
  process.exit(2);
}
for (const key of ["DATABASE_URL", "APP_PORT"]) {
  if (!process.env[key]) {
    console.error(`refusing to start: ${key} is not set in ${envFile}`);
    process.exit(2);
  }
}
const version = fs.readFileSync(path.join(__dirname, "VERSION"), "utf8").trim();
const port = Number(process.env.APP_PORT);

const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    if (fs.existsSync(path.join(__dirname, "HEALTH_BROKEN"))) {
      res.writeHead(500, { "content-type": "application/json" });
      res.end(JSON.stringify({ status: "broken", version }));
      return;
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ status: "ok", version, channel: process.env.RELEASE_CHANNEL || null }));
    return;
  }
  if (req.url === "/config") {
    // which keys the app sees, never their values
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ keys: Object.keys(process.env).filter((k) => /^[A-Z][A-Z0-9_]*$/.test(k)).sort() }));
    return;
  }
  res.writeHead(404);
  res.end("not found\n");
});
server.listen(port, "127.0.0.1", () => console.log(`foreign app ${version} (pid ${process.pid}) listening on 127.0.0.1:${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
