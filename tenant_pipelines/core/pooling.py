"""Connection pooling: PgBouncer in transaction mode in front of the billing database.

What it pools and how it authenticates, as plain functions:

- one ``[databases]`` alias per tier (``billing_enterprise``, ``billing_growth``,
  ``billing_starter``, ``billing_free``), sized from ``tier_limits.pool_size``, plus a plain
  ``billing``. Each alias is a separate pool of server connections: a burst of free-tier
  clients queues in ``billing_free`` and cannot take the connections enterprise tenants use.
- ``auth_type = scram-sha-256`` with a userlist that holds the application role's SCRAM
  verifier, copied from ``pg_authid`` by an admin. PgBouncer checks the client's SCRAM proof
  against it and re-uses the proof to log in to PostgreSQL: no plain-text password is stored
  anywhere, and no lookup function is installed in the database.

Transaction pooling is safe here because the tenant context and the tier limits are
transaction-local (``fn_set_tenant_context``, ``fn_set_tenant_resources``). Only the
application role goes through the pooler: admin work (migrations, DDL, VACUUM, session
advisory locks) connects to PostgreSQL directly. docs/pooling.md has the reasoning.

Every name and value that goes into a generated file is checked or quoted here: tier names
become database names and are refused unless plain; connection-string values are quoted;
auth-file fields are quoted; nothing with a line break or NUL is written.

The pool sizes of a pgbouncer.ini can also be read back (``pgbouncer_tier_pool_sizes``), for
the drift check that compares the configuration in force with ``tier_limits``.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tenant_pipelines import settings
from tenant_pipelines.db.connect import connect
from tenant_pipelines.db.names import APP_ROLE
from tenant_pipelines.errors import InvalidInput, TenantPipelinesError

POOLED_DATABASE = "billing"
# The seed's per-tier pool sizes; the database's tier_limits.pool_size holds the same figures.
SEED_POOL_SIZES: dict[str, int] = {"enterprise": 50, "growth": 25, "starter": 10, "free": 5}
DEFAULT_POOL_SIZE = 20  # the plain `billing` alias
PGBOUNCER_DEFAULT_POOL_SIZE = 20  # PgBouncer's own default_pool_size, when the file sets none
MAX_POOL_SIZE = 10_000
MAX_CLIENT_CONN = 1000
# What PgBouncer runs on a server connection after every client transaction, before the next
# client gets it (server_reset_query_always = 1), so that nothing a client leaves in its session
# reaches the next one: the third layer of docs/pooling.md (the tenant context does not depend
# on it: sql/0017 binds the context to its transaction, and billing_app cannot create temp
# tables). Two queries do it, and the audit accepts either:
#
# - DISCARD ALL, PostgreSQL's own;
# - SESSION_RESET_QUERY, DISCARD ALL's parts as PostgreSQL's docs list them, but DISCARD PLANS
#   (and SET SESSION AUTHORIZATION DEFAULT, which only a superuser's session can need): temp
#   tables, every session setting (SET without LOCAL, RESET ROLE), cursors, prepared statements,
#   LISTEN, session advisory locks and sequence state go; cached plans, which hold no tenant's
#   data, stay. DISCARD PLANS makes the next transaction plan again everything PL/pgSQL caches
#   (fn_set_tenant_context's queries among them): in bench/pgbouncer.py the generated config
#   with SESSION_RESET_QUERY keeps 0.83-0.86x the TPS of no reset, DISCARD ALL 0.70-0.77x
#   (docs/benchmarks/pgbouncer.md). So the generated config uses SESSION_RESET_QUERY. A session
#   state that a later PostgreSQL adds would need adding here; DISCARD ALL would cover it.
SERVER_RESET_QUERY = "DISCARD ALL"
SESSION_RESET_QUERY = ("CLOSE ALL; RESET ROLE; RESET ALL; DEALLOCATE ALL; UNLISTEN *; "
                       "SELECT pg_advisory_unlock_all(); DISCARD SEQUENCES; DISCARD TEMP")
RESET_QUERIES = (SERVER_RESET_QUERY, SESSION_RESET_QUERY)
DEFAULT_LISTEN_PORT = 6432  # for a config printed for someone else's PgBouncer
# PgBouncer 1.18 stops reading its auth file at the first field longer than this (it drops
# every later user), so longer ones are refused; 1,000 bytes was tested.
MAX_AUTH_FIELD_BYTES = 1000

_TIER = re.compile(r"[a-z][a-z0-9_]{0,39}")
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.:/@-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- checking and quoting what goes into the files ------------------------------------------------


def tier_alias(tier: str) -> str:
    """The PgBouncer database (pool) for ``tier``: ``billing_<tier>``. PgBouncer 1.18 reads
    database names as bare words (a quoted name is a syntax error that stops it loading), so a
    tier name that is not plain is refused, not quoted."""
    if not isinstance(tier, str) or not _TIER.fullmatch(tier):
        raise InvalidInput(
            f"tier {tier!r}: cannot name a PgBouncer pool; tier names are 1-40 lower-case letters, "
            "digits or '_', starting with a letter"
        )
    return f"{POOLED_DATABASE}_{tier}"


def connstr_value(value: str, what: str) -> str:
    """A value for a ``[databases]`` connection string: bare when plain, else in single quotes
    with ``'`` doubled (PgBouncer's own quoting). Line breaks and control characters are refused:
    the file is read line by line."""
    if not value:
        raise InvalidInput(f"{what}: empty; PgBouncer refuses empty connection parameters")
    if _CONTROL.search(value):
        raise InvalidInput(f"{what} {value!r}: contains a line break or control character; rename it")
    return value if _PLAIN_VALUE.fullmatch(value) else "'" + value.replace("'", "''") + "'"


def ini_path(value: str, what: str) -> str:
    """A file path for ``[pgbouncer]``: the whole rest of the line is the value, trimmed, with
    no quoting at all, so it must be absolute, one line and without surrounding blanks."""
    if _CONTROL.search(value) or value != value.strip() or not value.startswith("/"):
        raise InvalidInput(
            f"{what} {value!r}: PgBouncer needs an absolute path on one line, without leading or "
            "trailing blanks; choose another folder"
        )
    return value


def auth_field(value: str, what: str) -> str:
    """A field of the auth file: in double quotes, ``"`` doubled. Line breaks, control
    characters and over-long values are refused."""
    if _CONTROL.search(value):
        raise InvalidInput(f"{what}: contains a line break or control character; PgBouncer's auth file cannot hold it")
    if len(value.encode()) > MAX_AUTH_FIELD_BYTES:
        raise InvalidInput(f"{what}: longer than {MAX_AUTH_FIELD_BYTES} bytes; PgBouncer's auth file cannot hold it")
    return '"' + value.replace('"', '""') + '"'


def parse_pool_sizes(items: Sequence[str]) -> dict[str, int]:
    """``["enterprise=80", "free=2"]`` as ``{"enterprise": 80, "free": 2}``, or a one-line error."""
    sizes: dict[str, int] = {}
    for item in items:
        tier, sep, text = item.partition("=")
        if not sep:
            raise InvalidInput(f"pool size {item!r}: write TIER=N, e.g. free=5")
        tier_alias(tier.strip())
        sizes[tier.strip()] = _pool_size(text.strip(), f"pool size of tier {tier.strip()}")
    return sizes


def _pool_size(value: object, what: str) -> int:
    try:
        size = int(str(value))
    except ValueError:
        raise InvalidInput(f"{what}: {value!r} is not a whole number") from None
    if not 1 <= size <= MAX_POOL_SIZE:
        raise InvalidInput(f"{what}: {size} is out of range; give 1 to {MAX_POOL_SIZE}")
    return size


# -- the two files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerAddress:
    """Where PgBouncer's server connections go."""

    host: str
    port: int
    dbname: str

    @classmethod
    def from_dsn(cls, dsn: str) -> "ServerAddress":
        info = conninfo_to_dict(dsn)
        host = str(info.get("host") or info.get("hostaddr") or "")
        if not host:
            raise InvalidInput("the database URL names no host: PgBouncer needs one (host=... or postgresql://HOST/...)")
        if "," in host:
            raise InvalidInput(f"the database URL names several hosts ({host}): PgBouncer needs exactly one")
        return cls(host=host, port=int(info.get("port") or 5432), dbname=str(info.get("dbname") or POOLED_DATABASE))


