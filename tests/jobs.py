"""The processes of one distributed job on this machine: the nodes of a multi-node run, and stand-ins
for slurm's ``srun`` and ``scontrol`` that start a job's tasks as srun would (light: no torch import)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

_SRUN = """#!{python}
import sys
sys.path.insert(0, {tests!r})
import jobs
sys.exit(jobs.srun(sys.argv[1:], {log!r}))
"""

_SCONTROL = r"""#!/bin/sh
[ "$1 $2" = 'show hostname' ] || { echo "fake scontrol: only 'show hostname LIST'" >&2; exit 2; }
echo "$3" | tr , '\n'
"""


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """Wait for every process; the first failure, or the timeout, terminates the others (as
    ``srun --kill-on-bad-exit=1`` does). Returns the exit codes."""
    deadline = time.monotonic() + timeout
    while (None in [proc.poll() for proc in procs] and not any(proc.returncode for proc in procs)
           and time.monotonic() < deadline):
        time.sleep(0.1)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()  # torchrun passes SIGTERM on to its workers
        proc.wait()
    return [proc.returncode for proc in procs]


def srun(args: list[str], log: str) -> int:
    """``srun [OPTIONS] COMMAND...``: writes ``args`` as JSON to ``log``, then runs COMMAND once per task
    (``--ntasks``) on this machine, each with the variables srun sets: ``SLURM_PROCID``,
    ``SLURM_LOCALID`` and ``SLURM_NODEID`` (``--ntasks-per-node`` tasks a node), ``SLURM_NTASKS``,
    ``SLURM_JOB_NAME`` and ``SLURM_NODELIST``, where node ``n`` is the loopback address
    ``127.0.0.<n+1>``. Returns 1 if a task failed (the others are then ended), else 0."""
    Path(log).write_text(json.dumps(args))
    options, i = {}, 0
    while args[i].startswith('-'):
        if args[i].startswith('--'):
            key, _, value = args[i].partition('=')
        else:  # a short option takes the next argument (-p PARTITION)
            key, value = args[i], args[i + 1]
            i += 1
        options[key] = value
        i += 1
    ntasks = int(options.get('--ntasks', 1))
    per_node = int(options.get('--ntasks-per-node', ntasks))
    nodelist = ','.join(f'127.0.0.{node + 1}' for node in range(-(-ntasks // per_node)))
    tasks = [subprocess.Popen(args[i:], env={
        **os.environ, 'SLURM_PROCID': str(task), 'SLURM_LOCALID': str(task % per_node),
        'SLURM_NODEID': str(task // per_node), 'SLURM_NTASKS': str(ntasks),
        'SLURM_NODELIST': nodelist, 'SLURM_JOB_NAME': options.get('--job-name', '')})
        for task in range(ntasks)]
    return 1 if any(wait_all(tasks, timeout=float('inf'))) else 0


def write_fake_slurm(bin_dir: Path) -> Path:
    """Stand-ins for ``srun`` (:func:`srun`, logging to ``bin_dir/srun.json``) and ``scontrol``
    (``scontrol show hostname LIST`` prints the hosts of a comma-separated LIST, one a line) in
    ``bin_dir``; put it first on ``PATH``. Returns ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    srun_script = _SRUN.format(python=sys.executable, tests=str(Path(__file__).resolve().parent),
                               log=str(bin_dir / 'srun.json'))
    for name, text in (('srun', srun_script), ('scontrol', _SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir
