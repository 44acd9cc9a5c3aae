"""A throwaway PostgreSQL server for a test session.

``start_postgres()`` creates a new cluster in a temporary directory with the
server's own ``initdb`` and ``pg_ctl``, starts it listening only on 127.0.0.1 on
a free port with ``trust`` authentication, creates one database and returns a
:class:`PostgresServer` whose URLs point at it.  ``PostgresServer.stop()`` (also
registered with :mod:`atexit`) stops the server with ``pg_ctl stop -m fast`` and
removes the directory.

PostgreSQL refuses to run as root, so when this process is root the server runs
as a dedicated system user (``awaitlet-pg``, created with ``useradd`` if it does
not exist; ``AWAITLET_PG_OS_USER`` names another).  The server binaries are looked
up in ``AWAITLET_PG_BINDIR``, then ``/usr/lib/postgresql/<version>/bin`` (Debian's
layout, newest version first), then ``PATH``.  If they are not found,
:class:`PostgresUnavailable` says what to install; nothing is skipped.

Only the standard library is used.  Run it directly to try it out::

    python tests/_postgres.py
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bindir", "start_postgres"]

DEFAULT_OS_USER = "awaitlet-pg"
DB_USER = "awaitlet"
DB_NAME = "awaitlet_test"
HOST = "127.0.0.1"

INSTALL_HINT = (
    "The PostgreSQL server binaries (initdb, pg_ctl) are needed for the PostgreSQL "
    "tests. On Debian/Ubuntu: `apt-get install postgresql`. Or point "
    "AWAITLET_PG_BINDIR at the directory that holds them."
)

# Settings for a disposable server: nothing needs to survive a crash, and the
# tests open many connections at once.
SERVER_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "unix_socket_directories": "''",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
}

# Sync DBAPI drivers SQLAlchemy can use for PostgreSQL, in order of preference.
SYNC_DRIVERS = (("psycopg", "psycopg"), ("psycopg2", "psycopg2"), ("pg8000", "pg8000"))


class PostgresUnavailable(RuntimeError):
    """The server binaries are missing or the server could not be started."""


def find_bindir() -> Path:
    """Return the directory holding ``initdb`` and ``pg_ctl``, or raise PostgresUnavailable."""

    def has_tools(directory: Path) -> bool:
        return all(os.access(directory / tool, os.X_OK) for tool in ("initdb", "pg_ctl"))

    override = os.environ.get("AWAITLET_PG_BINDIR")
    if override:
        if has_tools(Path(override)):
            return Path(override)
        raise PostgresUnavailable(
            f"AWAITLET_PG_BINDIR={override} holds no initdb and pg_ctl. {INSTALL_HINT}"
        )

    def version_key(path: str) -> tuple[int, ...]:
        # /usr/lib/postgresql/<version>/bin: newest major version first.
        version = Path(path).parent.name
        return tuple(int(part) for part in re.findall(r"\d+", version))

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True):
        if has_tools(Path(candidate)):
            return Path(candidate)

    initdb = shutil.which("initdb")
    if initdb:
        directory = Path(initdb).resolve().parent
        if has_tools(directory):
            return directory
    raise PostgresUnavailable(INSTALL_HINT)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def sync_driver() -> str | None:
    """Name the first importable sync PostgreSQL driver for SQLAlchemy, if any."""
    for dialect_driver, module in SYNC_DRIVERS:
        try:
            importlib.import_module(module)
        except Exception:  # ImportError, or psycopg finding no libpq
            continue
        return dialect_driver
    return None


def _ensure_os_user(name: str) -> pwd.struct_passwd:
    """Return the account ``name``, creating it as a system user without a home if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--no-create-home", "--user-group", "--shell", "/bin/false", name],
        capture_output=True,
        text=True,
    )
    try:
        # Another process may have created it in the meantime (exit code 9).
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresUnavailable(
            f"PostgreSQL cannot run as root and creating the system user {name!r} failed "
            f"(exit code {result.returncode}): {result.stderr.strip()}"
        ) from None


