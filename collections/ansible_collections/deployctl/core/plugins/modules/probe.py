#!/usr/bin/python
# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Post-deploy verification checks run on the host, one structured result per check (deployctl.core.probe)."""
# Ansible requires the documentation variables before the imports.
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
---
module: probe
short_description: Run deployctl's post-deploy verification checks on a host
version_added: "0.1.0"
description:
  - Runs a list of checks on the host and returns one structured result per check
    (C(host), C(check), C(type), C(status) V(pass) or V(fail), C(value), C(threshold), C(message)).
  - "Types: V(http) (status, body regex, latency limit, HTTPS required), V(tcp) (port open), V(command)
    (exit code), V(mysql)/V(mariadb) and V(postgresql)/V(postgres) (C(SELECT 1) through the command line
    client), V(redis) (C(PING), optional C(AUTH)), V(tls_cert) (certificate valid and more than O(checks[].min_days)
    days from expiry), V(telegram) (the bot's C(getMe) answers, its webhook is O(checks[].webhook_url), fewer
    updates waiting than O(checks[].threshold), no delivery error within O(checks[].error_window) seconds; while
    O(maintenance_flag) exists a webhook deleted for maintenance passes), V(disk), V(memory) and V(load) (usage
    below a threshold in percent), V(latency)
    (p50/p95 over a burst of requests) and V(error_rate) (share of failed requests over a burst)."
  - Connection checks (http, tcp, command, mysql, postgresql, redis, tls_cert) are attempted up to
    O(retries) times, O(delay) seconds apart, so an app that is still starting gets time to come up.
    Measurements (disk, memory, load, latency, error_rate) are taken once unless the check sets C(retries).
  - The checks run concurrently; the results keep the order of O(checks).
  - The module fails when any check fails, with a message naming the failed checks; the results are returned
    either way.
  - Standard library only, plus the C(mariadb)/C(mysql) and C(psql) clients for the database checks.
    Database passwords are passed in the client's environment (E(MYSQL_PWD), E(PGPASSWORD)), never on its
    command line, and never returned.
author:
  - deployctl maintainers (@deployctl)
options:
  checks:
    description: The checks to run.
    type: list
    elements: dict
    required: true
    suboptions:
      name: {description: "Name of the check (reported as C(check)).", type: str, required: true}
      type:
        description: Kind of check.
        type: str
        required: true
        choices: [http, tcp, command, mysql, mariadb, postgresql, postgres, redis, tls_cert, telegram, disk, memory,
                  load, latency, error_rate]
      url: {description: "URL for V(http), V(latency) and V(error_rate).", type: str}
      method: {description: "HTTP method.", type: str, default: GET}
      headers: {description: "HTTP request headers.", type: dict}
      status:
        description:
          - Expected HTTP status codes (V(http), V(latency); default 200).
          - For V(error_rate) the statuses that count as success (default every status below 500).
        type: list
        elements: int
      body: {description: "Regular expression the HTTP response body must match (V(http)).", type: str}
      latency_ms: {description: "Longest acceptable response time in milliseconds (V(http)).", type: float}
      tls: {description: "Require HTTPS (V(http), V(latency), V(error_rate)); an C(http://) URL fails.", type: bool, default: false}
      validate_certs: {description: "Verify TLS certificates (https URLs and V(tls_cert)).", type: bool, default: true}
      ca_path: {description: "CA bundle to verify TLS certificates with (default the system's).", type: path}
      follow_redirects: {description: "Follow HTTP redirects.", type: bool, default: true}
      use_proxy: {description: "Use the proxy from the environment for HTTP requests.", type: bool, default: true}
      host: {description: "Address for V(tcp), V(mysql), V(postgresql), V(redis) and V(tls_cert).", type: str, default: 127.0.0.1}
      port:
        description: Port (V(tcp) requires it; defaults 3306 mysql, 5432 postgresql, 6379 redis, 443 tls_cert).
        type: int
      server_name: {description: "Name the certificate must be valid for, sent as SNI (V(tls_cert); default O(checks[].host)).", type: str}
      min_days: {description: "Days the certificate must still be valid for, at least (V(tls_cert)).", type: float, default: 14}
      command:
        description: Command for V(command), a string (split like a shell would, but run without one) or a list.
        type: raw
      chdir: {description: "Working directory of the V(command).", type: path}
      rc: {description: "Expected exit code of the V(command).", type: int, default: 0}
      stdout: {description: "Regular expression the V(command)'s output must match.", type: str}
      user: {description: "Database user (V(mysql), V(postgresql)) or ACL user (V(redis)).", type: str}
      password: {description: "Password (V(mysql), V(postgresql), V(redis)).", type: str}
      database: {description: "Database to connect to (V(mysql), V(postgresql)).", type: str}
      path: {description: "Filesystem to measure (V(disk)).", type: path, default: /}
      threshold:
        description:
          - Limit in percent the value must stay below. Defaults disk 85, memory 80, load 70 (1-minute load
            average per CPU), error_rate 1.
          - For V(telegram), the pending updates the webhook may have, at most one less (default 100).
        type: float
      token: {description: "The bot's token (V(telegram)).", type: str}
      api_url: {description: "Base URL of the Bot API (V(telegram)).", type: str, default: "https://api.telegram.org"}
      webhook_url:
        description: The webhook the bot must have (V(telegram)); empty for a polling bot, which must have none.
        type: str
        default: ""
      error_window:
        description: Seconds within which a webhook delivery error reported by Telegram fails the check (V(telegram)).
        type: float
        default: 600
      requests: {description: "Requests in the burst (V(latency), V(error_rate)).", type: int, default: 20}
      concurrency: {description: "Requests in flight at a time during a burst.", type: int, default: 1}
      p50_ms: {description: "Median latency limit in milliseconds (V(latency)).", type: float, default: 500}
      p95_ms: {description: "95th percentile latency limit in milliseconds (V(latency)).", type: float, default: 1000}
      retries: {description: "Attempts for this check (default O(retries) for connection checks, 1 for measurements).", type: int}
      delay: {description: "Seconds between attempts (default O(delay)).", type: float}
      timeout: {description: "Seconds one attempt may take (default O(timeout); 60 for V(command)).", type: float}
  retries: {description: "Attempts before a connection check fails.", type: int, default: 1}
  delay: {description: "Seconds between attempts.", type: float, default: 2}
  timeout: {description: "Seconds one network attempt may take.", type: float, default: 5}
  hostname: {description: "Host name reported in every result (the role passes C(inventory_hostname)).", type: str}
  validate_only:
    description: Check the checks' configuration (types, options, regular expressions) and run none of them.
    type: bool
    default: false
  maintenance_flag:
    description: The maintenance flag file; while it exists, a V(telegram) check accepts a webhook deleted for maintenance.
    type: path
