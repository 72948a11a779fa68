# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""The health checks of deployctl.core.probe: HTTP, TCP, command, MySQL, PostgreSQL, Redis, TLS certificate,
a Telegram bot, disk, memory, load, latency percentiles and error rate, each with one structured result.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import datetime
import math
import os
import re
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.deployctl.core.plugins.module_utils import processes, telegram

UTC = datetime.timezone.utc  # noqa: UP017 (datetime.UTC needs Python 3.11; hosts may run older ones)
MEASUREMENTS = {"disk", "memory", "load", "latency", "error_rate"}
DEFAULT_PORTS = {"mysql": 3306, "postgresql": 5432, "redis": 6379, "tls_cert": 443}
DEFAULT_THRESHOLDS = {"disk": 85.0, "memory": 80.0, "load": 70.0, "error_rate": 1.0, "telegram": 100}
ALIASES = {"mariadb": "mysql", "postgres": "postgresql"}
BODY_LIMIT = 1024 * 1024
CHECK_OPTIONS = {
    "name": {"type": "str", "required": True},
    "type": {"type": "str", "required": True,
             "choices": ["http", "tcp", "command", "mysql", "mariadb", "postgresql", "postgres", "redis",
                         "tls_cert", "telegram", "disk", "memory", "load", "latency", "error_rate"]},
    "url": {"type": "str"},
    "method": {"type": "str", "default": "GET"},
    "headers": {"type": "dict"},
    "status": {"type": "list", "elements": "int"},
    "body": {"type": "str"},
    "latency_ms": {"type": "float"},
    "tls": {"type": "bool", "default": False},
    "validate_certs": {"type": "bool", "default": True},
    "ca_path": {"type": "path"},
    "follow_redirects": {"type": "bool", "default": True},
    "use_proxy": {"type": "bool", "default": True},
    "host": {"type": "str", "default": "127.0.0.1"},
    "port": {"type": "int"},
    "server_name": {"type": "str"},
    "min_days": {"type": "float", "default": 14},
    "command": {"type": "raw"},
    "chdir": {"type": "path"},
    "rc": {"type": "int", "default": 0},
    "stdout": {"type": "str"},
    "user": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "database": {"type": "str"},
    "path": {"type": "path", "default": "/"},
    "threshold": {"type": "float"},
    "requests": {"type": "int", "default": 20},
    "concurrency": {"type": "int", "default": 1},
    "p50_ms": {"type": "float", "default": 500},
    "p95_ms": {"type": "float", "default": 1000},
    "token": {"type": "str", "no_log": True},
    "api_url": {"type": "str", "default": telegram.DEFAULT_API_URL},
    "webhook_url": {"type": "str", "default": ""},
    "error_window": {"type": "float", "default": 600},
    "retries": {"type": "int"},
    "delay": {"type": "float"},
    "timeout": {"type": "float"},
}
PROBE_OPTIONS = {
    "checks": {"type": "list", "elements": "dict", "required": True, "options": CHECK_OPTIONS},
    "retries": {"type": "int", "default": 1},
    "delay": {"type": "float", "default": 2},
    "timeout": {"type": "float", "default": 5},
    "hostname": {"type": "str"},
    "validate_only": {"type": "bool", "default": False},
    "maintenance_flag": {"type": "path"},
}


class Outcome:
    """The result of one attempt: passed or not, what was measured, against what, and why."""

    def __init__(self, passed, value, threshold, message):
        self.passed, self.value, self.threshold, self.message = passed, value, threshold, message


def _one_line(text, limit=300):
    return " ".join(str(text).split())[:limit]


def _round(number, digits=1):
    return None if number is None else round(float(number), digits)


# --------------------------------------------------------------------------- HTTP


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _tls_context(check):
    if not check["validate_certs"]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=check["ca_path"])


def _opener(check):
    handlers = [urllib.request.HTTPSHandler(context=_tls_context(check))]
    if not check["follow_redirects"]:
        handlers.append(_NoRedirect())
    if not check["use_proxy"]:
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def _request(opener, check, timeout):
    """One request: (status or None, body text, milliseconds, error or None)."""
    request = urllib.request.Request(check["url"], method=check["method"].upper(),
                                     headers=dict(check["headers"] or {}))
    started = time.monotonic()
    try:
        with opener.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read(BODY_LIMIT)
    except urllib.error.HTTPError as exc:
        status = exc.code
        try:
            raw = exc.read(BODY_LIMIT)
        except Exception:
            raw = b""
        finally:
            exc.close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, "", (time.monotonic() - started) * 1000, _one_line(reason) or exc.__class__.__name__
    except Exception as exc:  # http.client protocol errors and the like
        return None, "", (time.monotonic() - started) * 1000, _one_line(f"{exc.__class__.__name__}: {exc}")
    return status, raw.decode("utf-8", "replace"), (time.monotonic() - started) * 1000, None


