"""`deployctl init`: a first deployctl project from a Docker Compose file.

`detect()` reads the compose file (and the `.env` beside it, as compose does for `${VAR}`) and sorts its
services: the app's own image (app services, workers, a Telegram bot, a migration service), the database
(MariaDB/MySQL or PostgreSQL images), Redis, nginx and the rest. `plan()` turns that into the files of a project
for one environment — deployctl.yml, the inventory, its variables, a vault file with the secrets found in the
compose environment — and the edits the compose file needs, as a patch the user applies (the compose file is
never changed here). `write()` writes the files, refusing before writing anything when one exists.
"""

from __future__ import annotations

import collections
import configparser
import contextlib
import difflib
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from ansible_collections.deployctl.core.plugins.module_utils import envfile

from deployctl import ansible_config
from deployctl.errors import BadInput

ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
HOST_NAME = re.compile(r"^[A-Za-z0-9_\[][A-Za-z0-9_.:\[\]-]*$")  # a name, an IPv4 or IPv6 address
# the variable names deployctl masks as secret (roles/common: deployctl_secret_values), _FILE ones aside
SECRET_NAME = re.compile(r"(?i)(pass|secret|token|key|auth|credential|private)")
NOT_SECRET = re.compile(r"(?i)[0-9.]+|true|false|yes|no|on|off|none|null")
URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<password>[^@/\s]+)@")
VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
                      r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")

DATABASE_IMAGES = {"mariadb": "mysql", "mysql": "mysql", "percona": "mysql", "percona-server": "mysql",
                   "mysql-server": "mysql", "postgres": "postgresql", "postgis": "postgresql",
                   "timescaledb": "postgresql"}
REDIS_IMAGES = {"redis", "valkey", "keydb", "redis-stack", "redis-stack-server"}
PROXY_IMAGES = {"nginx", "traefik", "caddy", "haproxy", "nginx-proxy", "openresty", "envoy"}
# images that are someone else's service, not the app: left alone
OTHER_IMAGES = {"memcached", "rabbitmq", "mongo", "elasticsearch", "opensearch", "minio", "adminer", "phpmyadmin",
                "mailhog", "mailpit", "prometheus", "grafana", "certbot", "pgadmin4", "kafka", "zookeeper",
                "localstack", "redis-commander", "nats", "clickhouse-server", "sentry", "jaeger", "busybox",
                "alpine", "watchtower"}
WORKER_WORDS = re.compile(r"(?i)(worker|queue|jobs?\b|sidekiq|celery|consumer|scheduler|cron|\bbeat\b|horizon"
                          r"|\brq\b|resque|bull)")
TELEGRAM_API = "https://api.telegram.org"  # the Bot API the roles call unless told another
BOT_WORDS = re.compile(r"(?i)(\bbot(\b|_)|bot\b|telegram)")
MIGRATE_WORDS = re.compile(r"(?i)migrat")
WEB_NAMES = ("app", "web", "api", "server", "backend", "frontend", "site")
# a service of an image that is not the app's, known by its name or command (a database built in-house, say)
SERVICE_WORDS = (("database", "mysql", re.compile(r"(?i)maria|mysql|percona")),
                 ("database", "postgresql", re.compile(r"(?i)postgres|postgis|\bpg\b")),
                 ("redis", None, re.compile(r"(?i)redis|valkey|keydb")),
                 ("proxy", None, re.compile(r"(?i)nginx|traefik|caddy|haproxy")))
DATABASE_KEYS = {
    "name": ("MARIADB_DATABASE", "MYSQL_DATABASE", "POSTGRES_DB", "DB_NAME", "DB_DATABASE", "DATABASE_NAME"),
    "user": ("MARIADB_USER", "MYSQL_USER", "POSTGRES_USER", "DB_USER", "DB_USERNAME", "DATABASE_USER"),
    "password": ("MARIADB_PASSWORD", "MYSQL_PASSWORD", "POSTGRES_PASSWORD", "DB_PASSWORD", "DATABASE_PASSWORD"),
}
MASK = "********"
PORT_KEYS = ("APP_PORT", "PORT", "HTTP_PORT", "SERVER_PORT", "LISTEN_PORT", "WEB_PORT")


@dataclass
class Service:
    name: str
    kind: str  # app, worker, bot, migrate, database, redis, proxy, other
    image: str | None  # the reference as compose resolves it (None: built and named by compose)
    why: str = ""
    engine: str | None = None  # a database's: mysql or postgresql


@dataclass
class Database:
    service: str
    engine: str  # mysql or postgresql
    image: str
    name: str
    user: str
    password_variable: str | None  # the vault variable of the password


@dataclass
class Redis:
    service: str
    port: int
    persistent: bool
    reachable: bool  # from the host, on 127.0.0.1
    password_variable: str | None


@dataclass
class Bot:
    service: str
    webhook_url: str | None  # the webhook the compose environment names
    token_variable: str | None
    secret_token_variable: str | None
    webhook: bool  # a webhook bot (a URL, or a *MODE* variable that says webhook), else polling
    api_url: str | None = None  # a Bot API server of its own (a *API*URL* variable), not Telegram's


@dataclass
class Secret:
    variable: str  # vault_<name>
    value: str
    found: list[str]  # "service KEY"


@dataclass
class Stack:
    compose_file: Path
    files: list[str]
    project: str
    services: dict[str, Service]
    image: str  # the app image repository
    tag_variable: str
    app_services: list[str]
    worker_services: list[str]
    migrate_command: list[str]
    health_port: int | None
    health_path: str
    health_source: str
    database: Database | None
    redis: Redis | None
    bot: Bot | None
    secrets: list[Secret]
    patch: str  # unified diff of the compose file's edits, "" when none are needed
    shown_patch: str  # the same as printed: the secrets it takes out and the .env's values masked
    edited: str  # the compose file's text with those edits
    env_additions: dict[str, str]  # what the patch adds to the .env beside it: the secrets moved out of the file
    edits: list[str]  # one line per edit, for people
    built: bool  # an app service has build:, so `docker compose build` makes the image
    host_files: list[str]  # beside the compose files, what compose reads on a host: .env, env_file, secrets' files
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "compose_file": str(self.compose_file), "project": self.project, "image": self.image,
            "tag_variable": self.tag_variable, "app_services": self.app_services,
            "worker_services": self.worker_services, "migrate_command": self.migrate_command,
            "health": {"port": self.health_port, "path": self.health_path, "from": self.health_source},
            "database": None if self.database is None else {
                "service": self.database.service, "engine": self.database.engine, "name": self.database.name,
                "user": self.database.user},
            "redis": None if self.redis is None else {
                "service": self.redis.service, "port": self.redis.port, "persistent": self.redis.persistent},
            "bot": None if self.bot is None else {
                "service": self.bot.service, "mode": "webhook" if self.bot.webhook else "polling"},
            "services": {s.name: s.kind for s in self.services.values()},
            "secrets": [{"variable": s.variable, "found": s.found} for s in self.secrets],
            "edits": self.edits, "notes": self.notes,
        }


