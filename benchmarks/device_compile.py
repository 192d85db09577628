"""The device check's compile phase: worker processes lower and compile the units' programs at
once, without running them, and store them (benchmarks/device_programs.py), so that the
measure phase loads each program instead of compiling it (issue 22: 24 training-step
programs of 40 to 100 s each on an H200 cannot compile one after another in the lease).

Compilation is mostly one thread per program; each worker process (JAX on the device, with no
memory preallocated) takes the next program of the queue, in the plan's order, until the queue
is empty or the phase's deadline, when the workers still compiling are ended (their programs
are compiled by the measure phase if it has time). A worker that dies fails its program only.
"""

import collections
import contextlib
import gc
import json
import os
import subprocess
import sys
import threading
import time

import jax

from benchmarks import device_programs
from cm import compile_cache
from cm.io import fileio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"  # "false": JAX takes device memory as it needs it
MAX_AUTO_JOBS = 8  # workers when --jobs=0: half the host's cores, at most this many
RESULT = "RESULT "  # a worker's result line


def auto_jobs(cores: int | None) -> int:
    return max(1, min(MAX_AUTO_JOBS, (cores or 1) // 2))


def program_tasks(units: list) -> list:
    """[(program uid, spec)] that the units run, in their order, each once (a profile unit
    runs the program of a train unit: spec["program"])."""
    tasks = {}
    for uid, spec in units:
        if spec["kind"] == "profile":
            tasks.setdefault(spec["program"], {**spec, "kind": "train"})
        else:
            tasks.setdefault(uid, spec)
    return list(tasks.items())


def compile_one(spec: dict, store: str) -> dict:
    """A worker's task: compile and store the program; a failure is a result too."""
    try:
        return device_programs.compile_and_store(device_programs.build(spec), store)
    except Exception as e:  # noqa: BLE001 (one program's failure is its row, not the phase's end)
        return {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    finally:
        jax.clear_caches()
        gc.collect()


def worker_main(store: str):
    """A worker process: one JSON [uid, spec] per stdin line, one RESULT line per program."""
    for line in sys.stdin:
        _, spec = json.loads(line)
        print(RESULT + json.dumps(compile_one(spec, store)), flush=True)


def _start_worker(store: str) -> subprocess.Popen:
    """A worker with the persistent cache off (its executables are stored instead:
    benchmarks/device_programs.py says why) and no device memory preallocated."""
    argv = [sys.executable, "-m", "benchmarks.device_check", "--compile_worker"]
    argv += [f"--store={store}", "--compilation_cache_dir="]
    env = {k: v for k, v in os.environ.items() if k != compile_cache.ENV_DIR}
    env[PREALLOCATE] = "false"
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def _result(proc: subprocess.Popen, uid: str, spec: dict) -> dict | None:
    """The worker's result for one program, or None when it ended first."""
    try:
        proc.stdin.write(json.dumps([uid, spec]) + "\n")
        proc.stdin.flush()
    except (BrokenPipeError, OSError):
        return None
    for line in proc.stdout:
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    return None


def run_phase(tasks: list, jobs: int, store: str, seconds: float, record):
    """Compiles `tasks` ([(uid, spec)]) into `store` in `jobs` worker processes within
    `seconds`, calling record(uid, result) as each finishes (serialized); returns {programs,
    compiled, failed, cut, jobs, wall_s}."""
    fileio.makedirs(store)
    start, deadline = time.monotonic(), time.monotonic() + seconds
    queue, lock = collections.deque(tasks), threading.Lock()
    workers, counts = [], collections.Counter()

    def serve():
        proc = None
        while True:
            with lock:
                if not queue or time.monotonic() >= deadline:
                    break
                uid, spec = queue.popleft()
                if proc is None:
                    proc = _start_worker(store)
                    workers.append(proc)
            print(f"compiling {uid} ...", file=sys.stderr, flush=True)
            result = _result(proc, uid, spec)
            with lock:
                if result is None and time.monotonic() >= deadline:
                    counts["cut"] += 1
                    break
                if result is None:  # the worker died (killed, out of host memory)
                    result = {"error": f"the compile worker ended (exit {proc.poll()})"}
                    proc = None
                counts["failed" if "error" in result else "compiled"] += 1
                record(uid, result)
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the worker's loop ends
            proc.wait()

    threads = [threading.Thread(target=serve, daemon=True) for _ in range(max(jobs, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0) if deadline < float("inf") else None)
    if any(thread.is_alive() for thread in threads):  # the deadline: end what still compiles
        with lock:
            for proc in workers:
                proc.kill()
    for thread in threads:
        thread.join()
    counts["cut"] += len(queue)
    summary = {"programs": len(tasks), "jobs": jobs, "wall_s": time.monotonic() - start}
    return {**summary, **{k: counts[k] for k in ("compiled", "failed", "cut")}}