@dataclass(frozen=True)
class PoolerConfig:
    server: ServerAddress
    listen_port: int
    auth_file: str
    pool_sizes: Mapping[str, int] = field(default_factory=lambda: dict(SEED_POOL_SIZES))
    default_pool_size: int = DEFAULT_POOL_SIZE
    max_client_conn: int = MAX_CLIENT_CONN
    logfile: str | None = None
    pidfile: str | None = None
    server_reset_query: str = SESSION_RESET_QUERY
    server_reset_query_always: bool = True  # False only for bench/pgbouncer.py's comparison


def render_pgbouncer_ini(cfg: PoolerConfig) -> str:
    """The text of pgbouncer.ini: transaction pooling, one pool per tier, SCRAM auth."""
    server = (
        f"host={connstr_value(cfg.server.host, 'server host')} port={int(cfg.server.port)} "
        f"dbname={connstr_value(cfg.server.dbname, 'server database name')}"
    )
    databases = [
        f"{tier_alias(tier)} = {server} pool_size={_pool_size(size, f'pool size of tier {tier}')}"
        for tier, size in cfg.pool_sizes.items()
    ]
    databases.append(f"{POOLED_DATABASE} = {server} pool_size={_pool_size(cfg.default_pool_size, 'default pool size')}")
    files = [f"auth_file = {ini_path(cfg.auth_file, 'auth file')}"]
    if cfg.logfile:
        files.append(f"logfile = {ini_path(cfg.logfile, 'log file')}")
    if cfg.pidfile:
        files.append(f"pidfile = {ini_path(cfg.pidfile, 'pid file')}")
    return "\n".join([
        ";; PgBouncer for the tenant-pipelines billing database, generated by `tenant-pipelines",
        ";; pgbouncer` (`up` writes it and overwrites edits; `config` prints it for your own PgBouncer).",
        ";;",
        ";; Transaction pooling: a server connection serves one client transaction, then the next",
        ";; client's. The tenant context and tier limits are transaction-local, so none of them",
        ";; outlives its transaction. Nothing else a client leaves in the session survives either:",
        ";; server_reset_query below clears it after every transaction. So no client may rely on",
        ";; SET without LOCAL, session advisory locks, LISTEN, temporary tables across transactions,",
        ";; or named prepared statements (psycopg: prepare_threshold=None).",
        ";; Admin work (migrations, DDL, VACUUM) connects to PostgreSQL directly.",
        "",
        "[databases]",
        ";; One pool per tier: its size is the server connections that tier's clients share",
        ";; (from tier_limits.pool_size). Connect to billing_<tier> for a tenant of that tier.",
        *databases,
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {int(cfg.listen_port)}",
        ";; TCP on loopback only, no Unix socket.",
        "unix_socket_dir =",
        "pool_mode = transaction",
        ";; SCRAM all the way: clients prove the password to PgBouncer against the verifier in",
        ";; auth_file (copied from pg_authid), and PgBouncer re-uses that proof with PostgreSQL.",
        "auth_type = scram-sha-256",
        *files,
        f"max_client_conn = {int(cfg.max_client_conn)}",
        f"default_pool_size = {_pool_size(cfg.default_pool_size, 'default pool size')}",
        "reserve_pool_size = 0",
        ";; Run after every client transaction, before the server connection serves another client:",
        ";; whatever a client left in its session (temp tables, SET without LOCAL, session advisory",
        ";; locks) is gone before the next client arrives.",
        f"server_reset_query = {cfg.server_reset_query}",
        f"server_reset_query_always = {1 if cfg.server_reset_query_always else 0}",
        "ignore_startup_parameters = extra_float_digits",
        "log_connections = 0",
        "log_disconnections = 0",
        "",
    ])


