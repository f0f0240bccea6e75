"""A throwaway single-node SLURM cluster on localhost, for tests (Debian's slurm-wlm and munge; root only).

`ensure_installed()` installs the Debian packages when they are missing (raises `Unavailable` where it cannot);
`SlurmCluster` writes a config, starts its own munged, slurmctld and slurmd in the foreground as child processes and,
in `stop()`, cancels its jobs, stops exactly the processes it started (and the helpers they forked) and removes
its config. It will not replace a slurm.conf it did not write, nor run beside SLURM daemons already running.

Facts this relies on: the job-step plugin of Snakemake drops `SLURM_CONF`, so the config must be
/etc/slurm/slurm.conf; a fake GPU is `GresTypes=gpu`, `Gres=gpu:1` on the node and `File=/dev/null` in gres.conf;
without slurmdbd job status comes from squeue, which sees a finished job only for `MinJobAge` seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
COMMANDS = ["slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo", "munged", "mungekey",
            "munge", "unmunge"]
DAEMONS = ("munged", "slurmctld", "slurmscriptd", "slurmd", "slurmstepd")
CONF_DIR = Path("/etc/slurm")
MARKER = "# written by knrecall tests/slurm_cluster.py: a throwaway test cluster, removed when the test ends"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])


class Unavailable(Exception):
    """Why no test cluster can be had on this machine (the test skips with it)."""


class CommandFailed(RuntimeError):
    """A SLURM command that exited non-zero."""


def which(command: str) -> str | None:
    return shutil.which(command, path=SEARCH_PATH)


def missing_commands() -> list[str]:
    return [c for c in COMMANDS if which(c) is None]


def daemon_pids() -> dict[int, str]:
    """{pid: name} of every munged/slurm* process on the machine (read from /proc; nothing is signalled)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if name in DAEMONS and not _is_zombie(int(entry.name)):
                pids[int(entry.name)] = name
    return pids


