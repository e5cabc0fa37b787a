"""A real one-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd (Debian's ``slurm-wlm``
and ``munge``), their key, configuration, state and logs in one temporary folder, stopped by pid afterwards.

Needs root (the daemons run as root, munged as the munge user). ``unavailable()`` says why a machine cannot start
one, for the tests to skip with that reason. ``.ci/run`` installs the packages where it runs as root with apt.
"""
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

BINARIES = ('munged', 'slurmctld', 'slurmd', 'srun', 'sbatch', 'scontrol', 'squeue', 'sinfo')
SBIN = ('/usr/sbin', '/usr/bin')


def _binary(name: str) -> Optional[str]:
    return shutil.which(name) or next((os.path.join(d, name) for d in SBIN if os.path.isfile(os.path.join(d, name))),
                                      None)


def unavailable() -> Optional[str]:
    """Why a one-node cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return 'the SLURM daemons need root (SlurmUser=root); run as root to test under SLURM'
    missing = [name for name in BINARIES if _binary(name) is None]
    if missing:
        return f'not installed: {", ".join(missing)} (apt-get install slurm-wlm munge)'
    try:
        pwd.getpwnam('munge')
    except KeyError:
        return 'no munge user (apt-get install munge creates it)'
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


CONF = """ClusterName=vheattest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/run/munge.socket,cred_expire={cred_expire}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
InactiveLimit=0
KillWait=10
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    """``with LocalSlurm() as cluster:`` a cluster of one node with ``cpus`` CPUs and one partition; ``env()`` is
    the environment for srun/sbatch/scontrol (``SLURM_CONF``).

    ``cred_expire``: the job credentials' lifetime, which is also how long a requeued job waits before it may
    start again (SLURM's default, 120 s, keeps a requeued test job pending for two minutes). The schedulers run
    every second, so that a job that has become eligible starts at once (by default within 30 to 60 s).
    """

    def __init__(self, cpus: int = 2, partition: str = 'debug', cred_expire: int = 5):
        self.cpus, self.partition, self.cred_expire = cpus, partition, cred_expire
        self.host = socket.gethostname().split('.')[0]
        self.root = ''
        self.daemons: List[subprocess.Popen] = []

    def env(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        return dict(base if base is not None else os.environ, SLURM_CONF=os.path.join(self.root, 'slurm.conf'))

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(list(command), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f'{" ".join(command)} failed ({result.returncode}): {result.stderr.strip()}')
        return result

    def __enter__(self) -> 'LocalSlurm':
        self.root = tempfile.mkdtemp(prefix='vheat-slurm-', dir='/tmp')
        os.chmod(self.root, 0o755)  # munged wants its socket folder (and those above) open to all
        for sub in ('run', 'key', 'state', 'spool', 'log'):
            os.makedirs(os.path.join(self.root, sub))
        munge = pwd.getpwnam('munge')
        key_dir, run_dir = os.path.join(self.root, 'key'), os.path.join(self.root, 'run')
        with open(os.path.join(key_dir, 'munge.key'), 'wb') as f:
            f.write(os.urandom(1024))
        for path, mode in ((os.path.join(key_dir, 'munge.key'), 0o400), (key_dir, 0o700), (run_dir, 0o755)):
            os.chown(path, munge.pw_uid, munge.pw_gid)
            os.chmod(path, mode)
        with open(os.path.join(self.root, 'slurm.conf'), 'w') as f:
            f.write(CONF.format(host=self.host, root=self.root, cpus=self.cpus, partition=self.partition,
                                ctld_port=_free_port(), slurmd_port=_free_port(), cred_expire=self.cred_expire))
        try:
            self._start([_binary('munged'), '--foreground', f'--key-file={key_dir}/munge.key',
                         f'--socket={run_dir}/munge.socket', f'--pid-file={key_dir}/munged.pid',
                         f'--log-file={key_dir}/munged.log', f'--seed-file={key_dir}/munged.seed'],
                        user=munge.pw_uid, group=munge.pw_gid)
            self._wait(lambda: os.path.exists(f'{run_dir}/munge.socket'), 'munged', f'{key_dir}/munged.log')
            conf = os.path.join(self.root, 'slurm.conf')
            self._start([_binary('slurmctld'), '-D', '-f', conf])
            self._wait(lambda: self.run('scontrol', 'ping', check=False).returncode == 0, 'slurmctld',
                       f'{self.root}/log/slurmctld.log')
            self._start([_binary('slurmd'), '-D', '-f', conf])
            self._wait(lambda: 'idle' in self.run('sinfo', '-h', '-o', '%T', check=False).stdout, 'slurmd',
                       f'{self.root}/log/slurmd.log')
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self, command: List[str], **kwargs) -> None:
        log = open(os.path.join(self.root, 'log', os.path.basename(command[0]) + '.out'), 'wb')
        self.daemons.append(subprocess.Popen(command, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, **kwargs))
        log.close()

    def _wait(self, ready, name: str, log: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while not ready():
            if self.daemons[-1].poll() is not None or time.time() > deadline:
                tail = open(log).read()[-1500:] if os.path.exists(log) else '(no log)'
                raise RuntimeError(f'{name} did not start: {tail}')
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        """Cancel what is left, then stop the daemons this object started (by pid, newest first)."""
        if self.daemons and self.daemons[-1].poll() is None:
            self.run('scancel', '--full', '--user=root', check=False)
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                daemon.terminate()
                try:
                    daemon.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        self.daemons.clear()
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- jobs ---------------------------------------------------------------------------------------------------

    def job(self, job_id: str) -> Dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ...)."""
        text = self.run('scontrol', 'show', 'job', '-o', job_id).stdout
        return dict(field.split('=', 1) for field in text.split() if '=' in field)

    def wait_for_job(self, job_id: str, predicate, what: str, timeout: float = 300) -> Dict[str, str]:
        deadline = time.time() + timeout
        while True:
            fields = self.job(job_id)
            if predicate(fields):
                return fields
            if time.time() > deadline:
                raise AssertionError(f'job {job_id}: no {what} after {timeout} s ({fields.get("JobState")}, '
                                     f'{fields.get("Reason")})')
            time.sleep(0.3)

    def log_tails(self, chars: int = 1500) -> str:
        """The end of each daemon's log, for failure messages."""
        tails = []
        for name in ('slurmctld.log', 'slurmd.log'):
            path = os.path.join(self.root, 'log', name)
            if os.path.exists(path):
                with open(path) as f:
                    tails.append(f'--- {name}\n{f.read()[-chars:]}')
        return '\n'.join(tails)