def _https_problem(check):
    if check["tls"] and not check["url"].lower().startswith("https://"):
        return f"TLS is required but {check['url']} is not https"
    return None


def check_http(check, timeout):
    expected = check["status"] or [200]
    threshold = {"status": expected, "body": check["body"], "latency_ms": check["latency_ms"]}
    problem = _https_problem(check)
    if problem:
        return Outcome(False, {"status": None, "latency_ms": None}, threshold, problem)
    status, body, millis, error = _request(_opener(check), check, timeout)
    value = {"status": status, "latency_ms": _round(millis)}
    if error:
        return Outcome(False, value, threshold, f"{check['url']}: {error}")
    if status not in expected:
        return Outcome(False, value, threshold,
                       f"HTTP {status} from {check['url']} (expected {', '.join(map(str, expected))})")
    if check["body"] and not re.search(check["body"], body):
        return Outcome(False, value, threshold, f"the body of {check['url']} does not match {check['body']!r}")
    if check["latency_ms"] is not None and millis > check["latency_ms"]:
        return Outcome(False, value, threshold,
                       f"{check['url']} took {millis:.0f} ms (limit {check['latency_ms']:.0f} ms)")
    return Outcome(True, value, threshold, f"HTTP {status} in {millis:.0f} ms")


def _burst(check, timeout):
    """The burst's requests: a list of (status, milliseconds, error)."""
    opener = _opener(check)

    def one(_index):
        status, _body, millis, error = _request(opener, check, timeout)
        return status, millis, error

    count = max(1, check["requests"])
    workers = max(1, min(check["concurrency"], count))
    if workers == 1:
        return [one(i) for i in range(count)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(count)))


def _percentile(values, percent):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def check_latency(check, timeout):
    threshold = {"p50_ms": check["p50_ms"], "p95_ms": check["p95_ms"]}
    problem = _https_problem(check)
    if problem:
        return Outcome(False, None, threshold, problem)
    expected = check["status"] or [200]
    results = _burst(check, timeout)
    millis = [ms for _status, ms, _error in results]
    value = {"p50_ms": _round(_percentile(millis, 50)), "p95_ms": _round(_percentile(millis, 95))}
    bad = [(s, e) for s, _ms, e in results if e or s not in expected]
    summary = f"p50 {value['p50_ms']:.0f} ms, p95 {value['p95_ms']:.0f} ms over {len(results)} requests"
    if bad:
        status, error = bad[0]
        return Outcome(False, value, threshold, f"{len(bad)} of {len(results)} requests to {check['url']} failed "
                                                f"({error or f'HTTP {status}'}); {summary}")
    slow = [f"{name[:3]} {value[name]:.0f} ms > {limit:.0f} ms" for name, limit in threshold.items()
            if value[name] > limit]
    if slow:
        return Outcome(False, value, threshold, f"{check['url']}: {', '.join(slow)}; {summary}")
    return Outcome(True, value, threshold, summary)


def check_error_rate(check, timeout):
    limit = check["threshold"]
    problem = _https_problem(check)
    if problem:
        return Outcome(False, None, limit, problem)
    results = _burst(check, timeout)
    if check["status"]:
        errors = [(s, e) for s, _ms, e in results if e or s not in check["status"]]
    else:
        errors = [(s, e) for s, _ms, e in results if e or s >= 500]
    rate = 100.0 * len(errors) / len(results)
    summary = f"{len(errors)} of {len(results)} requests to {check['url']} failed ({rate:.1f} %, limit {limit:g} %)"
    if rate >= limit:
        status, error = errors[0]
        return Outcome(False, _round(rate, 2), limit, f"{summary}: {error or f'HTTP {status}'}")
    return Outcome(True, _round(rate, 2), limit, summary)


# --------------------------------------------------------------------------- services


