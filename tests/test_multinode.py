"""Multi-node paths of `gapt-ds train` rehearsed on this machine: the deepspeed launcher's no-ssh form with two
"nodes" and node-local token caches, the pdsh form's argument safety, and one cache build per filesystem."""

import json
import os
import subprocess
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from dist import free_port, run_ranks
from test_train import BIN, ROOT, env, metrics, write_ds_config

from gapt_ds.data.tokenizers import CharTokenizer
from gapt_ds.launch_args import remote_safe

SWITCHY_GATE = {"mbe_weight": 0.5, "gate": {"patience_memorize": 2, "patience_compress": 2, "ce_delta": 1.0}}


def _args(tmp_path: Path, run: str) -> list[str]:
    return ["--data", "arithmetic", "--model", "tiny", "--seq-len", "32", "--run-dir", str(tmp_path / run),
            "--steps", "8", "--eval-every", "0", "--save-every", "0", "--eval-batches", "2", "--arith-eval", "32",
            "--no-progress"]


@pytest.mark.distributed
def test_deepspeed_no_ssh_two_nodes_with_node_local_caches_equals_one_node(tmp_path):
    config = write_ds_config(tmp_path / "ds.json", stage=2, **SWITCHY_GATE)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    port = str(free_port())
    nodes = [subprocess.Popen(["bash", str(ROOT / "launch" / "deepspeed_multinode.sh"), *_args(tmp_path, "two")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env(NO_SSH="1", NODE_RANK=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                                      HOSTFILE=str(hostfile), DS_CONFIG=str(config),
                                      GAPT_DS_CACHE=str(tmp_path / f"cache-node{n}")))
             for n in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert "building this node's copy" in outs[1] and "building this node's copy" not in outs[0]
    caches = [sorted((tmp_path / f"cache-node{n}").glob("*/train.bin")) for n in (0, 1)]
    assert len(caches[0]) == len(caches[1]) == 1 and caches[0][0].read_bytes() == caches[1][0].read_bytes()

    one = subprocess.run([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
                          "--module", "gapt_ds.train", "--deepspeed_config", str(config), *_args(tmp_path, "one"),
                          "--cache-dir", str(tmp_path / "cache-one")], cwd=ROOT, env=env(), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two, ref = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert sorted(two) == sorted(ref) == list(range(1, 9))
    assert {ref[s]["phase"] for s in ref} == {1, 2}  # the run crosses a phase switch
    for s in ref:
        assert two[s]["phase"] == ref[s]["phase"] and two[s]["next_phase"] == ref[s]["next_phase"], s
        for key in ("ce", "mbe_mean", "lr"):
            assert two[s][key] == pytest.approx(ref[s][key], rel=1e-6, abs=1e-7), (s, key)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2


TRICKY = ["corpus/*.txt", "runs/a b;c|d&e", "x>y", "(p)", "~/tilde", "", "--lr=1e-3", "plain/path.json", "a [b]"]


def test_remote_safe_arguments_reach_the_remote_shell_unchanged(tmp_path):
    """Quote as gapt-ds does, join as DeepSpeed's pdsh runner does, and let a real shell parse the line."""
    from deepspeed.launcher.multinode_runner import PDSHRunner

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "one.txt").write_text("x")  # the glob would expand if left unquoted
    runner = PDSHRunner(Namespace(user_args=remote_safe(TRICKY), user_script="train.py"), "e30=")
    line = " ".join(runner.user_arguments)
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split("\0")[:-1] == TRICKY


@pytest.mark.parametrize("bad", ["runs/$(touch PWNED)", "runs/`touch PWNED`", 'a"b', "it's", "a\\b", "a\nb", "a\tb"])
def test_remote_safe_refuses_what_a_remote_shell_would_execute(bad):
    with pytest.raises(ValueError, match="remote shell would interpret"):
        remote_safe(["--run-dir", "fine", bad])


def test_pdsh_form_refuses_dangerous_run_dir_before_launching(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    proc = subprocess.run(["bash", str(ROOT / "launch" / "deepspeed_multinode.sh"), "--run-dir",
                           f"{tmp_path}/$(touch {tmp_path}/PWNED)", "--data", f"{tmp_path}/`touch {tmp_path}/PWNED2`"],
                          cwd=tmp_path, env=env(HOSTFILE=str(hostfile)), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "$(touch" in proc.stderr and "`touch" in proc.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


def _cache_worker(rank: int, node_dirs: list[str], shared_dir: str, nodes: list[int], local_ranks: list[int]) -> dict:
    import torch.distributed as dist

    import gapt_ds.data.cache_sync as cache_sync

    os.environ["LOCAL_RANK"] = str(local_ranks[rank])
    dist.init_process_group("gloo")
    real_build, calls = cache_sync.build_cache, []
    cache_sync.build_cache = lambda *a, **k: calls.append(a[2]) or real_build(*a, **k)
    out = {}
    for case, cache_dir in (("local", node_dirs[nodes[rank]]), ("shared", shared_dir)):
        calls.clear()
        cache = cache_sync.prepare_cache("arithmetic", CharTokenizer(), cache_dir, show_progress=False,
                                         max_tokens=3000, val_every=10, seed=1)
        out[case] = {"built": list(calls), "path": str(cache.path), "train": np.asarray(cache.split("train")).tobytes()}
    return out


@pytest.mark.distributed
def test_one_cache_build_per_filesystem(tmp_path):
    """Node 0 = rank 0; node 1 = ranks 1 and 2 (local ranks 0, 1). Node-local dirs: one build per node; shared: one."""
    dirs = [str(tmp_path / "node0"), str(tmp_path / "node1")]
    res = run_ranks(_cache_worker, tmp_path / "out", world=3, node_dirs=dirs, shared_dir=str(tmp_path / "shared"),
                    nodes=[0, 1, 1], local_ranks=[0, 0, 1])
    assert [r["local"]["built"] for r in res] == [[dirs[0]], [dirs[1]], []]  # rank 2 waits for its node's build
    assert [r["shared"]["built"] for r in res] == [[str(tmp_path / "shared")], [], []]
    assert [Path(r["local"]["path"]).parent for r in res] == [Path(dirs[0]), Path(dirs[1]), Path(dirs[1])]
    assert len({r[case]["train"] for r in res for case in ("local", "shared")}) == 1  # identical tokens everywhere


SSHD = Path("/usr/sbin/sshd")
HOSTS = ("127.0.0.2", "127.0.0.3")  # loopback aliases: every 127/8 address reaches this machine


@pytest.fixture
def sshd_hosts(tmp_path):
    """An sshd on two loopback aliases, a throwaway key pair, and an `ssh` on PATH that uses them."""
    import shutil
    import socket
    import time

    if not (SSHD.is_file() and shutil.which("pdsh")) or os.geteuid() != 0:
        pytest.skip("needs root, openssh-server and pdsh (apt-get install -y openssh-server pdsh)")
    d = tmp_path / "ssh"
    (d / "bin").mkdir(parents=True)
    for key in ("hostkey", "userkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "userkey.pub").read_text())
    port = free_port()
    listen = "".join(f"ListenAddress {h}:{port}\n" for h in HOSTS)
    (d / "sshd_config").write_text(
        f"{listen}HostKey {d}/hostkey\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n"
        "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\n")
    (d / "ssh_config").write_text(
        f"Host {' '.join(HOSTS)}\n  Port {port}\n  IdentityFile {d}/userkey\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n")
    (d / "bin" / "ssh").write_text(f"#!/bin/sh\nexec /usr/bin/ssh -F {d}/ssh_config \"$@\"\n")
    (d / "bin" / "ssh").chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection((HOSTS[1], port), timeout=1).close()
            break
        except OSError:
            died = server.poll() is not None
            assert not died and time.time() < deadline, server.stderr.read() if died else "sshd did not listen"
            time.sleep(0.1)
    yield d
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.distributed
def test_deepspeed_pdsh_over_real_ssh_two_nodes_equals_one_node(tmp_path, sshd_hosts):
    """launch/deepspeed_multinode.sh's pdsh form: DeepSpeed reaches both "hosts" over ssh; a run dir with shell
    syntax in its name arrives unchanged."""
    config = write_ds_config(tmp_path / "ds.json", stage=2, **SWITCHY_GATE)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{h} slots=1\n" for h in HOSTS))
    ds_env = tmp_path / "deepspeed_env"  # what DeepSpeed exports to the remote shells
    ds_env.write_text(f"DS_ACCELERATOR=cpu\nOMP_NUM_THREADS=1\nGAPT_DS_CACHE={tmp_path}/cache-pdsh\n")
    run_dir = "two;pdsh (ssh)"
    args = [a if a != str(tmp_path / "two") else str(tmp_path / run_dir) for a in _args(tmp_path, "two")]
    proc = subprocess.run(["bash", str(ROOT / "launch" / "deepspeed_multinode.sh"), *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=400,
                          env=env(HOSTFILE=str(hostfile), DS_CONFIG=str(config), MASTER_ADDR="127.0.0.1",
                                  DS_ENV_FILE=str(ds_env),
                                  PATH=f"{sshd_hosts}/bin{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pdsh" in proc.stdout + proc.stderr  # DeepSpeed took the pdsh path, not a local launch
    one = subprocess.run([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
                          "--module", "gapt_ds.train", "--deepspeed_config", str(config), *_args(tmp_path, "one"),
                          "--cache-dir", str(tmp_path / "cache-one")], cwd=ROOT, env=env(), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two, ref = metrics(tmp_path / run_dir), metrics(tmp_path / "one")
    assert sorted(two) == sorted(ref) == list(range(1, 9))
    for s in ref:
        assert two[s]["phase"] == ref[s]["phase"], s
        assert two[s]["ce"] == pytest.approx(ref[s]["ce"], rel=1e-6, abs=1e-7), s