@dataclass
class PostgresServer:
    """A running throwaway cluster; build it with :func:`start_postgres`."""

    bindir: Path
    base_dir: Path
    port: int
    os_user: pwd.struct_passwd | None
    user: str = DB_USER
    database: str = DB_NAME
    _stopped: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    @property
    def async_url(self) -> str:
        """A SQLAlchemy URL for the asyncpg driver."""
        return self.url("asyncpg")

    @property
    def sync_url(self) -> str | None:
        """A SQLAlchemy URL for the first installed sync driver, or None if there is none."""
        driver = sync_driver()
        return self.url(driver) if driver else None

    def url(self, driver: str) -> str:
        """A SQLAlchemy URL for ``postgresql+<driver>``."""
        return f"postgresql+{driver}://{self.user}@{HOST}:{self.port}/{self.database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a server tool from the bindir as the server's OS user."""
        cmd = [str(self.bindir / args[0]), *args[1:]]
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        kwargs: dict = {}
        if self.os_user is not None:
            env["HOME"] = str(self.base_dir)
            env["USER"] = env["LOGNAME"] = self.os_user.pw_name
            kwargs = {
                "user": self.os_user.pw_uid,
                "group": self.os_user.pw_gid,
                "extra_groups": [],
            }
        # The output goes to a file: a server started by pg_ctl inherits the
        # descriptors, so a pipe would never reach end of file.
        with tempfile.TemporaryFile("w+") as output:
            result = subprocess.run(
                cmd,
                cwd=self.base_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                **kwargs,
            )
            output.seek(0)
            text = output.read()
        completed = subprocess.CompletedProcess(cmd, result.returncode, text, "")
        if check and result.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(cmd)} failed with exit code {result.returncode}:\n{text}"
                + self._log_tail()
            )
        return completed

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()[-30:]
        except OSError:
            return ""
        return "\n--- server log ---\n" + "\n".join(lines) if lines else ""

    def _write_settings(self) -> None:
        settings = dict(SERVER_SETTINGS, port=str(self.port))
        text = "".join(f"{name} = {value}\n" for name, value in settings.items())
        # Appended last, these override the defaults initdb wrote.
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# throwaway test server\n" + text)

    def _init(self) -> None:
        self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            self.user,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )

    def _start(self) -> None:
        self._write_settings()
        self._run(
            "pg_ctl",
            "start",
            "--pgdata",
            str(self.data_dir),
            "--log",
            str(self.log_file),
            "--wait",
            "--timeout",
            "60",
        )
        self._run(
            "createdb",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--username",
            self.user,
            self.database,
        )

    def stop(self) -> None:
        """Stop the server and remove its directory; safe to call more than once."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run(
                    "pg_ctl",
                    "stop",
                    "--pgdata",
                    str(self.data_dir),
                    "--mode",
                    "fast",
                    "--wait",
                    "--timeout",
                    "60",
                    check=False,
                )
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def start_postgres(attempts: int = 3) -> PostgresServer:
    """Create, start and return a throwaway cluster; :meth:`PostgresServer.stop` ends it.

    The server is stopped at interpreter exit if nobody stopped it before.
    """
    bindir = find_bindir()
    os_user = None
    if os.geteuid() == 0:
        os_user = _ensure_os_user(os.environ.get("AWAITLET_PG_OS_USER", DEFAULT_OS_USER))

    base_dir = Path(tempfile.mkdtemp(prefix="awaitlet-pg-"))
    if os_user is not None:
        os.chown(base_dir, os_user.pw_uid, os_user.pw_gid)
    server = PostgresServer(bindir=bindir, base_dir=base_dir, port=free_port(), os_user=os_user)
    atexit.register(server.stop)
    try:
        server._init()
        for attempt in range(attempts):
            try:
                server._start()
                return server
            except PostgresUnavailable:
                # Most likely another process took the port between free_port()
                # and the server's bind; try again on a new one.
                if attempt == attempts - 1:
                    raise
                server._run("pg_ctl", "stop", "--pgdata", str(server.data_dir), check=False)
                server.port = free_port()
    except BaseException:
        server.stop()
        raise
    raise AssertionError("unreachable")


if __name__ == "__main__":
    demo = start_postgres()
    with contextlib.closing(socket.create_connection((HOST, demo.port), timeout=5)):
        print(f"PostgreSQL is listening on {HOST}:{demo.port}")
    print("async URL:", demo.async_url)
    print("sync URL: ", demo.sync_url)
    demo.stop()
    print("stopped; removed", demo.base_dir, "->", "gone" if not demo.base_dir.exists() else "left")