def check_tcp(check, timeout):
    address = f"{check['host']}:{check['port']}"
    try:
        with socket.create_connection((check["host"], check["port"]), timeout=timeout):
            pass
    except OSError as exc:
        return Outcome(False, "closed", "open", f"{address}: {_one_line(exc.strerror or exc)}")
    return Outcome(True, "open", "open", f"{address} is open")


def check_command(check, timeout):
    command = check["command"]
    argv = processes.argv_of(command)
    expected = check["rc"]
    if not argv:
        return Outcome(False, None, expected, "empty command")
    rc, out, err = processes.run_text(argv, timeout, cwd=check["chdir"])
    if rc is None:
        return Outcome(False, None, expected, err)
    if rc != expected:
        lines = (err.strip() or out.strip()).splitlines()
        tail = _one_line(lines[-1]) if lines else ""
        return Outcome(False, rc, expected, f"{argv[0]} exited {rc} (expected {expected}){': ' + tail if tail else ''}")
    if check["stdout"] and not re.search(check["stdout"], out):
        return Outcome(False, rc, expected, f"the output of {argv[0]} does not match {check['stdout']!r}")
    return Outcome(True, rc, expected, f"{argv[0]} exited {rc}")


def _client_env(drop, password_var=None, password=None):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["LC_ALL"] = "C"
    if password:
        env[password_var] = password
    return env


def _query_outcome(kind, address, rc, out, err):
    answer = out.strip()
    if rc is None:
        return Outcome(False, None, "1", f"{kind} {address}: {err}")
    if rc != 0 or answer != "1":
        lines = [line for line in err.strip().splitlines() if line.strip()]
        why = _one_line(lines[-1]) if lines else f"exit {rc}, output {answer!r}"
        return Outcome(False, answer or None, "1", f"{kind} {address}: {why}")
    return Outcome(True, answer, "1", f"{kind} {address} answered SELECT 1")


def check_mysql(check, timeout):
    client = shutil.which("mariadb") or shutil.which("mysql")
    address = f"{check['host']}:{check['port']}"
    if not client:
        return Outcome(False, None, "1", "neither the mariadb nor the mysql client is installed")
    argv = [client, "--batch", "--skip-column-names", f"--connect-timeout={max(1, math.ceil(timeout))}",
            "-h", check["host"], "-P", str(check["port"])]
    if check["user"]:
        argv += ["-u", check["user"]]
    if check["database"]:
        argv += ["-D", check["database"]]
    argv += ["-e", "SELECT 1"]
    env = _client_env({"MYSQL_PWD", "MYSQL_HOST", "MYSQL_TCP_PORT"}, "MYSQL_PWD", check["password"])
    return _query_outcome("MySQL", address, *processes.run_text(argv, timeout + 5, env=env))


def check_postgresql(check, timeout):
    client = shutil.which("psql")
    address = f"{check['host']}:{check['port']}"
    if not client:
        return Outcome(False, None, "1", "the psql client is not installed")
    argv = [client, "-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", check["host"],
            "-p", str(check["port"])]
    if check["user"]:
        argv += ["-U", check["user"]]
    argv += ["-d", check["database"] or "postgres", "-c", "SELECT 1"]
    env = _client_env({"PGPASSWORD", "PGHOST", "PGPORT", "PGSERVICE"}, "PGPASSWORD", check["password"])
    env["PGCONNECT_TIMEOUT"] = str(max(2, math.ceil(timeout)))
    return _query_outcome("PostgreSQL", address, *processes.run_text(argv, timeout + 5, env=env))


def _resp(*words):
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def check_redis(check, timeout):
    address = f"{check['host']}:{check['port']}"
    try:
        with socket.create_connection((check["host"], check["port"]), timeout=timeout) as sock, \
                sock.makefile("rb") as replies:
            if check["password"]:
                words = ["AUTH", check["user"], check["password"]] if check["user"] else ["AUTH", check["password"]]
                sock.sendall(_resp(*words))
                reply = replies.readline(4096).decode("utf-8", "replace").strip()
                if reply != "+OK":
                    return Outcome(False, None, "PONG", f"Redis {address}: AUTH failed: {_one_line(reply.lstrip('-'))}")
            sock.sendall(_resp("PING"))
            reply = replies.readline(4096).decode("utf-8", "replace").strip()
    except OSError as exc:
        return Outcome(False, None, "PONG", f"Redis {address}: {_one_line(exc.strerror or exc)}")
    if reply != "+PONG":
        return Outcome(False, _one_line(reply.lstrip("+-")) or None, "PONG",
                       f"Redis {address} answered PING with {_one_line(reply) or 'nothing'}")
    return Outcome(True, "PONG", "PONG", f"Redis {address} answered PONG")