notes:
  - Supports check mode (the checks only read).
"""

EXAMPLES = r"""
- name: Verify the app
  deployctl.core.probe:
    hostname: "{{ inventory_hostname }}"
    retries: 5
    delay: 1
    checks:
      - {name: health, type: http, url: "http://127.0.0.1:8080/health", status: 200, body: '"status": ?"ok"'}
      - {name: db, type: mariadb, host: 127.0.0.1, user: app, password: "{{ vault_db_password }}", database: app}
      - {name: cache, type: redis, port: 6379}
      - {name: certificate, type: tls_cert, host: 127.0.0.1, port: 443, server_name: shop.example.com, min_days: 14}
      - {name: disk, type: disk, path: /srv, threshold: 85}
      - {name: p95, type: latency, url: "http://127.0.0.1:8080/", requests: 20, p95_ms: 300}
"""

RETURN = r"""
checks:
  description: One result per check, in the order of O(checks).
  type: list
  elements: dict
  returned: always
  contains:
    host: {description: O(hostname)., type: str}
    check: {description: Name of the check., type: str}
    type: {description: Kind of check., type: str}
    status: {description: V(pass) or V(fail)., type: str}
    value:
      description:
        - What was measured. http {status, latency_ms}; tcp V(open)/V(closed); command the exit code;
          mysql/postgresql the query's output; redis the PING reply; tls_cert days left; telegram {bot, webhook,
          pending_update_count}; disk/memory/load and
          error_rate a percentage; latency {p50_ms, p95_ms}.
      type: raw
    threshold: {description: What the value was compared against., type: raw}
    message: {description: One line for humans., type: str}
    attempts: {description: Attempts made., type: int}
    seconds: {description: "Time the check took, all attempts included.", type: float}
  sample:
    - {host: web1, check: health, type: http, status: pass, value: {status: 200, latency_ms: 3.2},
       threshold: {status: [200], body: null, latency_ms: null}, message: HTTP 200 in 3 ms, attempts: 1, seconds: 0.0}
failed_checks: {description: Names of the checks that failed., type: list, elements: str, returned: always}
"""

import socket

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deployctl.core.plugins.module_utils.health_checks import (
    PROBE_OPTIONS,
    invalid_checks,
    run_checks,
)


def main():
    module = AnsibleModule(argument_spec=PROBE_OPTIONS, supports_check_mode=True)
    params = module.params
    hostname = params["hostname"] or socket.gethostname()
    params["checks"] = checks = [dict(check) for check in params["checks"]]
    problems = invalid_checks(params)
    if problems:
        module.fail_json(msg="; ".join(problems), checks=[], failed_checks=[], invalid=True)
    if params["validate_only"]:
        module.exit_json(changed=False, checks=[], failed_checks=[], msg=f"{len(checks)} checks are valid")
    results = run_checks(checks, hostname)
    failed = [result for result in results if result["status"] != "pass"]
    names = [result["check"] for result in failed]
    if failed:
        details = "; ".join(f"{result['check']}: {result['message']}" for result in failed)
        module.fail_json(msg=f"{len(failed)} of {len(results)} checks failed: {details}",
                         checks=results, failed_checks=names)
    module.exit_json(changed=False, checks=results, failed_checks=names,
                     msg=f"all {len(results)} checks passed")


if __name__ == "__main__":
    main()
