"""A throwaway PostgreSQL cluster for the ``postgres`` tests: initdb in a temporary folder, a free port on loopback,
one database owned by an ordinary role with a password, and everything stopped and removed afterwards.

The server binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``) or from the
PATH. PostgreSQL refuses to run as root: as root, its commands run as the ``postgres`` system user (``runuser``),
which owns the cluster's folder. Without the binaries, or when they cannot start a cluster here, the test is
skipped, or fails under ``LLMOPS_REQUIRE_SERVICES=1`` (:func:`tests.services.require`).
"""
from __future__ import annotations

import asyncio
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llmops.flows.local.server import free_port
from tests.services import require

HOST = "127.0.0.1"


@dataclass(frozen=True)
class PostgresDatabase:
    """One database of a running cluster, reachable over TCP with a password (as a remote one would be)."""

    port: int
    user: str
    password: str
    database: str
    host: str = HOST

    @property
    def url(self) -> str:
        """The SQLAlchemy form Prefect takes (``PREFECT_API_DATABASE_CONNECTION_URL``): the asyncpg driver."""
        return f"postgresql+asyncpg://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """The libpq form (asyncpg.connect, psql)."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def fetch(self, query: str, *args) -> list[dict]:
        """Run ``query`` over a fresh asyncpg connection; the rows as dicts."""
        import asyncpg

        async def run() -> list[dict]:
            connection = await asyncpg.connect(self.dsn)
            try:
                return [dict(row) for row in await connection.fetch(query, *args)]
            finally:
                await connection.close()

        return asyncio.run(run())


def server_bindir() -> Optional[Path]:
    """The folder holding ``initdb`` and ``pg_ctl``: the PATH's, else Debian's newest version, else None."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    debian = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
              if Path(p).with_name("pg_ctl").exists()]
    return max(debian, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else -1, default=None)


def _run_as() -> tuple[list[str], Optional[pwd.struct_passwd]]:
    """The command prefix that runs the server binaries as a user PostgreSQL accepts, and that user (None: us)."""
    if os.geteuid() != 0:
        return [], None
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        account = None
    runuser = shutil.which("runuser")
    require(account is not None and runuser is not None,
            "running as root, PostgreSQL needs the 'postgres' system user and runuser (Debian's postgresql)")
    return [runuser, "-u", "postgres", "--"], account


@contextmanager
def throwaway_postgres(database: str = "prefect", user: str = "prefect") -> Iterator[PostgresDatabase]:
    """A fresh cluster listening on 127.0.0.1 (scram-sha-256 passwords over TCP), with ``database`` owned by the
    ordinary role ``user``: what an operator would hand to Prefect. Stopped and deleted on exit."""
    bindir = server_bindir()
    require(bindir is not None, "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    prefix, account = _run_as()
    # under /tmp itself: pytest's tmp_path sits below a root-only folder the postgres user cannot enter
    root = Path(tempfile.mkdtemp(prefix="llmops-postgres-"))
    data, log = root / "data", root / "server.log"
    superuser_password = secrets.token_hex(16)
    started = False
    try:
        (root / "pwfile").write_text(superuser_password + "\n")
        if account is not None:
            for path in (root, root / "pwfile"):
                os.chown(path, account.pw_uid, account.pw_gid)

        def server_command(*args: str) -> subprocess.CompletedProcess:
            # cwd: the postgres user may not be allowed into ours
            return subprocess.run([*prefix, *args], cwd=root, capture_output=True, text=True, timeout=120)

        init = server_command(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                              "--auth-host=scram-sha-256", f"--pwfile={root / 'pwfile'}", "-E", "UTF8",
                              "--locale=C", "--no-sync")
        require(init.returncode == 0, f"initdb failed here ({bindir}):\n{init.stdout[-1500:]}{init.stderr[-1500:]}")
        port = free_port(HOST)
        # durability is worthless for a throwaway cluster: fsync off saves seconds of Prefect's many small commits
        options = f"-c listen_addresses={HOST} -p {port} -k {root} -c fsync=off -c synchronous_commit=off"
        start = server_command(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                               "-o", options, "start")
        started = start.returncode == 0
        require(started, f"pg_ctl could not start a cluster here:\n{start.stderr[-1000:]}{_tail(log)}")

        password = secrets.token_hex(16)
        superuser = PostgresDatabase(port, "postgres", superuser_password, "postgres")
        superuser.fetch(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        superuser.fetch(f"CREATE DATABASE {database} OWNER {user}")
        yield PostgresDatabase(port, user, password, database)
    finally:
        if started:
            stop = server_command(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop")
            if stop.returncode != 0:
                server_command(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""
