"""The gapt-ds command line as a user meets it: usage errors, --version, help texts (fast, readable) and the
console output of a training run written to a log file."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gapt_ds
from dist import free_port

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("loss_type=None", "Attempting to get learning rate from scheduler", "all_gather_into_tensor",
         "reduce_scatter_tensor", "Setting CUDA_VISIBLE_DEVICES")


def gapt_ds_cli(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()))
    return subprocess.run([sys.executable, "-m", "gapt_ds.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_unknown_command_says_so():
    proc = gapt_ds_cli("bogus")
    assert proc.returncode == 2
    assert "gapt-ds: error: unknown command 'bogus'" in proc.stderr and "usage: gapt-ds" in proc.stderr


def test_version():
    proc = gapt_ds_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"gapt-ds {gapt_ds.__version__}"
    assert f'version = "{gapt_ds.__version__}"' in (ROOT / "pyproject.toml").read_text()


def test_train_help_imports_nothing_heavy_and_reads_well():
    code = "\n".join(["import sys", "from gapt_ds import cli", "try:", "    cli.main(['train', '--help'])",
                      "except SystemExit:", "    pass",
                      "print('HEAVY', sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules))"])
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]
    help_text = proc.stdout
    assert "--deepspeed_config" in help_text and "(default: None)" not in help_text and "`" not in help_text
    for option in re.split(r"\n  -", help_text):
        assert option.count("(default:") <= 1, option


@pytest.mark.parametrize("command", ["recipe", "report", "tokenizer", "export"])
def test_every_subcommand_help_has_no_rest_markup_and_every_option_a_help(command):
    proc = gapt_ds_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "`" not in proc.stdout
    lines = proc.stdout.splitlines()
    options = [i for i, line in enumerate(lines) if line.startswith("  -") and not line.startswith("  -h")]
    assert options
    for i in options:  # help on the option's line, or on the next one, indented
        assert re.match(r"  -\S.*?\s{2,}\S", lines[i]) or re.match(r" {20,}\S", lines[i + 1]), lines[i]
    if command == "tokenizer":
        assert re.search(r"--vocab-size VOCAB_SIZE\s+tokens in the vocabulary", proc.stdout)
    if command == "recipe":
        assert re.search(r"--seeds SEEDS\s+comma-separated seeds: one run per arm", proc.stdout)


@pytest.mark.distributed
def test_train_console_in_a_log_file(tmp_path):
    """Not a TTY: plain step lines instead of a \\r bar; evaluation lines also with --no-progress; none of the
    known-harmless noise; real warnings kept."""
    common = ["train", "--deepspeed_config", str(ROOT / "ds_configs" / "cpu_default.json"), "--model", "tiny",
              "--seq-len", "32", "--steps", "4", "--eval-every", "2", "--eval-batches", "1", "--arith-eval", "8",
              "--save-every", "0", "--cache-dir", str(tmp_path / "cache")]
    shown = gapt_ds_cli(*common, "--run-dir", str(tmp_path / "a"), timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    out = shown.stdout + shown.stderr
    assert "\r" not in out
    assert re.search(r"^step 1/4: ce=[\d.]+, mbe=[\d.]+, phase=M, tok_s=", out, re.MULTILINE)
    assert re.search(r"^step 4/4: ", out, re.MULTILINE)
    assert re.search(r"^step 2: val_ce=", out, re.MULTILINE) and re.search(r"^step 4: val_ce=", out, re.MULTILINE)
    assert not [noise for noise in NOISE if noise in out], out[-3000:]

    quiet = gapt_ds_cli(*common, "--run-dir", str(tmp_path / "b"), "--no-progress", "--val-every", "100000",
                        timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    out = quiet.stdout + quiet.stderr
    assert not re.search(r"^step \d+/4", out, re.MULTILINE)
    assert re.search(r"^step 2: id_answer_ce=", out, re.MULTILINE)  # the evaluation, without the per-step lines
    assert "UserWarning: the validation split has" in out  # a real warning still shows