# --------------------------------------------------------------------------- Telegram bot


def check_telegram(check, timeout):
    """getMe answers; the webhook is the expected one (none for a polling bot, none while paused for
    maintenance); fewer pending updates than the threshold; no delivery error within error_window seconds."""
    expected = check["webhook_url"]
    try:
        api = telegram.BotAPI(check["token"], check["api_url"], timeout, check["use_proxy"])
        bot = "@" + str((api.me() or {}).get("username", "?"))
        info = api.webhook() or {}
    except telegram.BotAPIError as exc:
        return Outcome(False, None, None, f"Telegram bot: {exc}")
    url, pending = info.get("url", ""), info.get("pending_update_count", 0)
    value = {"bot": bot, "webhook": url, "pending_update_count": pending}
    threshold = {"webhook": expected, "pending_update_count": check["threshold"]}
    if check["paused"] and expected and not url:
        return Outcome(True, value, threshold, f"{bot} answers; its webhook is paused for maintenance "
                                               f"({pending} updates waiting)")
    if url != expected:
        wanted = f"webhook {expected}" if expected else "no webhook (a polling bot's getUpdates fails while one is set)"
        return Outcome(False, value, threshold, f"{bot}: webhook is {url or 'not set'}, expected {wanted}")
    if pending >= check["threshold"]:
        return Outcome(False, value, threshold,
                       f"{bot}: {pending} updates waiting (below {check['threshold']:g} expected)")
    error_at = info.get("last_error_date")
    if expected and error_at and time.time() - error_at < check["error_window"]:
        when = datetime.datetime.fromtimestamp(error_at, UTC).strftime("%H:%M:%S UTC")
        value["last_error"] = f"{when}: {info.get('last_error_message', '')}"
        return Outcome(False, value, threshold, _one_line(
            f"{bot}: Telegram could not deliver to the webhook at {when}: {info.get('last_error_message', '?')}"))
    return Outcome(True, value, threshold,
                   f"{bot} answers; webhook {url or 'none (polling)'}, {pending} updates waiting")


# --------------------------------------------------------------------------- TLS certificate