def _kill_pids(pids, wait: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is left after `wait` seconds: only the given pids."""
    pids = set(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)}
        time.sleep(0.2)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def ensure_installed(timeout: float = 900) -> None:
    """Install Debian's slurmctld, slurmd, slurm-client and munge if any command is missing.

    Raises `Unavailable` (with the reason) where that is impossible: not root, no apt-get, the install failing.
    Daemons that the packages' scripts start (not normally: Debian's policy-rc.d usually denies it) are stopped.
    """
    if not missing_commands():
        return
    if os.geteuid() != 0:
        missing = ", ".join(missing_commands())
        raise Unavailable(f"SLURM is not installed ({missing} missing) and installing it needs root")
    if which("apt-get") is None:
        raise Unavailable("SLURM is not installed and there is no apt-get to install it with")
    before = daemon_pids()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": SEARCH_PATH}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    output = ""
    try:
        for cmd in (install, ["apt-get", "update", "-q"], install):
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            output = result.stdout[-1500:] + result.stderr[-1500:]
            if cmd is install and result.returncode == 0:
                break
    except subprocess.TimeoutExpired:
        output = f"timed out after {timeout} s"
    finally:
        _kill_pids(set(daemon_pids()) - set(before))
    if missing_commands():
        raise Unavailable(f"could not install {' '.join(PACKAGES)} with apt-get: {output.strip()[-600:]}")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


class SlurmCluster:
    """One node (this host, `os.cpu_count()` CPUs, one fake GPU) in one partition, with its own munged."""

    partition = "knrecall"

    def __init__(self, log_dir: Path | None = None):
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.real_memory_mb = int(_memory_mb() * 0.9)
        self.log_dir = log_dir
        self.base: Path | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self._daemons_before: set[int] = set()
        self._started = False
        self._written: list[Path] = []
        self.env = {**os.environ, "PATH": SEARCH_PATH, "SLURM_CONF": str(CONF_DIR / "slurm.conf")}

    # -- commands ------------------------------------------------------------------------------------------------
    def command(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([which(args[0]) or args[0], *args[1:]], env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise CommandFailed(f"{' '.join(args)} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still holds (finished ones for MinJobAge seconds), as `scontrol show job -o` fields."""
        output = self.command("scontrol", "show", "job", "-o").stdout
        jobs = []
        for line in output.splitlines():
            if not line.startswith("JobId="):
                continue
            fields: dict[str, str] = {}
            for token in line.split():  # `Key=value` tokens; a value with spaces continues the previous one
                key, sep, value = token.partition("=")
                if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_/:]*", key):
                    fields[key] = value
                    last = key
                else:
                    fields[last] += " " + token
            jobs.append(fields)
        return jobs

    def logs(self, tail: int = 40) -> str:
        parts = []
        if self.base is not None:
            for path in sorted(self.base.rglob("*.log")):
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 90) -> None:
        if os.geteuid() != 0:
            raise Unavailable("a local SLURM cluster needs root (SlurmUser=root, /etc/slurm/slurm.conf)")
        if missing_commands():
            raise Unavailable(f"SLURM commands missing: {', '.join(missing_commands())}")
        running = {name for name in daemon_pids().values() if name in ("slurmctld", "slurmd")}
        if running:
            raise Unavailable(f"{' and '.join(sorted(running))} already running here: not starting a test cluster")
        for name in ("slurm.conf", "gres.conf"):
            path = CONF_DIR / name
            if path.exists() and MARKER not in path.read_text(errors="replace"):
                raise Unavailable(f"{path} exists (a real SLURM installation?): not replacing it for a test cluster")
        self._daemons_before = set(daemon_pids())
        self._started = True
        # a world-traversable directory (munged runs as user munge and checks every parent's permissions)
        self.base = Path(tempfile.mkdtemp(prefix="knrecall-slurm-"))
        self.base.chmod(0o755)
        munge_dir = self.base / "munge"
        munge_dir.mkdir()
        munge_dir.chmod(0o711)  # munged: the socket directory must be executable by all
        for sub in ("state", "spool", "logs"):
            (self.base / sub).mkdir()
        shutil.chown(munge_dir, "munge", "munge")
        self._start_munged(munge_dir)
        self._write_config(munge_dir / "munge.socket")
        conf = str(CONF_DIR / "slurm.conf")
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-f", conf])
        self._wait(lambda: self.command("scontrol", "ping", check=False).stdout.count("UP") > 0, timeout,
                   "slurmctld to answer `scontrol ping`")
        self._spawn("slurmd", [which("slurmd"), "-D", "-f", conf, "-N", self.host])
        self._wait(self._node_is_idle, timeout, f"node {self.host} to become idle")

    def _spawn(self, name: str, argv: list, **kwargs) -> None:
        log = open(self.base / "logs" / f"{name}.out.log", "wb")
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                env=self.env, start_new_session=True, **kwargs)
        log.close()

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}) while waiting for {what}:\n{self.logs()}")
            try:
                if ready():
                    return
            except (CommandFailed, subprocess.TimeoutExpired):
                pass  # not up yet
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}:\n{self.logs()}")

    def _node_is_idle(self) -> bool:
        state = self.command("sinfo", "-h", "-N", "-n", self.host, "-o", "%T").stdout.strip()
        if state.startswith(("drain", "inval")):  # a config the node does not match: waiting will not help
            reason = self.command("sinfo", "-h", "-N", "-n", self.host, "-o", "%E", check=False).stdout.strip()
            raise RuntimeError(f"node {self.host} is {state}: {reason}\n{self.logs()}")
        return state == "idle"

    def _start_munged(self, munge_dir: Path) -> None:
        key = munge_dir / "munge.key"
        subprocess.run([which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True,
                       user="munge", group="munge", env=self.env, timeout=30)
        self.munge_socket = munge_dir / "munge.socket"
        self._spawn("munged", [which("munged"), "--foreground", f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--pid-file={munge_dir / 'munged.pid'}", f"--seed-file={munge_dir / 'munged.seed'}",
                               f"--log-file={munge_dir / 'munged.log'}"], user="munge", group="munge")

        def works() -> bool:
            if not self.munge_socket.exists():
                return False
            cred = subprocess.run([which("munge"), "-n", "-S", str(self.munge_socket)], capture_output=True,
                                  timeout=10)
            check = subprocess.run([which("unmunge"), "-S", str(self.munge_socket)], input=cred.stdout,
                                   capture_output=True, timeout=10)
            return cred.returncode == 0 and check.returncode == 0

        self._wait(works, 30, "munged to encode and decode a credential")

    def _write_config(self, munge_socket: Path) -> None:
        ctld_port, slurmd_port = 6817, 6818
        if not (_port_is_free(ctld_port) and _port_is_free(slurmd_port)):
            ctld_port, slurmd_port = _free_port(), _free_port()
        base = self.base
        slurm_conf = f"""{MARKER}
ClusterName=knrecall-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={base / 'state'}
SlurmdSpoolDir={base / 'spool'}
SlurmctldPidFile={base / 'slurmctld.pid'}
SlurmdPidFile={base / 'slurmd.pid'}
SlurmctldLogFile={base / 'logs' / 'slurmctld.log'}
SlurmdLogFile={base / 'logs' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# squeue (the status command without slurmdbd) must still see finished jobs: >= 3 x the plugin's first delay
MinJobAge=3600
InactiveLimit=0
KillWait=5
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.real_memory_mb} Gres=gpu:1 State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        gres_conf = f"{MARKER}\nNodeName={self.host} Name=gpu File=/dev/null\n"
        CONF_DIR.mkdir(parents=True, exist_ok=True)
        for name, text in (("slurm.conf", slurm_conf), ("gres.conf", gres_conf)):
            path = CONF_DIR / name  # start() made sure that no such file but ours is there
            self._written.append(path)
            path.write_text(text)
            (base / name).write_text(text)  # a copy that outlives the test's /etc/slurm

    def stop(self) -> None:
        """Cancel the cluster's jobs and stop every process this cluster started; restore /etc/slurm. Idempotent."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            try:
                self.command("scancel", "--partition", self.partition, check=False, timeout=15)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and self.command(
                        "squeue", "-h", "-p", self.partition, "-t", "RUNNING,COMPLETING,PENDING",
                        check=False, timeout=15).stdout.strip():
                    time.sleep(0.5)
            except subprocess.TimeoutExpired:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        # helpers these daemons forked (slurmscriptd, job steps' slurmstepd), started since start(): only those pids
        if self._started:
            time.sleep(1)
            _kill_pids(set(daemon_pids()) - self._daemons_before)
            self._started = False
        for path in self._written:
            if path.exists() and MARKER in path.read_text(errors="replace"):
                path.unlink()
        self._written = []
        if self.base is not None:
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                for path in [*self.base.rglob("*.log"), *self.base.glob("*.conf")]:
                    shutil.copy2(path, self.log_dir / path.name)
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