# --------------------------------------------------------------------------- reading the compose file


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads its .env: comments, `export`, quotes."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key.strip()] = value
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR:+alt}, $VAR and $$."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("plain")
        op, arg = match.group("op") or "", match.group("arg") or ""
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else interpolate(arg, env)
        if op in (":+", "+"):
            return interpolate(arg, env) if value or (op == "+" and value is not None) else ""
        return value or ""

    return VARIABLE.sub(one, text)


def only_variable(text: str) -> str | None:
    """VAR when `text` is exactly one ${VAR...} or $VAR."""
    match = VARIABLE.fullmatch(text.strip())
    return (match.group("braced") or match.group("plain")) if match and match.group(0) != "$$" else None


def split_reference(raw: str) -> tuple[str, str | None]:
    """repository and tag of an image reference as written (variables intact): registry:5000/shop:${TAG}."""
    masked = VARIABLE.sub(lambda m: "x" * len(m.group(0)), raw)  # colons inside ${...} are not separators
    colon, slash = masked.rfind(":"), masked.rfind("/")
    if colon > slash:
        return raw[:colon], raw[colon + 1:]
    return raw, None


def repository_name(repository: str) -> str:
    """The image's own name, without registry and namespace: docker.io/library/mariadb -> mariadb."""
    return repository.rsplit("/", 1)[-1].lower()


def _nodes(node: yaml.Node | None, *path: str) -> yaml.Node | None:
    """The node under the mapping keys `path` (merge keys followed), None when absent."""
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            return None
        found = None
        for key_node, value_node in node.value:
            if key_node.value == key:
                found = value_node
            elif key_node.tag == "tag:yaml.org,2002:merge" and found is None:
                merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in merged:
                    found = found or _nodes(source, key)
        node = found
    return node