def render_userlist(logins: Mapping[str, str]) -> str:
    """The text of userlist.txt: one ``"role" "SCRAM verifier or password"`` line per login."""
    lines = [";; tenant-pipelines: who may log in through PgBouncer (role, SCRAM verifier from pg_authid)"]
    for role, secret in logins.items():
        lines.append(f"{auth_field(role, 'role name')} {auth_field(secret, f'password of {role}')}")
    return "\n".join(lines) + "\n"


# -- reading a pgbouncer.ini back ------------------------------------------------------------------

# One ``key=value`` of a [databases] connection string, the value bare or in single quotes with
# ``'`` doubled; blanks around ``=`` are allowed, as PgBouncer allows them.
_CONNSTR_PAIR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^']|'')*'|[^\s']+)")


def _connstr_params(text: str) -> dict[str, str] | None:
    """The parameters of a connection string, or None when it is not one."""
    params: dict[str, str] = {}
    text, pos = text.strip(), 0
    while pos < len(text):
        match = _CONNSTR_PAIR.match(text, pos)
        if match is None:
            return None
        value = match.group(2)
        params[match.group(1)] = value[1:-1].replace("''", "'") if value.startswith("'") else value
        pos = match.end()
    return params


def _ini_section(parser: configparser.ConfigParser, name: str) -> Mapping[str, str]:
    """A section by its name in any case (PgBouncer's ``[databases]``, ``[pgbouncer]``); merged
    when the file has it more than once."""
    merged: dict[str, str] = {}
    for section in parser.sections():
        if section.strip().lower() == name:
            merged.update(parser[section])
    return merged


_FIX_INI = "fix the file, or regenerate it from tier_limits with 'tenant-pipelines pgbouncer up'"


def _parse_pgbouncer_ini(text: str, source: str) -> configparser.ConfigParser:
    """A pgbouncer.ini's text as PgBouncer reads it, or a one-line error naming ``source``."""
    fix = _FIX_INI
    # PgBouncer skips leading blanks, where configparser would read a continuation line.
    lines = [line.lstrip() for line in text.splitlines()]
    parser = configparser.ConfigParser(
        delimiters=("=",), comment_prefixes=(";", "#"), interpolation=None, strict=False,
        default_section="\n",  # no header can name it: PgBouncer has no [DEFAULT] section
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep the case
    try:
        parser.read_string("\n".join(l for l in lines if not l.startswith("%include")), source=source)
    except configparser.Error as exc:
        problem = " ".join(str(exc).split()) or type(exc).__name__
        raise TenantPipelinesError(f"{source}: not a config PgBouncer can read ({problem}); {fix}") from None
    for section in parser.sections():
        for key in parser[section]:
            if not key or any(c.isspace() for c in key):
                raise TenantPipelinesError(f"{source}: [{section}] has the key {key!r}, which PgBouncer "
                                           f"cannot read (a blank in it, or no '=' after it); {fix}")
    return parser


def pgbouncer_session_reset(text: str, source: str = "pgbouncer.ini") -> str | None:
    """None when the config clears every client's session state before the next client gets
    the server connection (``server_reset_query`` one of RESET_QUERIES, with
    ``server_reset_query_always = 1``); otherwise what is missing, in a few words."""
    options = {k.lower(): v.strip() for k, v in _ini_section(_parse_pgbouncer_ini(text, source), "pgbouncer").items()}
    query = options.get("server_reset_query", "DISCARD ALL")  # PgBouncer's default
    always = options.get("server_reset_query_always", "0").lower() in ("1", "true", "yes", "on")
    if " ".join(query.rstrip(";").split()).upper() not in {" ".join(q.split()).upper() for q in RESET_QUERIES}:
        return f"server_reset_query is {query!r}, which does not clear every session's state"
    if not always and options.get("pool_mode", "session").lower() != "session":
        return "server_reset_query_always is off, so in transaction pooling no client's session state is cleared"
    return None


def pgbouncer_tier_pool_sizes(text: str, source: str = "pgbouncer.ini") -> dict[str, int]:
    """The pool size of each ``billing_<tier>`` entry in the ``[databases]`` section of a
    pgbouncer.ini's text, by tier. An entry without ``pool_size=`` gets ``[pgbouncer]``'s
    ``default_pool_size`` (20 when unset, as in PgBouncer). Other databases (``billing``,
    ``*``) are left out; ``%include`` lines are skipped, not followed. A file that cannot be
    read as a PgBouncer config raises TenantPipelinesError naming ``source``."""
    fix = _FIX_INI
    parser = _parse_pgbouncer_ini(text, source)

    def whole_number(value: str, what: str) -> int:
        if not value.strip().isdigit():
            raise TenantPipelinesError(f"{source}: {what} is {value!r}, not a whole number; {fix}")
        return int(value)

    options = {key.lower(): value for key, value in _ini_section(parser, "pgbouncer").items()}
    default = whole_number(options["default_pool_size"], "default_pool_size") \
        if "default_pool_size" in options else PGBOUNCER_DEFAULT_POOL_SIZE
    prefix = f"{POOLED_DATABASE}_"
    sizes: dict[str, int] = {}
    for alias, connstr in _ini_section(parser, "databases").items():
        tier = alias[len(prefix):]
        if not alias.startswith(prefix) or not _TIER.fullmatch(tier):
            continue
        params = _connstr_params(connstr)
        if params is None:
            raise TenantPipelinesError(f"{source}: the entry of {alias} is not a connection string "
                                       f"(key=value ...): {connstr!r}; {fix}")
        sizes[tier] = whole_number(params["pool_size"], f"pool_size of {alias}") if "pool_size" in params else default
    return sizes


def read_pgbouncer_ini(path: Path) -> str:
    """The text of a pgbouncer.ini, or a one-line error naming it."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise TenantPipelinesError(
            f"PgBouncer config {path}: cannot read it ({reason}); make it readable, or point "
            f"{settings.PGBOUNCER_INI_ENV} at the pgbouncer.ini your PgBouncer reads"
        ) from None


# -- what the database says ------------------------------------------------------------------------


def tier_pool_sizes(conn: psycopg.Connection) -> dict[str, int]:
    """``tier_limits.pool_size`` per tier, most important tier first."""
    try:
        rows = conn.execute("SELECT tier, pool_size FROM tier_limits ORDER BY priority, tier").fetchall()
    except psycopg.errors.UndefinedTable:
        raise TenantPipelinesError("the database has no tier_limits table: run 'tenant-pipelines db migrate'") from None
    if not rows:
        raise TenantPipelinesError("tier_limits is empty: it needs one row per tier, with its pool_size")
    return {tier: size for tier, size in rows}


def pool_sizes_with_overrides(base: Mapping[str, int], overrides: Mapping[str, int]) -> dict[str, int]:
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise InvalidInput(f"tier {unknown[0]!r} is not in tier_limits; known tiers: {', '.join(base)}")
    return {tier: overrides.get(tier, size) for tier, size in base.items()}


def role_scram_secret(conn: psycopg.Connection, role: str) -> str:
    """The SCRAM verifier PostgreSQL stores for ``role`` (``pg_authid.rolpassword``)."""
    try:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        raise TenantPipelinesError(
            f"reading {role}'s password verifier from pg_authid needs a superuser: "
            "point BILLING_DATABASE_URL at one, or write PgBouncer's auth file yourself"
        ) from None
    if row is None:
        raise TenantPipelinesError(f"role {role} does not exist: run 'tenant-pipelines db migrate'")
    if row[0] is None:
        raise TenantPipelinesError(f"role {role} has no password, so it cannot log in: ALTER ROLE {role} PASSWORD '...'")
    if not row[0].startswith("SCRAM-SHA-256$"):
        raise TenantPipelinesError(
            f"role {role}'s password is not stored as SCRAM: SET password_encryption = 'scram-sha-256', "
            f"then set it again (ALTER ROLE {role} PASSWORD '...')"
        )
    return row[0]


def ensure_role_password(conn: psycopg.Connection, role: str, password: str) -> bool:
    """Give ``role`` this password when it has none. Only its SCRAM verifier is sent (computed
    here by libpq), never the password. Returns whether it was set."""
    has = conn.execute("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
    if has is None:
        raise TenantPipelinesError(f"role {role} does not exist: run 'tenant-pipelines db migrate'")
    if has[0]:
        return False
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))
    return True


def pooled_dsn(port: int, *, database: str = POOLED_DATABASE, user: str = APP_ROLE, password: str | None = None) -> str:
    """The DSN of a PgBouncer pool on the loopback: ``postgresql://billing_app[:pw]@127.0.0.1:PORT/DB``."""
    credentials = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return f"postgresql://{credentials}@127.0.0.1:{int(port)}/{quote(database, safe='')}"


def connect_pooled(dsn: str, **kwargs: object) -> psycopg.Connection:
    """A connection through PgBouncer: without server-side prepared statements, which a pooled
    server connection would not have for the next transaction (PgBouncer < 1.21)."""
    kwargs.setdefault("prepare_threshold", None)
    return connect(dsn, **kwargs)


# -- running it ------------------------------------------------------------------------------------


def pooler_config(
    conn: psycopg.Connection,
    admin_dsn: str,
    *,
    listen_port: int,
    auth_file: str,
    pool_overrides: Mapping[str, int] | None = None,
    default_pool_size: int = DEFAULT_POOL_SIZE,
    logfile: str | None = None,
    pidfile: str | None = None,
) -> PoolerConfig:
    """The configuration for ``admin_dsn``'s database, pool sizes read from its tier_limits."""
    return PoolerConfig(
        server=ServerAddress.from_dsn(admin_dsn),
        listen_port=listen_port,
        auth_file=auth_file,
        pool_sizes=pool_sizes_with_overrides(tier_pool_sizes(conn), pool_overrides or {}),
        default_pool_size=_pool_size(default_pool_size, "default pool size"),
        logfile=logfile,
        pidfile=pidfile,
    )


MAX_PORT = 65535
USERLIST_FIX = "give a file path in an existing folder you can write"


def check_listen_port(port: object) -> int:
    """A TCP port, 1 to 65535, or a one-line InvalidInput."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= MAX_PORT:
        raise InvalidInput(f"listen port {port!r}: out of range; give 1 to {MAX_PORT}")
    return port


def check_userlist_path(path: Path) -> Path:
    """Where ``pgbouncer config --userlist`` may write the auth file, as an absolute path: a new
    or existing file (not a folder) in an existing folder, on one line; else a one-line
    InvalidInput, before anything is read or written. Whether the folder takes the file shows
    only when it is written (root ignores mode bits): that error is one line too."""
    path = Path(path).absolute()
    try:
        if path.is_dir():
            raise InvalidInput(f"auth file {path}: it is a folder; {USERLIST_FIX}, e.g. {path / 'userlist.txt'}")
        if not path.parent.exists():
            raise InvalidInput(f"auth file {path}: the folder {path.parent} does not exist; create it, or "
                               f"{USERLIST_FIX}")
        if not path.parent.is_dir():
            raise InvalidInput(f"auth file {path}: {path.parent} is a file, not a folder; {USERLIST_FIX}")
    except OSError as exc:
        raise InvalidInput(f"auth file {path}: cannot look at it ({exc.strerror or type(exc).__name__}); "
                           f"{USERLIST_FIX}") from None
    ini_path(str(path), "auth file")  # the config names it: PgBouncer must be able to read it back
    return path


