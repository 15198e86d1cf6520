"""Sweep fixtures: a tiny labelled dataset, the arguments of a tiny sweep, and a throwaway PostgreSQL
cluster (initdb + pg_ctl from the installed server binaries) owned by the test run.

Without PostgreSQL server binaries the PostgreSQL tests are skipped, or fail when
BETAVAE_REQUIRE_SERVICES=1 (as in CI, which installs them).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def toy_npz(tmp_path_factory) -> Path:
    """72 binary 32x32 images of a square (2 sizes x 6 x-positions x 6 y-positions) with factor labels."""
    images, factors = [], []
    for size in range(2):
        for x in range(6):
            for y in range(6):
                image = np.zeros((32, 32), np.uint8)
                side = 5 + 5 * size
                image[3 + 4 * y: 3 + 4 * y + side, 3 + 4 * x: 3 + 4 * x + side] = 1
                images.append(image)
                factors.append((size, x, y))
    path = tmp_path_factory.mktemp("toy") / "toy.npz"
    np.savez(path, images=np.array(images), factors=np.array(factors))
    return path


def tiny_args(data: Path, out: Path, *extra: str, steps: int = 4, seeds: str = "2") -> list[str]:
    """CLI arguments of a tiny 2-weight x 2-seed sweep that trains and evaluates in seconds."""
    return ["sweep", "--data", str(data), "--beta", "1,4", "--seeds", seeds, "--steps", str(steps), "--batch-size", "16",
            "--latents", "3", "--arch", "mlp", "--log-every", "2", "--checkpoint-every", "2", "--no-figures",
            "--device", "cpu", "--metrics", "mig", "--eval-samples", "40", "--udr-samples", "40",
            "--heartbeat", "1", "--out", str(out), *extra]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def betavae_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "betavae", *args]


def _service_missing(reason: str):
    if os.environ.get("BETAVAE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"BETAVAE_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster on a free local port, trust authentication, removed afterwards."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        _service_missing("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb); install Debian's postgresql")
    try:
        import psycopg
    except ImportError:
        _service_missing("the psycopg driver is missing; pip install 'betavae[postgres]'")
    bindir = Path(bins[-1]).parent
    # not under pytest's basetemp: that folder is private to this user and the server may run as another
    root = Path(tempfile.mkdtemp(prefix="betavae-pg-"))
    datadir, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres system user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            _service_missing("running as root and there is no 'postgres' user to run the server as")
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    init = subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "sweep",
                           "--no-sync"], capture_output=True, text=True)
    if init.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr.strip()}")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(datadir), "-o", options, "-l", str(root / "log"),
                    "-w", "-t", "60", "start"], check=True, capture_output=True)
    url = f"postgresql://sweep@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield f"postgresql://sweep@127.0.0.1:{port}"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the test cluster, as a storage URL."""
    import psycopg

    name = f"sweep_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"