def _der(data, pos):
    """One DER element at pos: (tag, start of its content, end of its content)."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(data[pos:pos + size], "big")
        pos += size
    return tag, pos, pos + length


def _asn1_time(tag, raw):
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime, YYMMDDHHMMSSZ
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    return datetime.datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)


def not_after(der):
    """The notAfter time of a DER certificate (Certificate > tbsCertificate > validity)."""
    tbs_start = _der(der, 0)[1]
    pos = _der(der, tbs_start)[1]
    tag, _start, end = _der(der, pos)
    if tag == 0xA0:  # explicit version
        pos = end
    for _field in range(3):  # serialNumber, signature, issuer
        pos = _der(der, pos)[2]
    validity = _der(der, pos)[1]
    end = _der(der, validity)[2]  # notBefore
    tag, start, end = _der(der, end)
    return _asn1_time(tag, der[start:end])


def check_tls_cert(check, timeout):
    name = check["server_name"] or check["host"]
    address = f"{check['host']}:{check['port']}"
    minimum = check["min_days"]
    try:
        context = _tls_context(check)
        with socket.create_connection((check["host"], check["port"]), timeout=timeout) as sock, \
                context.wrap_socket(sock, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        return Outcome(False, None, minimum, f"{address}: certificate not valid for {name}: "
                                             f"{_one_line(exc.verify_message or exc)}")
    except (OSError, ssl.SSLError) as exc:
        return Outcome(False, None, minimum, f"{address}: {_one_line(getattr(exc, 'strerror', None) or exc)}")
    if not der:
        return Outcome(False, None, minimum, f"{address} sent no certificate")
    try:
        expires = not_after(der)
    except (IndexError, ValueError) as exc:
        return Outcome(False, None, minimum, f"{address}: cannot read the certificate's expiry: {exc}")
    days = (expires - datetime.datetime.now(UTC)).total_seconds() / 86400
    summary = f"the certificate of {address} expires {expires:%Y-%m-%d %H:%M} UTC, in {days:.1f} days"
    if days <= minimum:
        return Outcome(False, _round(days, 2), minimum, f"{summary} (minimum {minimum:g})")
    return Outcome(True, _round(days, 2), minimum, summary)


# --------------------------------------------------------------------------- resources


def _below(value, limit, what):
    text = f"{what} {value:.1f} % (limit {limit:g} %)"
    return Outcome(value < limit, _round(value), limit, text)


def check_disk(check, timeout):
    try:
        stat = os.statvfs(check["path"])
    except OSError as exc:
        return Outcome(False, None, check["threshold"], f"{check['path']}: {exc.strerror or exc}")
    used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
    available = stat.f_bavail * stat.f_frsize
    percent = 100.0 * used / (used + available) if used + available else 0.0
    return _below(percent, check["threshold"], f"disk {check['path']} used")


def check_memory(check, timeout):
    info = {}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                key, _sep, rest = line.partition(":")
                info[key] = int(rest.split()[0])
        total, available = info["MemTotal"], info["MemAvailable"]
    except (OSError, KeyError, ValueError, IndexError) as exc:
        return Outcome(False, None, check["threshold"], f"cannot read MemAvailable from /proc/meminfo: {exc}")
    return _below(100.0 * (total - available) / total, check["threshold"], "memory used")


def check_load(check, timeout):
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    load = os.getloadavg()[0]
    return _below(100.0 * load / cpus, check["threshold"], f"load {load:.2f} on {cpus} CPUs:")


CHECKS = {
    "http": check_http, "tcp": check_tcp, "command": check_command, "mysql": check_mysql,
    "postgresql": check_postgresql, "redis": check_redis, "tls_cert": check_tls_cert, "telegram": check_telegram,
    "disk": check_disk,
    "memory": check_memory, "load": check_load, "latency": check_latency, "error_rate": check_error_rate,
}


# --------------------------------------------------------------------------- running


def prepare(check, params):
    """Fill in the per-type defaults; return an error message for a check that cannot run."""
    kind = check["type"] = ALIASES.get(check["type"], check["type"])
    if kind in ("http", "latency", "error_rate") and not check["url"]:
        return f"check {check['name']!r} ({kind}) needs a url"
    if kind == "tcp" and not check["port"]:
        return f"check {check['name']!r} (tcp) needs a port"
    if kind == "command" and not check["command"]:
        return f"check {check['name']!r} (command) needs a command"
    if kind == "telegram" and not check["token"]:
        return f"check {check['name']!r} (telegram) needs the bot's token"
    # a webhook deleted on purpose while maintenance is on is not a failure
    check["paused"] = bool(params.get("maintenance_flag")) and os.path.exists(params["maintenance_flag"])
    if check["port"] is None:
        check["port"] = DEFAULT_PORTS.get(kind)
    if check["threshold"] is None:
        check["threshold"] = DEFAULT_THRESHOLDS.get(kind)
    if check["retries"] is None:
        check["retries"] = 1 if kind in MEASUREMENTS else params["retries"]
    if check["delay"] is None:
        check["delay"] = params["delay"]
    if check["timeout"] is None:
        check["timeout"] = 60.0 if kind == "command" else params["timeout"]
    for key in ("body", "stdout"):
        if check[key]:
            try:
                re.compile(check[key])
            except re.error as exc:
                return f"check {check['name']!r}: {key} is not a valid regular expression: {exc}"
    return None


def invalid_checks(params):
    """The problems of validated probe parameters' checks, one message each; fills in their defaults."""
    return [problem for problem in (prepare(check, params) for check in params["checks"]) if problem]


def run_check(check, hostname):
    started = time.monotonic()
    attempts = max(1, check["retries"])
    outcome = None
    for attempt in range(1, attempts + 1):
        try:
            outcome = CHECKS[check["type"]](check, check["timeout"])
        except Exception as exc:  # a check never takes the others down with it
            outcome = Outcome(False, None, None, f"{exc.__class__.__name__}: {_one_line(exc)}")
        if outcome.passed or attempt == attempts:
            break
        time.sleep(max(0.0, check["delay"]))
    return {
        "host": hostname,
        "check": check["name"],
        "type": check["type"],
        "status": "pass" if outcome.passed else "fail",
        "value": outcome.value,
        "threshold": outcome.threshold,
        "message": outcome.message,
        "attempts": attempt,
        "seconds": round(time.monotonic() - started, 3),
    }


def run_checks(checks, hostname):
    if not checks:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(checks))) as pool:
        return list(pool.map(lambda check: run_check(check, hostname), checks))