def _key_node(mapping: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(mapping, yaml.MappingNode):
        for key_node, _value in mapping.value:
            if key_node.value == key:
                return key_node
    return None


def _environment(spec: dict, node: yaml.Node | None) -> list[tuple[str, str, yaml.Node | None]]:
    """(KEY, value as written, node of the value) of a service's environment, mapping or list form."""
    entries = []
    environment = spec.get("environment") or {}
    if isinstance(environment, dict):
        for key, value in environment.items():
            entries.append((str(key), "" if value is None else str(value), _nodes(node, "environment", str(key))))
    elif isinstance(environment, list):
        list_node = _nodes(node, "environment")
        items = list_node.value if isinstance(list_node, yaml.SequenceNode) else [None] * len(environment)
        for item, item_node in zip(environment, items, strict=False):
            key, _, value = str(item).partition("=")
            entries.append((key, value, item_node))
    return entries


def _by_image(name: str, spec: dict, env: dict[str, str]) -> Service:
    """A service as its image says: a database, Redis, a proxy, someone else's service, or (so far) the app."""
    raw = spec.get("image")
    image = interpolate(str(raw), env) if raw else None
    own = repository_name(split_reference(image)[0]) if image else ""
    if own in DATABASE_IMAGES:
        return Service(name, "database", image, f"{own} image", DATABASE_IMAGES[own])
    for kind, images in (("redis", REDIS_IMAGES), ("proxy", PROXY_IMAGES)):
        if own in images:
            return Service(name, kind, image, f"{own} image")
    if own in OTHER_IMAGES and not spec.get("build"):
        return Service(name, "other", image, f"{own} image")
    return Service(name, "app", image, "build" if spec.get("build") else "image")


def _tag_variable(spec: dict) -> str | None:
    """VAR when the service's image takes its tag from ${VAR}."""
    raw = spec.get("image")
    tag = split_reference(str(raw))[1] if raw else None
    return only_variable(tag) if tag else None


def _app_repository(candidates: list[Service], services: dict) -> str | None:
    """The app's image repository (None: built by compose, unnamed): the one whose tag is a variable (or that is
    built here), else the one most services run, else a web service's. One release is one tag of it."""
    scores = collections.defaultdict(lambda: [False, 0, False])
    for service in candidates:
        spec = services[service.name] or {}
        score = scores[split_reference(service.image)[0] if service.image else None]
        score[0] = score[0] or bool(_tag_variable(spec) or spec.get("build"))
        score[1] += 1
        score[2] = score[2] or service.name.lower() in WEB_NAMES
    return max(scores, key=lambda repository: tuple(scores[repository]))


def _tag_edit(name: str, spec: dict, node, repository: str, tag_variable: str, edits: _Edits,
              env: dict[str, str]) -> None:
    """The edit a service of the app's image needs so that its tag is ${tag_variable}: none when it is already a
    variable; in the file where its YAML allows it, else described."""
    raw = spec.get("image")
    if raw is None:
        line = f"image: {json.dumps(f'{repository}:${{{tag_variable}:-latest}}')}"
        if not edits.insert_before(node, "build", line, f"{name}: add `{line}` (the tag is the version)"):
            edits.lines.append(f"{name}: add `{line}`")
        return
    raw_repository, raw_tag = split_reference(str(raw))
    if raw_tag is not None and only_variable(raw_tag):
        return
    wanted = f"{raw_repository}:${{{tag_variable}:-{interpolate(raw_tag or 'latest', env)}}}"
    if not edits.replace(_nodes(node, "image"), wanted, f"{name}: image {raw} -> {wanted}"):
        edits.lines.append(f"{name}: image {raw} -> {wanted}")


def _other_role(name: str, spec: dict) -> tuple[str, str, str | None]:
    """(kind, why, engine) of a service that does not run the app's image, by its name, then its command."""
    for text, where in ((name, "name"), (_command_text(spec), "command")):
        for kind, engine, words in SERVICE_WORDS:
            if words.search(text):
                return kind, f"its {where}, {text[:40]}", engine
    return "other", "another image", None


def _role(name: str, spec: dict) -> tuple[str, str]:
    """What a service of the app's image does: migrate, bot, worker or app, and why. The name decides first;
    the command only for a service that serves nothing (`gunicorn --workers 4` is still the app)."""
    roles = (("migrate", MIGRATE_WORDS), ("bot", BOT_WORDS), ("worker", WORKER_WORDS))
    for role, words in roles:
        if words.search(name):
            return role, f"its name says {role}"
    if not _serves(name, spec):
        command = _command_text(spec)
        for role, words in roles:
            if words.search(command):
                return role, f"its command says {role}"
    return "app", "serves the app"


def _serves(name: str, spec: dict) -> bool:
    """Whether a service answers requests: a web name, a port, or a healthcheck."""
    healthcheck = spec.get("healthcheck") or {}
    return (name.lower() in WEB_NAMES or bool(spec.get("ports") or spec.get("expose"))
            or (bool(healthcheck.get("test")) and not healthcheck.get("disable")))


def _env_files(spec: dict) -> list[str]:
    """A service's env_file entries: one path, or a list of paths and {path, required}."""
    entries = spec.get("env_file") or []
    return [str(entry.get("path") if isinstance(entry, dict) else entry)
            for entry in ([entries] if isinstance(entries, str | dict) else entries)]


def _command_text(spec: dict) -> str:
    parts = []
    for key in ("command", "entrypoint"):
        value = spec.get(key)
        if isinstance(value, list):
            parts.extend(str(v) for v in value)
        elif value:
            parts.append(str(value))
    return " ".join(parts)


def _argv(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return shlex.split(str(value)) if value else []


def _published(spec: dict, env: dict[str, str], container_port: int | None) -> int | None:
    """The host port that publishes `container_port` (or the first published one, when None)."""
    for entry in spec.get("ports") or []:
        if isinstance(entry, dict):
            target, published = entry.get("target"), entry.get("published")
        else:
            text = interpolate(str(entry), env).split("/", 1)[0]
            parts = text.rsplit(":", 2)
            target = parts[-1]
            published = parts[-2] if len(parts) >= 2 else None
        try:
            target = int(str(target).split("-")[0])
            published = int(str(published).split("-")[0]) if published not in (None, "") else None
        except ValueError:
            continue
        if container_port is None or target == container_port:
            return published
    return None


class _Edits:
    """Changes to the compose file's text at the exact places its YAML nodes came from."""

    def __init__(self, text: str):
        self.text = text
        self.changes: dict[tuple[int, int], str] = {}
        self.masks: dict[tuple[int, int], str] = {}  # what the printed patch shows in place of a secret it edits
        self.hidden: dict[tuple[int, int], str] = {}  # ... and of one it leaves in place
        self.lines: list[str] = []

    def replace(self, node: yaml.Node | None, value: str, why: str, shown: str | None = None) -> bool:
        """`node` becomes the quoted `value`; `shown`, when given, is what the printed patch shows of the node as
        it was (its text may hold a secret in any YAML form: escapes, a block scalar over several lines)."""
        if node is None or not isinstance(node, yaml.ScalarNode):
            return False
        self.changes[_span(node)] = _scalar(node, value)
        if shown is not None:
            self.masks[_span(node)] = _shown(node, shown)
        self.lines.append(why)
        return True

    def hide(self, node: yaml.Node | None, shown: str) -> None:
        """A secret left in the file: the printed patch shows `shown` instead, should its lines be shown."""
        if isinstance(node, yaml.ScalarNode):
            self.hidden[_span(node)] = _shown(node, shown)

    def insert_before(self, mapping: yaml.Node | None, key: str, line: str, why: str) -> bool:
        key_node = _key_node(mapping, key) if mapping is not None else None
        if key_node is None or mapping.flow_style:
            return False
        start = self.text.rfind("\n", 0, key_node.start_mark.index) + 1
        self.changes[(start, start)] = " " * key_node.start_mark.column + line + "\n"
        self.lines.append(why)
        return True

    def edited(self) -> str:
        return _apply(self.text, self.changes)

    def patch(self, name: str) -> str:
        return _unified_diff(self.text.splitlines(True), self.edited().splitlines(True), f"a/{name}", f"b/{name}")

    def shown_patch(self, name: str) -> str:
        """The patch as printed: the secrets it takes out and those around its edits masked."""
        return _unified_diff(_apply(self.text, {**self.masks, **self.hidden}).splitlines(True),
                             _apply(self.text, {**self.changes, **self.hidden}).splitlines(True),
                             f"a/{name}", f"b/{name}")


def _span(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.index, node.end_mark.index


def _scalar(node: yaml.Node, value: str) -> str:
    """`value` quoted in place of the scalar `node`; a block scalar (| or >) ends after its last line break, and
    so does what replaces it."""
    return json.dumps(value) + ("\n" if node.style in ("|", ">") else "")


def _shown(node: yaml.Node, text: str) -> str:
    """`text` in place of the scalar `node`, for people only: quoted as the node was."""
    quote = node.style if node.style in ("'", '"') else ""
    return quote + text + quote + ("\n" if node.style in ("|", ">") else "")


def _apply(text: str, changes: dict[tuple[int, int], str]) -> str:
    for (start, end), replacement in sorted(changes.items(), reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


# --------------------------------------------------------------------------- detection


def detect(compose_file: Path) -> Stack:
    path = compose_file.expanduser()
    if not path.is_file():
        raise BadInput(f"no compose file {compose_file}")
    text = path.read_text(errors="replace")
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise BadInput(f"{compose_file}{f' line {mark.line + 1}' if mark else ''}: not valid YAML") from None
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict) or not services:
        raise BadInput(f"{compose_file}: not a compose file (no services)")
    directory = path.resolve().parent
    env = read_dotenv(directory / ".env")
    project = re.sub(r"[^-_a-z0-9]", "", str(env.get("COMPOSE_PROJECT_NAME") or data.get("name")
                                                or directory.name).lower()) or "app"
    files = [path.name] + [name for name in ("docker-compose.override.yml", "docker-compose.override.yaml",
                                             "compose.override.yml", "compose.override.yaml")
                           if path.name in ("docker-compose.yml", "docker-compose.yaml", "compose.yml",
                                            "compose.yaml") and (directory / name).is_file()][:1]
    edits = _Edits(text)
    notes: list[str] = []
    if len(files) > 1:
        notes.append(f"{files[1]} is read too (deployctl passes -f for each file, so compose would not add it)")

    secret_files = {str(name): directory / str(spec["file"]) for name, spec in (data.get("secrets") or {}).items()
                    if isinstance(spec, dict) and spec.get("file")}

    def service_env(name: str, spec: dict) -> dict[str, str]:
        """The container's environment as far as this machine knows it: .env, env_file, environment, and the
        content of compose secrets a KEY_FILE names (/run/secrets/<name>) as KEY."""
        values = dict(env)
        for entry_path in _env_files(spec):
            values.update(read_dotenv(directory / entry_path))
        values.update({key: interpolate(value, env) for key, value, _node in _environment(spec, None)})
        for key, value in list(values.items()):
            source = secret_files.get(value.removeprefix("/run/secrets/")) if key.endswith("_FILE") else None
            if source is not None and source.is_file() and key.removesuffix("_FILE") not in values:
                values[key.removesuffix("_FILE")] = source.read_text(errors="replace").rstrip("\n")
        return values

    sorted_services = {str(name): _by_image(str(name), spec or {}, env) for name, spec in services.items()}
    candidates = [s for s in sorted_services.values() if s.kind == "app"]
    if not candidates:
        raise BadInput(f"{compose_file}: no service runs an image of your app (found: "
                       + ", ".join(f"{s.name} ({s.why})" for s in sorted_services.values()) + ")")
    main = _app_repository(candidates, services)
    repository = main or project
    for service in candidates:
        if (split_reference(service.image)[0] if service.image else None) != main:
            service.kind, service.why, service.engine = _other_role(service.name, services[service.name] or {})
            if service.kind == "other":
                notes.append(f"{service.name} runs {service.image or 'an image compose builds'}, not {repository}: "
                             "deployctl releases one image per environment, so it is left alone")
    mine = [s for s in candidates if s.kind == "app"]
    # the tag variable: the one a service of the app's image already uses, else APP_TAG
    tag_variable = next(filter(None, (_tag_variable(services[s.name] or {}) for s in mine)), "APP_TAG")
    for service in mine:
        _tag_edit(service.name, services[service.name] or {}, _nodes(root, "services", service.name), repository,
                  tag_variable, edits, env)
    built = any((services[s.name] or {}).get("build") for s in mine)

    # what each app-image service is: the migrations, the bot, workers, the app
    migrate_command: list[str] = []
    for service in mine:
        spec = services[service.name] or {}
        service.kind, service.why = _role(service.name, spec)
        if service.kind == "migrate":
            migrate_command = migrate_command or _argv(spec.get("command"))
    apps = sorted((s.name for s in candidates if s.kind == "app"),
                  key=lambda name: (name.lower() not in WEB_NAMES, list(sorted_services).index(name)))
    if not apps:
        raise BadInput(f"{compose_file}: every service of {repository} looks like a worker, bot or migration: "
                       "deployctl needs one that serves the app")

    # what the services that load the .env as an env_file get: every secret moved there reaches them too
    dotenv = (directory / ".env").resolve()
    dotenv_readers = {
        str(name): {**{key: value for entry in _env_files(spec or {})
                       for key, value in read_dotenv(directory / entry).items()},
                    **{key: interpolate(value, env) for key, value, _node in _environment(spec or {}, None)}}
        for name, spec in services.items() if any((directory / entry).resolve() == dotenv
                                                   for entry in _env_files(spec or {}))}
    secrets = _Secrets(dotenv_readers)
    database = _database(sorted_services, services, service_env, secrets)
    redis = _redis(sorted_services, services, service_env, secrets, env)
    bot = _bot(sorted_services, services, service_env, secrets)
    for name, spec in services.items():
        for key, value, node in _environment(spec or {}, _nodes(root, "services", str(name))):
            secrets.from_environment(str(name), key, value, node, edits, env)

    workers = [s.name for s in sorted_services.values() if s.kind == "worker"]
    app_services = list(apps)
    if bot is not None:
        # one that answers requests (its own webhook) is health-gated like the app; one that polls, or takes the
        # updates the app's webhook queued, stops with the workers
        (app_services if _serves(bot.service, services[bot.service] or {}) else workers).append(bot.service)
        if bot.webhook and not bot.webhook_url:
            notes.append(f"{bot.service} uses a webhook whose URL the compose file does not give: set "
                         "deployctl_telegram_bot (written commented out) so that maintenance pauses it")
    port, path_, source = _health(apps[0], services[apps[0]] or {}, service_env(apps[0], services[apps[0]] or {}),
                                  env)
    if port is None:
        notes.append(f"{apps[0]} has no healthcheck with a URL and publishes no port: releases wait for container "
                     "health only; set deployctl_compose_http_port and deployctl_compose_health_path")
    elif not path_:
        notes.append(f"{apps[0]}'s healthcheck names no URL: its container health gates releases, verify checks "
                     f"port {port}; set deployctl_compose_health_path to your health endpoint for an HTTP check")
    elif source != "healthcheck":
        notes.append(f"{apps[0]} has no healthcheck: the HTTP check asks {path_} on port {port} ({source}); a "
                     "Docker healthcheck and a health endpoint make releases safer")
    for service in sorted_services.values():
        if service.kind == "proxy":
            notes.append(f"{service.name} ({service.why}) stays as it is; for deployctl's maintenance page and "
                         "zero-downtime releases see the README (Maintenance page, Docker Compose)")
    if redis is not None and not redis.reachable:
        notes.append(f"Redis ({redis.service}) publishes no port to the host: no redis check was added")
    additions = {name: value for name, value in secrets.moved.items() if name not in env}
    env_patch, env_shown = _dotenv_patch(directory / ".env", additions)
    for name, why in secrets.kept.items():
        notes.append(f"{name} stays in the compose file: {why} (it is in the vault file too)")
    return Stack(
        compose_file=path.resolve(), files=files, project=project, services=sorted_services, image=repository,
        tag_variable=tag_variable, app_services=app_services, worker_services=workers,
        migrate_command=migrate_command, health_port=port, health_path=path_, health_source=source,
        database=database, redis=redis, bot=bot, secrets=secrets.found(),
        patch=edits.patch(path.name) + env_patch if edits.changes else "", edited=edits.edited(),
        shown_patch=edits.shown_patch(path.name) + env_shown if edits.changes else "",
        env_additions=additions, edits=edits.lines, built=built,
        host_files=_host_files(directory, services, data, bool(additions)),
        notes=notes)


def _host_files(directory: Path, services: dict, data: dict, env_additions: bool) -> list[str]:
    """The files besides the compose files that compose reads (relative to their directory, or absolute): its .env
    (when there is one or the patch writes one), the services' env_file entries, the compose secrets' files."""
    paths = [".env"] if env_additions or (directory / ".env").is_file() else []
    paths += [path for spec in services.values() for path in _env_files(spec or {})]
    paths += [str(spec["file"]) for spec in (data.get("secrets") or {}).values()
              if isinstance(spec, dict) and spec.get("file")]
    return list(dict.fromkeys(path if os.path.isabs(os.path.expanduser(path)) else os.path.normpath(path)
                              for path in paths))


def _dotenv_patch(path: Path, additions: dict[str, str]) -> tuple[str, str]:
    """The part of the patch that gives the compose project's .env the secrets the compose file no longer holds
    (quoted as deployctl quotes its own .env lines), and the same as printed (every value masked: the lines of
    the .env shown around the additions may hold secrets init knows nothing of)."""
    lines = [f"{name}={envfile.quote(name, value)}\n" for name, value in additions.items()]
    shown = [f"{name}={MASK}\n" for name in additions]
    if not lines:
        return "", ""
    before = path.read_text().splitlines(True) if path.is_file() else []
    existing = [*before[:-1], before[-1] + "\n"] if before and not before[-1].endswith("\n") else before
    header = "# moved out of the compose file by deployctl init (in the vault file too)\n"
    old_name = "a/.env" if before else "/dev/null"
    masked_before, masked_existing = ([_masked_dotenv_line(line) for line in text] for text in (before, existing))
    return (_unified_diff(before, [*existing, header, *lines], old_name, "b/.env"),
            _unified_diff(masked_before, [*masked_existing, header, *shown], old_name, "b/.env"))


def _masked_dotenv_line(line: str) -> str:
    if line.lstrip().startswith("#") or "=" not in line:
        return line
    return f"{line.partition('=')[0]}={MASK}" + ("\n" if line.endswith("\n") else "")


def _unified_diff(before: list[str], after: list[str], old_name: str, new_name: str) -> str:
    """difflib's unified diff, with the marker patch(1) needs after a last line without a newline."""
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in difflib.unified_diff(before, after, old_name, new_name))


class _Secrets:
    """Secret values found in the compose environment, one vault variable per value."""

    def __init__(self, dotenv_readers: dict[str, dict[str, str]]):
        self.dotenv_readers = dotenv_readers  # service -> its environment, for those that load the .env
        self.by_value: dict[str, Secret] = {}
        self.moved: dict[str, str] = {}  # NAME -> value: the compose file reads ${NAME} after the edits
        self.kept: dict[str, str] = {}  # NAME -> why the compose file keeps the secret

    def add(self, name: str, value: str, where: str) -> str:
        secret = self.by_value.get(value)
        if secret is None:
            variable = "vault_" + re.sub(r"[^a-z0-9_]", "_", name.lower())
            taken = {s.variable for s in self.by_value.values()}
            base, number = variable, 2
            while variable in taken:
                variable, number = f"{base}_{number}", number + 1
            secret = self.by_value[value] = Secret(variable, value, [])
        if where not in secret.found:
            secret.found.append(where)
        return secret.variable

    def from_environment(self, service: str, key: str, raw: str, node, edits: _Edits, env: dict[str, str]):
        """A secret value in `KEY: value` (or KEY=value): the value goes to the vault, the compose file reads
        ${NAME} instead of the literal."""
        if key.endswith("_FILE") or not raw:
            return
        in_list = isinstance(node, yaml.ScalarNode) and node.value.startswith(f"{key}=")
        credentials = URL_CREDENTIALS.search(raw)
        if credentials and not only_variable(credentials.group("password")):
            password = interpolate(credentials.group("password"), env)
            name = self._name_for(password) or f"{key}_PASSWORD"
            self.add(name, password, f"{service} {key}")
            new = raw[:credentials.start("password")] + f"${{{name}}}" + raw[credentials.end("password"):]
            masked = raw[:credentials.start("password")] + MASK + raw[credentials.end("password"):]
            shown = f"{key}={masked}" if in_list else masked
            if self._movable(name, password, env) and edits.replace(
                    node, f"{key}={new}" if in_list else new, f"{service}: the password in {key} -> ${{{name}}}",
                    shown):
                self.moved[name] = password
            else:
                edits.hide(node, shown)
            return
        if not SECRET_NAME.search(key):
            return
        value = interpolate(raw, env)
        if not value or NOT_SECRET.fullmatch(value):
            return
        variable = only_variable(raw)
        name = variable or self._name_for(value) or key
        self.add(name, value, f"{service} {key}")
        with_default = bool(variable and VARIABLE.fullmatch(raw.strip()).group("arg"))
        if variable is not None and not with_default:
            return  # the file names it only
        # a literal, or a default that holds the secret, leaves the file
        shown = f"{key}={MASK}" if in_list else MASK
        if self._movable(name, value, env) and edits.replace(
                node, f"{key}=${{{name}}}" if in_list else f"${{{name}}}", f"{service}: {key} -> ${{{name}}}", shown):
            self.moved[name] = value
        else:
            edits.hide(node, shown)

    def _movable(self, name: str, value: str, env: dict[str, str]) -> bool:
        """Whether the .env beside the compose file can carry `value` as NAME exactly; else the compose file keeps
        it (a ${NAME} nothing sets, or that the .env sets otherwise, would hand the container another value)."""
        try:
            envfile.quote(name, value)
        except envfile.EnvError:
            self.kept.setdefault(name, "no .env line can carry its value exactly; a compose secret (a file) can")
            return False
        if env.get(name, value) != value:
            self.kept.setdefault(name, f"the .env gives {name} another value")
            return False
        newly = [service for service, values in self.dotenv_readers.items()
                 if not any(value in given for given in values.values())]
        if newly:
            self.kept.setdefault(name, f"{', '.join(newly)} {'loads' if len(newly) == 1 else 'load'} .env as an "
                                       "env_file, and the value would reach it")
            return False
        return True

    def _name_for(self, value: str) -> str | None:
        secret = self.by_value.get(value)
        return secret.variable.removeprefix("vault_").upper() if secret else None

    def found(self) -> list[Secret]:
        return list(self.by_value.values())


def _database(sorted_services, services, service_env, secrets: _Secrets) -> Database | None:
    # a service in a compose profile (an alternative, started on demand) only when there is no other
    found = sorted((s for s in sorted_services.values() if s.kind == "database"),
                   key=lambda s: bool((services[s.name] or {}).get("profiles")))
    if not found:
        return None
    service = found[0]
    spec = services[service.name] or {}
    values = service_env(service.name, spec)
    raw = {key: value for key, value, _node in _environment(spec, None)}

    def first(keys) -> tuple[str | None, str | None]:
        return next(((key, values[key]) for key in keys if values.get(key)), (None, None))

    _key, user = first(DATABASE_KEYS["user"])
    _key, name = first(DATABASE_KEYS["name"])
    password_key, password = first(DATABASE_KEYS["password"])
    if service.engine == "mysql" and not user:
        user = "root"
        password_key, password = first(("MARIADB_ROOT_PASSWORD", "MYSQL_ROOT_PASSWORD"))
    user = user or "postgres"
    variable = None
    if password:
        named = only_variable(raw[password_key]) if password_key in raw else None
        where = password_key if password_key in raw else f"{password_key}_FILE"
        variable = secrets.add(named or password_key, password, f"{service.name} {where}")
    return Database(service.name, service.engine, service.image or "", name or user, user, variable)


def _redis(sorted_services, services, service_env, secrets: _Secrets, env) -> Redis | None:
    found = [s for s in sorted_services.values() if s.kind == "redis"]
    if not found:
        return None
    service = found[0]
    spec = services[service.name] or {}
    # as the container gets it: compose puts in the .env's variables (and $$ is $)
    command = [interpolate(part, env) for part in _argv(spec.get("command"))]
    values = service_env(service.name, spec)
    given = command[command.index("--port") + 1] if "--port" in command[:-1] else values.get("REDIS_PORT", "")
    port = int(given) if given.isdigit() else 6379
    text = " ".join(command)
    persistent = bool(re.search(r"--appendonly\s+yes", text) or re.search(r"--save\s+\d", text)) or any(
        str(v).split(":")[1:2] == ["/data"] for v in spec.get("volumes") or [] if isinstance(v, str))
    published = _published(spec, env, port)
    reachable = spec.get("network_mode") == "host" or published is not None
    password = command[command.index("--requirepass") + 1] if "--requirepass" in command[:-1] else (
        values.get("REDIS_PASSWORD"))
    variable = secrets.add("REDIS_PASSWORD", password, f"{service.name} requirepass") if password else None
    return Redis(service.name, published or port, persistent, reachable, variable)


def _bot(sorted_services, services, service_env, secrets: _Secrets) -> Bot | None:
    found = [s for s in sorted_services.values() if s.kind == "bot"]
    if not found:
        return None
    service = found[0]
    spec = services[service.name] or {}
    values = {key: value for key, value in service_env(service.name, spec).items()
              if value and not key.endswith("_FILE")}

    def key_like(pattern: str, unless: str = "^$") -> str | None:
        return next((k for k in values if re.search(pattern, k, re.I) and not re.search(unless, k, re.I)), None)

    webhook_url = values.get(key_like(r"webhook.*url|webhook$") or "")
    mode_key = key_like(r"mode")
    raw = {key: value for key, value, _node in _environment(spec, None)}

    def vault(key: str | None) -> str | None:
        if key is None:
            return None
        named = only_variable(raw[key]) if key in raw else None
        return secrets.add(named or key, values[key], f"{service.name} {key if key in raw else key + '_FILE'}")

    api_url = values.get(key_like(r"api.*(url|base)") or "", "").rstrip("/")
    return Bot(service.name, webhook_url, vault(key_like(r"token", r"secret")),
               vault(key_like(r"webhook.*secret|secret.*token")),
               bool(webhook_url) or (mode_key is not None and values[mode_key].lower() == "webhook"),
               api_url if re.match(r"https?://", api_url) and api_url != TELEGRAM_API else None)


def _health(name: str, spec: dict, values: dict[str, str], env: dict[str, str]) -> tuple[int | None, str, str]:
    """(host port, path, where it came from) of the app's HTTP check; path "" when only the port is known and
    the container's own healthcheck gates releases."""
    healthcheck = spec.get("healthcheck") or {}
    test = healthcheck.get("test")
    gated = bool(test) and test not in (["NONE"], "NONE") and not healthcheck.get("disable")
    # compose's interpolation first (.env), then the shell's in the container ($$PORT: its own environment)
    text = interpolate(interpolate(" ".join(map(str, test)) if isinstance(test, list) else str(test or ""), env),
                       values)
    match = re.search(r"https?://(?P<host>[^/:\s'\"]+)(?::(?P<port>\d+))?(?P<path>/[^\s'\"]*)?", text)
    host_network = spec.get("network_mode") == "host"
    if match:
        container_port = int(match.group("port") or (443 if text[match.start():].startswith("https") else 80))
        port = container_port if host_network else _published(spec, env, container_port)
        if port is not None:
            return port, match.group("path") or "/", "healthcheck"
    port_key = next((key for key in PORT_KEYS if values.get(key, "").isdigit()), None)
    path = "" if gated else "/"
    if host_network and port_key:
        return int(values[port_key]), path, f"{port_key}, host networking"
    published = _published(spec, env, int(values[port_key]) if port_key else None) or _published(spec, env, None)
    if published is not None:
        return published, path, "published port"
    return None, "", "none"


# --------------------------------------------------------------------------- the project's files


@dataclass
class Scaffold:
    root: Path
    environment: str
    files: dict[str, str]  # path relative to root -> content
    private: set[str]  # files written with mode 0600
    stack: Stack
    next_steps: list[str]

    def shown_patch(self) -> str:
        """The patch as printed: the secrets the compose file held are masked (the file has them, 0600), and so
        are secret values on the lines around the edits (a password on Redis's command line, say)."""
        shown = self.stack.shown_patch
        for secret in sorted(self.stack.secrets, key=lambda s: -len(s.value)):
            shown = shown.replace(secret.value, MASK)
        return shown

    def as_dict(self) -> dict:
        return {"files": sorted(self.files), "environment": self.environment, "detected": self.stack.summary(),
                "compose_patch": self.shown_patch() or None, "next": self.next_steps}

    def text(self) -> str:
        stack = self.stack
        lines = [f"wrote {', '.join(sorted(self.files))}", "", "found in " + str(stack.compose_file) + ":"]
        for service in stack.services.values():
            lines.append(f"  {service.name:<16} {service.kind:<9} {service.why}")
        lines.append(f"  image {stack.image}, tag from ${{{stack.tag_variable}}}; HTTP check: "
                     + (f"127.0.0.1:{stack.health_port}{stack.health_path} ({stack.health_source})"
                        if stack.health_port else "none"))
        if stack.secrets:
            lines.append(f"  secrets (to the vault file): {', '.join(s.variable for s in stack.secrets)}")
        lines.extend(f"  note: {note}" for note in stack.notes)
        if stack.edits:
            lines += ["", "the compose file needs these edits (not made: see compose-edits.patch):"]
            lines += [f"  {edit}" for edit in stack.edits]
            if stack.patch:
                lines += ["", self.shown_patch().rstrip("\n")]
        lines += ["", "next:"] + [f"  {step}" for step in self.next_steps]
        return "\n".join(lines)


def plan(stack: Stack, root: Path, environment: str, hosts: list[str], app_root: str | None) -> Scaffold:
    if not ENV_NAME.fullmatch(environment):
        raise BadInput(f"invalid environment name {environment!r}: letters, digits, - and _")
    for host in hosts:
        if not HOST_NAME.fullmatch(host):
            raise BadInput(f"invalid host {host!r}: a host name or address as the inventory names it (set the SSH "
                           "user as ansible_user or in ansible.cfg, not user@host)")
    local = not hosts
    compose_dir = str(stack.compose_file.parent) if local else (app_root or f"/srv/{stack.project}")
    inventory = f"inventory/{environment}"
    files: dict[str, str] = {}
    private: set[str] = set()

    project = {"app": stack.project, "environments": {environment: {
        "inventory": inventory, **({"production": True} if environment == "production" else {}),
        "backup": stack.database is not None}}}
    files["deployctl.yml"] = (
        f"# deployctl project, from {stack.compose_file.name} by `deployctl init` (see the README)\n"
        + yaml.safe_dump(project, sort_keys=False))
    if local:
        group = {"hosts": {"localhost": None}}
        hosts_vars = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    else:
        group = {"hosts": {host: None for host in hosts}}
        hosts_vars = {}
    inventory_data = {"all": {"children": {"app": group, "db": {"hosts": {(hosts or ["localhost"])[0]: None}}},
                              **({"vars": hosts_vars} if hosts_vars else {})}}
    files[f"{inventory}/hosts.yml"] = yaml.safe_dump(inventory_data, sort_keys=False)
    files[f"{inventory}/group_vars/all/deployctl.yml"] = _variables(stack, compose_dir, local, hosts)
    if stack.secrets:
        vault = f"{inventory}/group_vars/all/vault.yml"
        # !unsafe: Ansible would template a value holding {{, {% or {# (a syntax error, or another value)
        body = "".join(f"# {', '.join(s.found)}\n{s.variable}: !unsafe {json.dumps(s.value)}\n"
                       for s in stack.secrets)
        files[vault] = ("# Secrets found in the compose environment. Encrypt this file before it goes anywhere:\n"
                        f"#   ansible-vault encrypt {vault}\n" + body)
        private.add(vault)
    if stack.patch:
        files["compose-edits.patch"] = stack.patch
        private.add("compose-edits.patch")  # its lines taken out hold the secrets moved to the vault

    compose_path = os.path.relpath(stack.compose_file, root)
    steps = []
    if stack.patch:
        directory = os.path.relpath(stack.compose_file.parent, root)
        dotenv = stack.compose_file.parent / ".env"
        # the secrets it moves there: a .env the patch creates would be 0644, one others may read stays so
        private_dotenv = stack.env_additions and (not dotenv.exists() or dotenv.stat().st_mode & 0o077)
        chmod = f" && chmod 600 {shlex.quote(os.path.join(directory, '.env'))}" if private_dotenv else ""
        steps.append(f"patch -p1 -d {shlex.quote(directory)} < compose-edits.patch{chmod} && rm compose-edits.patch"
                     "      # the edits above")
    elif stack.edits:
        steps.append(f"edit {compose_path} as listed above")
    if not local:
        steps.append(f"copy {', '.join([*stack.files, *stack.host_files])} to {compose_dir} on every host, at the "
                     "same paths")
    if stack.secrets:
        steps += _vault_steps(root, f"{inventory}/group_vars/all/vault.yml")
    compose = local_compose() if local else "docker compose"
    if stack.built:
        steps.append(f"{stack.tag_variable}=v1 {compose} -f {shlex.quote(compose_path)} build"
                     f"      # {stack.image}:v1")
    else:
        steps.append(f"build or tag {stack.image}:v1 on this machine")
    data_services = [s.service for s in (stack.database, stack.redis) if s is not None]
    if data_services:
        # a release starts the app's services only; its backup and migrations need the database running
        up = f"up -d {' '.join(data_services)}      # the data services: a release starts only the app's"
        steps.append(f"{compose} -p {stack.project} -f {shlex.quote(compose_path)} {up}" if local
                     else f"on every host, in {compose_dir}: docker compose -p {stack.project} {up}")
    env_option = "" if environment == "local" else f"-e {environment} "
    steps.append(f"deployctl {env_option}release v1")
    return Scaffold(root, environment, files, private, stack, steps)


def local_compose() -> str:
    """The compose command of this machine: the plugin, else the standalone docker-compose (Debian 12 packages
    only that one), so that the next commands work as printed."""
    try:
        if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20).returncode == 0:
            return "docker compose"
    except (OSError, subprocess.SubprocessError):
        pass
    return "docker-compose" if shutil.which("docker-compose") else "docker compose"


def _vault_steps(root: Path, vault: str) -> list[str]:
    """How to encrypt the vault file with the Ansible settings deployctl will use (README: The Ansible settings).
    A vault password file or an ansible.cfg that exists is never overwritten: the vault files the old password
    encrypts would be lost, and a second [defaults] makes Ansible refuse the file."""
    config = ansible_config.user_config(root)
    settings = configparser.ConfigParser(interpolation=None)
    with contextlib.suppress(configparser.Error):
        settings.read(config or [])
    if any(settings.get("defaults", key, fallback="") for key in ("vault_password_file", "vault_identity_list")):
        return [f"ansible-vault encrypt {vault}      # with the vault password {config} names"]
    steps = []
    if not (root / ".vault_pass").exists():
        steps.append("(umask 077; openssl rand -base64 32 > .vault_pass)      # keep it out of git")
    if config is None:
        steps.append("printf '[defaults]\\nvault_password_file = .vault_pass\\n' > ansible.cfg")
    else:
        password_file = ".vault_pass" if config.parent == root else str(root / ".vault_pass")
        steps.append(f"add `vault_password_file = {password_file}` to the [defaults] section of {config}")
    return [*steps, f"ansible-vault encrypt {vault}"]


def _variables(stack: Stack, compose_dir: str, local: bool, hosts: list[str]) -> str:
    def line(key: str, value, comment: str = "") -> str:
        dumped = yaml.safe_dump(value, default_flow_style=True, width=1000, sort_keys=False).strip()
        dumped = dumped.removesuffix("\n...").removesuffix("...").strip()
        return f"{key}: {dumped}" + (f"  # {comment}" if comment else "") + "\n"

    pulled = "." in stack.image.split("/", 1)[0] and "/" in stack.image
    source = "local" if local else ("pull" if pulled else "ship")
    out = ["# Written by `deployctl init` from " + str(stack.compose_file) + "; every deployctl_ variable is in\n"
           "# the roles' meta/argument_specs.yml (README: Docker Compose).\n",
           line("deployctl_strategy", "compose"),
           line("deployctl_app_root", compose_dir, "deployctl's record and lock: <app_root>/.deployctl"),
           line("deployctl_compose_dir", compose_dir, "the compose files and their .env on the hosts"),
           line("deployctl_compose_files", stack.files),
           line("deployctl_compose_project", stack.project),
           line("deployctl_compose_image", stack.image),
           line("deployctl_compose_image_variable", stack.tag_variable, "deployctl owns this line of .env"),
           line("deployctl_compose_image_source", source,
                "already on this machine" if local else ("from its registry" if pulled
                                                         else "from this machine's Docker engine, no registry")),
           line("deployctl_compose_app_services", stack.app_services),
           line("deployctl_compose_worker_services", stack.worker_services,
                "stopped while maintenance is on")]
    if stack.health_port is not None:
        out += [line("deployctl_compose_http_port", stack.health_port, stack.health_source),
                line("deployctl_compose_health_path", stack.health_path,
                     "" if stack.health_path else "container health only: its healthcheck names no URL")]
    else:
        out.append(line("deployctl_compose_health_path", "", "no HTTP check: container health only"))
    if stack.migrate_command:
        out.append(line("deployctl_compose_migrate_command", stack.migrate_command,
                        "a one-off container of the new image, before the switch"))
    else:
        out.append(line("deployctl_compose_migrate_command", [],
                        "e.g. [npm, run, migrate]: a one-off container of the new image"))
    if stack.database is not None:
        db = stack.database
        value = {"engine": db.engine, "service": db.service, "name": db.name, "user": db.user}
        if db.password_variable:
            value["password"] = f"{{{{ {db.password_variable} }}}}"
        out.append(line("deployctl_database", value, f"{db.image} in the compose service {db.service}"))
    if stack.redis is not None:
        redis = {"role": "data" if stack.redis.persistent else "cache", "service": stack.redis.service}
        # the backup talks to it from the db host: without its port, to whatever answers on 6379 there
        if stack.redis.reachable:
            redis.update(host="127.0.0.1", port=stack.redis.port)
        if stack.redis.password_variable:
            redis["password"] = f"{{{{ {stack.redis.password_variable} }}}}"
        written = line("deployctl_redis", redis, "persistence on: backed up with the database"
                       if stack.redis.persistent else "no persistence: a cache, left alone")
        out.append(written if stack.redis.reachable or not stack.redis.persistent else
                   "# publish Redis's port on the db host's 127.0.0.1 (backups reach it there), then uncomment:\n# "
                   + written)
    if stack.bot is not None and stack.bot.webhook and stack.bot.token_variable:
        bot = {"token": f"{{{{ {stack.bot.token_variable} }}}}",
               "webhook_url": stack.bot.webhook_url or "https://YOUR.DOMAIN/telegram/webhook"}
        if stack.bot.secret_token_variable:
            bot["secret_token"] = f"{{{{ {stack.bot.secret_token_variable} }}}}"
        if stack.bot.api_url:
            bot["api_url"] = stack.bot.api_url
        out.append(("" if stack.bot.webhook_url else "# set the webhook's URL, then uncomment:\n# ")
                   + line("deployctl_telegram_bot", bot, f"the webhook bot {stack.bot.service}: paused in maintenance"))
    checks = []
    if stack.health_port is not None and stack.health_path:
        checks.append({"name": "health", "type": "http",
                       "url": f"http://127.0.0.1:{stack.health_port}{stack.health_path}"})
    elif stack.health_port is not None:
        checks.append({"name": "port", "type": "tcp", "host": "127.0.0.1", "port": stack.health_port})
    if stack.redis is not None and stack.redis.reachable:
        check = {"name": "redis", "type": "redis", "host": "127.0.0.1", "port": stack.redis.port}
        if stack.redis.password_variable:
            check["password"] = f"{{{{ {stack.redis.password_variable} }}}}"
        checks.append(check)
    if stack.bot is not None and stack.bot.token_variable:
        check = {"name": "bot", "type": "telegram", "token": f"{{{{ {stack.bot.token_variable} }}}}"}
        if stack.bot.webhook_url:
            check["webhook_url"] = stack.bot.webhook_url
        if stack.bot.api_url:
            check["api_url"] = stack.bot.api_url
        if not stack.bot.webhook or stack.bot.webhook_url:  # a webhook bot's check needs its URL
            checks.append(check)
    out.append("deployctl_verify_checks:\n" + "".join(
        f"  - {yaml.safe_dump(check, default_flow_style=True, sort_keys=False, width=1000).strip()}\n"
        for check in checks) if checks else line("deployctl_verify_checks", []))
    return "".join(out)


def write(scaffold: Scaffold) -> list[str]:
    """Write every file, or none: an existing one is refused (exit 2) before anything is written."""
    existing = [name for name in sorted(scaffold.files) if (scaffold.root / name).exists()]
    if existing:
        raise BadInput(f"deployctl init writes no file that exists already: {', '.join(existing)} "
                       f"(in {scaffold.root})")
    made: list[Path] = []  # files and directories this call created, removed again when one cannot be written
    for name, content in scaffold.files.items():
        target = scaffold.root / name
        try:
            missing = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
            target.parent.mkdir(parents=True, exist_ok=True)
            made += reversed(missing)
            mode = 0o600 if name in scaffold.private else 0o644
            handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            made.append(target)
            with os.fdopen(handle, "w") as stream:
                stream.write(content)
        except OSError as exc:
            for path in reversed(made):
                with contextlib.suppress(OSError):
                    if path.is_dir():
                        path.rmdir()
                    else:
                        path.unlink()
            raise BadInput(f"deployctl init could not write {name} ({exc.strerror}); nothing was written "
                           f"(in {scaffold.root})") from None
    return sorted(scaffold.files)


def init(compose_file: Path, root: Path, environment: str, hosts: list[str] | None = None,
         app_root: str | None = None) -> Scaffold:
    scaffold = plan(detect(compose_file), root.resolve(), environment, list(hosts or []), app_root)
    write(scaffold)
    return scaffold
