"""The test harness itself: the single-node SLURM cluster runs jobs, and sshd on loopback
runs its commands for a client that checks the host key."""

from __future__ import annotations

import re
import time
from pathlib import Path

import paramiko
import pytest

from tests.cluster import SlurmCluster, SshServer

pytestmark = pytest.mark.slurm


def job_state(cluster: SlurmCluster, job_id: str) -> str:
    shown = cluster.run("scontrol", "show", "job", job_id).stdout
    match = re.search(r"JobState=(\S+)", shown)
    assert match, shown
    return match.group(1)


def test_a_job_runs_to_completion(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    submitted = slurm_cluster.run("sbatch", "--parsable", f"--output={tmp_path}/%j.out",
                                  "--wrap", "sleep 1; echo done")
    job_id = submitted.stdout.strip().split(";")[0]
    assert job_id.isdigit(), submitted.stdout
    assert slurm_cluster.run("squeue", "-h", "-j", job_id, "-o", "%i").stdout.strip() == job_id

    deadline = time.monotonic() + 30
    while (state := job_state(slurm_cluster, job_id)) != "COMPLETED":
        assert state in {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING"}, state
        assert time.monotonic() < deadline, f"job {job_id} still {state} after 30s"
        time.sleep(0.5)
    assert (tmp_path / f"{job_id}.out").read_text() == "done\n"


def client(known_hosts: Path) -> paramiko.SSHClient:
    ssh = paramiko.SSHClient()
    ssh.load_host_keys(str(known_hosts))
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    return ssh


def connect(ssh: paramiko.SSHClient, server: SshServer) -> None:
    ssh.connect(server.host, port=server.port, username=server.user,
                key_filename=str(server.key_file), look_for_keys=False, allow_agent=False,
                timeout=10)


def test_commands_over_ssh_see_the_cluster(sshd: SshServer,
                                           slurm_cluster: SlurmCluster) -> None:
    with client(sshd.known_hosts) as ssh:
        connect(ssh, sshd)
        _, stdout, stderr = ssh.exec_command('echo "$SLURM_CONF"; sinfo -h -o "%P %N"',
                                             timeout=30)
        assert stdout.channel.recv_exit_status() == 0, stderr.read().decode()
        assert stdout.read().decode().splitlines() == [str(slurm_cluster.conf), "debug* localhost"]


def test_an_unknown_host_key_is_refused(sshd: SshServer) -> None:
    with client(sshd.empty_known_hosts) as ssh, pytest.raises(paramiko.SSHException,
                                                               match="not found in known_hosts"):
        connect(ssh, sshd)


def test_a_changed_host_key_is_refused(sshd: SshServer) -> None:
    with client(sshd.wrong_known_hosts) as ssh, pytest.raises(paramiko.BadHostKeyException):
        connect(ssh, sshd)
