"""Process plumbing for the benchmark: start and stop relays, pin cores, read CPU and memory.

CPU time comes from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds on CPU, summed over every
thread of the relay and of its child processes), falling back to utime+stime from
``/proc/<pid>/stat`` (clock ticks) where schedstat is missing. Memory is VmRSS from
``/proc/<pid>/status``, summed over the same process tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A benchmark could not run (relay did not start, load generator failed, ...)."""


def raise_nofile_limit() -> int:
    """Lift RLIMIT_NOFILE to its hard limit (thousands of sockets); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def core_plan() -> tuple[set[int] | None, set[int] | None]:
    """(relay cores, load-generator cores): disjoint when at least two CPUs are usable."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None, None
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pin(cores: set[int] | None) -> None:
    if cores:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cores)


def die_with_parent() -> None:
    """In a child before exec: have the kernel SIGKILL it if the orchestrator dies (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def children_of(pid: int) -> list[int]:
    """Every descendant of pid (scans /proc: cheap enough at phase boundaries)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _task_cpu_ns(pid: int) -> int:
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return _stat_cpu_ns(pid)
    return total


def _stat_cpu_ns(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0
    # fields[0] is state (field 3); utime/stime are fields 14/15 of the whole line.
    ticks = int(fields[11]) + int(fields[12])
    return ticks * 1_000_000_000 // CLOCK_TICKS


def cpu_ns(pids: list[int]) -> int:
    """CPU time (ns) consumed so far by these processes, all threads included."""
    return sum(_task_cpu_ns(pid) for pid in pids)


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


@dataclass
class RelayProcess:
    """A relay under test, started in its own process group, pinned, logging to a file."""

    name: str
    argv: list[str]
    kind: str  # "ws" or "tcp"
    cores: set[int] | None = None
    cwd: str | None = None
    log_path: Path | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    pids: list[int] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> None:
        assert self.log_path is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - the relay owns it for its lifetime
        cores = self.cores

        def before_exec() -> None:
            die_with_parent()
            pin(cores)
            raise_nofile_limit()

        # Runtimes that size thread pools from the CPU count (Go's GOMAXPROCS) get the relay's
        # core count, matching the affinity set before exec.
        env = {**os.environ, **(self.env or {})}
        if cores and "GOMAXPROCS" not in (self.env or {}):
            env["GOMAXPROCS"] = str(len(cores))
        try:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=before_exec,
            )
        except OSError as exc:
            command = shlex.join(self.argv)
            raise BenchError(f"cannot start {self.name} relay ({command}): {exc}") from exc
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self._listening_port()
            if port:
                self.port = port
                time.sleep(0.05)  # let late-starting helper processes appear
                self.pids = [self.proc.pid, *children_of(self.proc.pid)]
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise BenchError(
            f"{self.name} relay did not report listening within {timeout:.0f} s "
            f"({shlex.join(self.argv)}); its output ends with:\n{tail}"
        )

    def _listening_port(self) -> int:
        assert self.log_path is not None
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "listening" not in line:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line[line.index("{") :])
                if record.get("event") == "listening" and record.get("port"):
                    return int(record["port"])
        return 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM to the relay's process group without waiting (stop() waits)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM the relay's process group, SIGKILL it if it lingers."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        # Helper processes may outlive the leader; the group id is still ours to clean up.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc = None
