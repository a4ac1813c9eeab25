"""VM provisioning: shellcheck on bin/, `vagrant validate`, and the provisioning scripts' dry runs."""

import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.helpers import SQLCHECKCTL

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "bin"
WORKER_ARGS = ["--infra", "10.0.0.5", "--db-password", "s3cret-pw", "--service-id", "w7", "--source", "/opt/src"]
#: commands a dry run must never execute (stubs that leave a mark if they are)
STUBBED = ("apt-get", "mount", "systemctl", "useradd", "groupadd", "install", "runuser", "python3", "ln",
           "exportfs", "pg_conftool", "psql", "chown", "chmod", "mv", "mktemp")


def bash_scripts() -> list[Path]:
    return sorted(p for p in BIN.iterdir() if p.is_file() and p.read_text(errors="replace").startswith(
        ("#!/usr/bin/env bash", "#!/bin/bash")))


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (bin/test installs it)")
@pytest.mark.parametrize("script", bash_scripts(), ids=lambda p: p.name)
def test_shellcheck(script):
    run = subprocess.run(["shellcheck", "--external-sources", str(script)], capture_output=True, text=True,
                         cwd=BIN, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def vagrant(*args, **env):
    return subprocess.run(["vagrant", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1", **env})


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant not installed (bin/test installs it)")
def test_vagrant_validate():
    """Validated against every provider config when a provider exists; else the Vagrantfile alone."""
    run = vagrant("validate")
    if run.returncode != 0 and "No usable default provider" in run.stdout + run.stderr:
        run = vagrant("validate", "--ignore-provider")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "validated successfully" in run.stdout
    machines = set(re.findall(r"==> (\w+):", run.stdout))
    assert machines in (set(), {"infra", "worker1", "worker2"})


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant not installed (bin/test installs it)")
def test_vagrant_worker_count_from_environment():
    run = vagrant("validate", "--ignore-provider", SQLCHECK_WORKERS="3")
    assert run.returncode == 0, run.stdout + run.stderr
    assert set(re.findall(r"==> (\w+):", run.stdout)) == {"infra", "worker1", "worker2", "worker3"}
    bad = vagrant("validate", "--ignore-provider", SQLCHECK_WORKERS="two")
    assert bad.returncode != 0 and "SQLCHECK_WORKERS must be an integer" in bad.stdout + bad.stderr


@pytest.fixture
def stub_path(tmp_path):
    """A PATH whose system commands only leave a mark: a dry run must not call any of them."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    marks = tmp_path / "executed"
    for name in STUBBED:
        stub = stubs / name
        stub.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {marks}\nexit 0\n")
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return f"{stubs}:{os.environ['PATH']}", marks


def dry_run(script: str, args: list[str], stub_path) -> str:
    path, marks = stub_path
    run = subprocess.run([str(BIN / script), "--dry-run", *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": path})
    assert run.returncode == 0, run.stdout + run.stderr
    assert not marks.exists(), f"dry run executed: {marks.read_text()}"
    return run.stdout


def commands(output: str) -> list[str]:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


def written_file(output: str, path: str) -> str:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"+ write {path} "))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("    | "):
            break
        body.append(line[6:])
    return "\n".join(body) + "\n"


def position(cmds: list[str], pattern: str) -> int:
    found = [i for i, c in enumerate(cmds) if re.search(pattern, c)]
    assert found, f"no command matches {pattern!r} in:\n" + "\n".join(cmds)
    return found[0]


def test_worker_dry_run_prints_the_install_in_order(stub_path):
    out = dry_run("provision-worker", WORKER_ARGS, stub_path)
    cmds = commands(out)
    venv = "/opt/sqlcheck/venv"
    steps = [
        r"^apt-get update",
        r"apt-get install .*python3-venv.*nfs-common",
        r"^useradd --system --uid 2001 ",
        r"^append to /etc/fstab: 10\.0\.0\.5:/srv/sqlcheck-share /srv/sqlcheck-share nfs4 ",
        r"^mount /srv/sqlcheck-share$",
        rf"^python3 -m venv {venv}$",
        rf"^{venv}/bin/pip install .*--upgrade /opt/src$",
        rf"^runuser -u sqlcheck -- {venv}/bin/sqlcheckctl -c /etc/sqlcheck/sqlcheck.toml db upgrade$",
        rf"^runuser -u sqlcheck -- {venv}/bin/sqlcheckctl -c /etc/sqlcheck/sqlcheck.toml config render$",
        r"^install -m 0644 /var/lib/sqlcheck/systemd/sqlcheck.service /etc/systemd/system/sqlcheck.service$",
        r"^systemctl daemon-reload$",
        r"^systemctl enable sqlcheck.service$",
        r"^systemctl restart sqlcheck.service$",
        rf"^runuser -u sqlcheck -- {venv}/bin/sqlcheckctl -c /etc/sqlcheck/sqlcheck.toml status$",
    ]
    cursor = 0
    for pattern in steps:  # each step appears after the one before it
        cursor += position(cmds[cursor:], pattern) + 1
    dropin = written_file(out, "/etc/systemd/system/sqlcheck.service.d/user.conf")
    assert "User=sqlcheck" in dropin
    assert "SQLCHECK_CONFIG=/etc/sqlcheck/sqlcheck.toml" in written_file(out, "/etc/sqlcheck/sqlcheck.env")


def test_worker_settings_file_is_valid_and_renders_a_unit_with_metrics(stub_path, tmp_path):
    out = dry_run("provision-worker", [*WORKER_ARGS, "--metrics-port", "9900", "--log-format", "json"], stub_path)
    toml_text = written_file(out, "/etc/sqlcheck/sqlcheck.toml")
    data = tomllib.loads(toml_text)["sqlcheck"]
    assert data["broker_url"] == "redis://10.0.0.5:6379/0"
    assert data["database_url"] == "postgresql+psycopg://sqlcheck:s3cret-pw@10.0.0.5:5432/sqlcheck"
    assert data["share_root"] == "/srv/sqlcheck-share" and data["service_id"] == "w7"
    config = tmp_path / "sqlcheck.toml"
    config.write_text(toml_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLCHECK_", "CELERY_", "NFS_", "DATABASE_"))}
    render = subprocess.run([SQLCHECKCTL, "-c", str(config), "config", "render", "--out", str(tmp_path / "etc")],
                            env=env, capture_output=True, text=True, timeout=60)
    assert render.returncode == 0, render.stderr
    conf = (tmp_path / "etc/supervisord/supervisord.conf").read_text()
    assert "[program:metrics]" in conf and 'SQLCHECK_METRICS_PORT="9900"' in conf
    assert "analysis@w7" in conf and "[program:redis]" not in conf
    unit = (tmp_path / "etc/systemd/sqlcheck.service").read_text()
    assert re.search(r"^ExecStart=\S+/supervisord -n -c /var/lib/sqlcheck/supervisord/supervisord.conf$", unit, re.M)
    assert "EnvironmentFile=-/etc/sqlcheck/sqlcheck.env" in unit


def test_infra_dry_run(stub_path):
    out = dry_run("provision-infra", ["--db-password", "pw-1", "--network", "10.0.0.0/24"], stub_path)
    cmds = commands(out)
    position(cmds, r"apt-get install .*redis-server.*postgresql.*nfs-kernel-server")
    redis_conf = written_file(out, "/etc/redis/sqlcheck.conf")
    assert "appendonly yes" in redis_conf and "maxmemory-policy noeviction" in redis_conf
    position(cmds, r"^append to /etc/redis/redis.conf: include /etc/redis/sqlcheck.conf$")
    position(cmds, r"host sqlcheck sqlcheck 10\.0\.0\.0/24 scram-sha-256")
    assert written_file(out, "/etc/exports.d/sqlcheck.exports").strip() == \
        "/srv/sqlcheck-share 10.0.0.0/24(rw,sync,no_subtree_check,root_squash)"
    assert position(cmds, r"^install -d -m 0770 -o sqlcheck -g sqlcheck /srv/sqlcheck-share$") < \
        position(cmds, r"^exportfs -ra$")
    assert "pw-1" not in out  # the password is never printed


@pytest.mark.parametrize("script,args,message", [
    ("provision-worker", ["--db-password", "x"], "--infra HOST is required"),
    ("provision-worker", ["--infra", "h", "--db-password", "a b"], "--db-password: use only"),
    ("provision-worker", ["--infra", "h", "--db-password", "x", "--log-format", "xml"], "--log-format"),
    ("provision-worker", ["--infra", "h", "--db-password", "x", "--bogus"], "unknown option --bogus"),
    ("provision-infra", [], "--db-password"),
    ("provision-infra", ["--db-password", "x", "--network", "10.0.0.1"], "CIDR"),
])
def test_scripts_refuse_bad_arguments(script, args, message, stub_path):
    path, marks = stub_path
    run = subprocess.run([str(BIN / script), "--dry-run", *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": path, "SQLCHECK_DB_PASSWORD": ""})
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not marks.exists()
