"""Real faults for the tests and the benches: a redis-server and a Postgres cluster of their own,
which they may kill, restart or stall, and a TCP proxy that can freeze one client's traffic (a
process cut off from Redis while the others are not)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from loadtest.localproc import free_port


class PrivateRedis:
    """A redis-server of this test's own, on its own port, that the test may stop and start."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for the outage tests"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def kill(self) -> None:
        """kill -9: no goodbye to its clients, whose pooled connections are now dead."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def stall(self, seconds: float) -> subprocess.Popen[bytes]:
        """DEBUG SLEEP: Redis answers nothing for `seconds`, then everything queued meanwhile. Returns
        once the stall has begun (Redis no longer answers a PING)."""
        sleeper = subprocess.Popen(["redis-cli", "-p", str(self.port), "DEBUG", "SLEEP", str(seconds)],
                                   stdout=subprocess.DEVNULL)  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=0.05, retry=Retry(NoBackoff(), 0))  # no retries
        try:
            for _ in range(100):
                assert sleeper.poll() is None, "DEBUG SLEEP refused or ended at once"
                client.ping()
                time.sleep(0.01)
            raise AssertionError("Redis still answers: DEBUG SLEEP did not stall it")
        except redis.TimeoutError:
            return sleeper
        finally:
            client.close()


class FreezingProxy:
    """A TCP proxy to 127.0.0.1:`target`. freeze() holds every byte from then on (the clients'
    calls hang, as behind a partition); what it held never reaches the server."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.frozen = threading.Event()
        self.closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze(self) -> None:
        self.frozen.set()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.frozen.is_set():
                    continue  # held, never delivered
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.closing.set()
        self._listener.close()
        for s in self._sockets:
            s.close()


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own (Debian's pg_createcluster, trust auth, on a free
    port), that the test may stop and start; dropped at the end."""

    def __init__(self, version: str = "15", replicable: bool = False, durable: bool = False) -> None:
        self.version = version
        self.name = f"t{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        subprocess.run(
            ["pg_createcluster", version, self.name, "-p", str(self.port), "--", "--auth=trust"],
            check=True, capture_output=True,
        )  # fmt: skip
        conf = Path(f"/etc/postgresql/{version}/{self.name}/conf.d/90-test.conf")
        # Durability off, for speed, unless a crash must keep every commit (`durable`); a primary to
        # take a base backup of keeps full-page writes on.
        pages = "" if replicable or durable else "full_page_writes = off\n"
        speed = "" if durable else "fsync = off\nsynchronous_commit = off\n"
        conf.write_text(f"{speed}{pages}autovacuum = off\n")
        self.start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        self.ctl("start")

    def stop(self) -> None:
        self.ctl("stop", "-m", "fast")

    def crash(self) -> None:
        """An immediate shutdown and a start: every backend killed, the WAL replayed on the way up."""
        self.ctl("restart", "-m", "immediate")

    def ctl(self, *args: str) -> None:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, *args],
                       check=True, capture_output=True)  # fmt: skip

    def drop(self) -> None:
        subprocess.run(["pg_dropcluster", "--stop", self.version, self.name], check=False, capture_output=True)


class PrivateReplica:
    """A streaming replica of a PrivatePostgres(replicable=True): a cluster of its own whose data directory is a
    pg_basebackup -R of the primary's, on a free port; `apply_delay_ms` holds each transaction back
    that long after its commit (recovery_min_apply_delay), as a lagging replica would. Dropped at the end."""

    def __init__(self, primary: PrivatePostgres, apply_delay_ms: int = 0) -> None:
        self.version = primary.version
        self.name = f"r{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        subprocess.run(
            ["pg_createcluster", self.version, self.name, "-p", str(self.port), "--", "--auth=trust"],
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            self._copy_and_start(primary, apply_delay_ms)
        except BaseException:
            self.drop()  # no cluster left behind by a replica that did not come up
            raise

    def _copy_and_start(self, primary: PrivatePostgres, apply_delay_ms: int) -> None:
        data = Path(f"/var/lib/postgresql/{self.version}/{self.name}")
        for entry in data.iterdir():  # empty, but kept: pg_basebackup (as postgres) cannot create it here
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        backup = [f"/usr/lib/postgresql/{self.version}/bin/pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port),
                  "-U", "postgres", "-D", str(data), "-R", "-X", "stream", "--checkpoint=fast"]  # fmt: skip
        done = subprocess.run(["runuser", "-u", "postgres", "--", *backup], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed: {done.stderr}")
        conf = Path(f"/etc/postgresql/{self.version}/{self.name}/conf.d/90-test.conf")
        conf.write_text(f"recovery_min_apply_delay = '{apply_delay_ms}ms'\nhot_standby_feedback = on\n")
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, "start"],
                       check=True, capture_output=True)  # fmt: skip

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def drop(self) -> None:
        subprocess.run(["pg_dropcluster", "--stop", self.version, self.name], check=False, capture_output=True)


class PrivatePgBouncer:
    """Debian's PgBouncer of this test's own, on a free port, in front of one database of a
    Postgres: `pool_mode` session or transaction; every client logs in as `user`
    (auth_type any). It drops the `options` startup parameter, as a PgBouncer must be told to:
    the settings the API sends there come from the role instead (db/roles/service_role.sql)."""

    def __init__(self, server_url: str, user: str, pool_mode: str = "session", **settings: str) -> None:
        import tempfile

        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(server_url)
        self.port = free_port()
        self.dbname = str(info["dbname"])
        # Its own folder in /tmp: pgbouncer drops root for postgres, which must reach it.
        directory = self.directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        directory.chmod(0o777)
        conf = directory / "pgbouncer.ini"
        conf.write_text(
            "[databases]\n"
            f"{self.dbname} = host={info.get('host', '127.0.0.1')} port={info.get('port', 5432)} "
            f"dbname={self.dbname} user={user}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            "auth_type = any\n"
            f"pool_mode = {pool_mode}\n"
            "ignore_startup_parameters = options\n"
            "max_client_conn = 500\ndefault_pool_size = 60\n"
            f"logfile = {directory / 'pgbouncer.log'}\npidfile = {directory / 'pgbouncer.pid'}\n"
            + "".join(f"{name} = {value}\n" for name, value in settings.items())
        )
        conf.chmod(0o644)
        self.proc = subprocess.Popen(["pgbouncer", "-u", "postgres", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(
                        f"pgbouncer did not start: {(directory / 'pgbouncer.log').read_text()}"
                    ) from None
                time.sleep(0.1)

    def url(self) -> str:
        return f"postgresql://any@127.0.0.1:{self.port}/{self.dbname}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.directory, ignore_errors=True)
