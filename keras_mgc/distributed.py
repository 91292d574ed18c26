"""Multi-worker training: the cluster (TF_CONFIG, Slurm, Kubernetes), who writes what, and a local launcher.

A multi-worker job is N copies of the same `python -m keras_mgc.train ...` command, one
per host (or process), each told the cluster and its own index by `TF_CONFIG`, the
environment variable TensorFlow's MultiWorkerMirroredStrategy reads:

    {"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": 0}}

- Slurm: with no TF_CONFIG but SLURM_PROCID set in a multi-task step, TF_CONFIG is made
  by TF's own `SlurmClusterResolver` (hosts from SLURM_STEP_NODELIST, one port per task
  from `--port-base`/KERAS_MGC_PORT_BASE, default 8888).
- Kubernetes (an Indexed Job): the container builds it from the pod's index:
  `export TF_CONFIG=$(python -m keras_mgc.distributed tf-config --hosts H0:P,H1:P --index $JOB_COMPLETION_INDEX)`.
- Here (one machine): `python -m keras_mgc.distributed launch --workers 2 -- <train args>`
  starts N local workers on free 127.0.0.1 ports and, when one dies, stops the others
  and starts the whole job again (it resumes from the last finished epoch): that is what
  a cluster scheduler's restart policy does, and what TensorFlow's fault-tolerance model
  for MultiWorkerMirroredStrategy expects (a dead peer makes the survivors' collectives
  fail or hang; the job restarts and BackupAndRestore resumes it).

Worker 0 (or the "chief" task when there is one) is the chief: it alone writes the run's
results, checkpoints of record and TensorBoard logs; the other workers write theirs to a
temporary folder that is deleted at the end (Keras's multi-worker convention). All
workers read the chief's backup to resume, so the run folder must be on a file system
every worker sees (NFS, a cluster file system).

This module does not import TensorFlow at import time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ClusterError(ValueError):
    """A TF_CONFIG or cluster environment that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class TaskInfo:
    """This process's place in the job."""

    task_type: str
    index: int
    num_workers: int
    has_chief: bool = False  # the cluster has a "chief" job

    @property
    def is_chief(self) -> bool:
        """The chief task, else (no chief job) worker 0: TensorFlow's rule (multi_worker_util.is_chief)
        for the tasks that train; an evaluator, which TF counts as its own chief, never writes the run.

        >>> TaskInfo("worker", 0, 2).is_chief, TaskInfo("worker", 0, 2, has_chief=True).is_chief
        (True, False)
        """
        if self.has_chief:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.index == 0


# --------------------------------------------------------------------------- TF_CONFIG


def check_tf_config(config: Any, source: str = "TF_CONFIG") -> dict[str, Any]:
    """Parse (if a string) and check a TF_CONFIG; returns it as a dict or raises ClusterError."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as exc:
            raise ClusterError(f"{source}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(config, dict):
        raise ClusterError(f"{source}: expected a JSON object with 'cluster' and 'task'")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ClusterError(f"{source}: 'cluster' must map job names to lists of host:port addresses")
    for job, addresses in cluster.items():
        if job not in ("chief", "worker", "evaluator"):
            raise ClusterError(f"{source}: job {job!r} is not one MultiWorkerMirroredStrategy runs "
                               "(chief, worker, evaluator)")
        if not isinstance(addresses, list) or not addresses:
            raise ClusterError(f"{source}: cluster.{job} must be a non-empty list of host:port")
        for a in addresses:
            host, sep, port = str(a).rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ClusterError(f"{source}: cluster.{job} address {a!r} is not host:port")
    all_addresses = [a for v in cluster.values() for a in v]
    if len(set(all_addresses)) != len(all_addresses):
        raise ClusterError(f"{source}: an address is listed twice: {all_addresses}")
    if len(cluster.get("chief", [])) > 1:
        raise ClusterError(f"{source}: at most one chief")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ClusterError(f"{source}: 'task' must be {{\"type\": ..., \"index\": ...}}")
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise ClusterError(f"{source}: task.type {kind!r} is not a job of the cluster ({sorted(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ClusterError(f"{source}: task.index {index!r} out of range for {len(cluster[kind])} {kind} task(s)")
    return config


def make_tf_config(hosts: list[str], index: int, task_type: str = "worker") -> dict[str, Any]:
    """TF_CONFIG for worker `index` of `hosts` (host:port each), checked."""
    return check_tf_config({"cluster": {"worker": list(hosts)}, "task": {"type": task_type, "index": index}},
                           "the cluster")


def tf_config_from_slurm(port_base: int = 8888, environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """TF_CONFIG for this Slurm task, by TF's SlurmClusterResolver; None outside a multi-task Slurm step."""
    env = os.environ if environ is None else environ
    if "SLURM_PROCID" not in env:
        return None
    from tensorflow.python.distribute.cluster_resolver import slurm_cluster_resolver as slurm

    saved = dict(os.environ)
    try:
        os.environ.update(env)
        ntasks = slurm._get_num_slurm_tasks()  # noqa: SLF001 - TF's own reading of SLURM_STEP_NUM_TASKS
        if ntasks <= 1:
            return None
        tasks = slurm.expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", str(ntasks)))
        # CPU-only or GPU: GPUs are assigned by the resolver only when the node reports some.
        gpus = slurm.get_num_gpus() if env.get("CUDA_VISIBLE_DEVICES", "") != "" else 0
        per_node = max(tasks)
        resolver = slurm.SlurmClusterResolver(port_base=port_base, gpus_per_node=max(gpus, per_node),
                                              gpus_per_task=max(gpus // per_node, 1), auto_set_gpu=gpus > 0)
        spec = resolver.cluster_spec().as_dict()
        task_type, task_id = resolver.get_task_info()
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ClusterError(f"Slurm environment: {exc}") from None
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return check_tf_config({"cluster": spec, "task": {"type": task_type, "index": task_id}}, "Slurm")


def environment_tf_config(port_base: int) -> dict[str, Any] | None:
    """The TF_CONFIG this environment gives, checked: TF_CONFIG itself when set, else this
    Slurm task's (`tf_config_from_slurm`); None with neither."""
    raw = os.environ.get("TF_CONFIG")
    return check_tf_config(raw) if raw else tf_config_from_slurm(port_base)


def configure_cluster() -> TaskInfo:
    """Make sure TF_CONFIG describes this process (from Slurm when unset) and return its place.

    No TF_CONFIG and no Slurm step: a one-worker job (MultiWorkerMirroredStrategy runs locally).
    """
    config = environment_tf_config(int(os.environ.get("KERAS_MGC_PORT_BASE", "8888")))
    if config is not None and not os.environ.get("TF_CONFIG"):  # made from Slurm
        os.environ["TF_CONFIG"] = json.dumps(config)
    return task_info()


def task_info() -> TaskInfo:
    """This process's place from TF_CONFIG (a one-worker job when unset)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return TaskInfo("worker", 0, 1)
    config = check_tf_config(raw)
    cluster = config["cluster"]
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    return TaskInfo(config["task"]["type"], int(config["task"]["index"]), workers, has_chief="chief" in cluster)


def worker_dir(run_dir: Path, info: TaskInfo) -> Path:
    """Where this worker writes: the run folder for the chief, a private temporary folder otherwise."""
    # Beside the run folder, not in it: the chief's --overwrite may delete the run folder.
    return run_dir if info.is_chief else run_dir.parent / f".{run_dir.name}.workertemp_{info.task_type}_{info.index}"


# --------------------------------------------------------------------------- Keras fixes


def fix_keras_multi_worker(model: Any, strategy: Any) -> None:
    """Work around two Keras 3 bugs that stop `fit` under MultiWorkerMirroredStrategy with >1 worker.

    keras-team/keras#20585 (open): (1) `fit` reduces the first (x, y) batch across workers with
    `strategy.reduce` on a tuple, which CollectiveAllReduceStrategy cannot convert; only its
    shapes are needed, so we build from this worker's local batch; (2) the per-step metric
    scalars are reduced with `axis=0`, invalid for a scalar; we reduce with `axis=None` (the
    mean over replicas, what MirroredStrategy's path computes). Both are private Keras
    internals, patched only when a multi-worker strategy is in use (test_multi_worker.py
    fails if a Keras upgrade changes them).
    """
    import types

    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    def local_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, batch)
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(local_symbolic_build, model)
    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values: Any, strategy_: Any, reduction: str) -> Any:
        if isinstance(strategy_, tf.distribute.MultiWorkerMirroredStrategy) and reduction in ("auto", "mean"):
            return tf.nest.map_structure(
                lambda v: strategy_.reduce("MEAN", v, axis=None)
                if isinstance(v, tf.distribute.DistributedValues) or tf.is_tensor(v) else v, values)
        return original(values, strategy_, reduction)

    reduce_per_replica.__wrapped__ = original  # type: ignore[attr-defined]
    tf_trainer.reduce_per_replica = reduce_per_replica


# --------------------------------------------------------------------------- local launcher


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (bound and released: free at the time of asking)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _start_job(n: int, command: list[str], log_dir: Path, attempt: int) -> list[subprocess.Popen]:
    hosts = [f"127.0.0.1:{p}" for p in free_ports(n)]
    procs = []
    for i in range(n):
        env = {**os.environ, "TF_CONFIG": json.dumps(make_tf_config(hosts, i))}
        log = open(log_dir / f"worker{i}.attempt{attempt}.log", "w")  # noqa: SIM115 - closed in _stop
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        proc.log = log  # type: ignore[attr-defined]
        procs.append(proc)
    print(f"attempt {attempt}: workers " + ", ".join(f"{i} pid {p.pid} at {h}" for i, (p, h) in
                                                    enumerate(zip(procs, hosts))), flush=True)
    return procs


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for p in procs:
        p.log.close()  # type: ignore[attr-defined]


def launch(n: int, command: list[str], log_dir: Path, max_restarts: int = 3, poll: float = 0.5) -> int:
    """Run `command` as an n-worker job on this machine; restart the whole job when a worker fails.

    Returns 0 when every worker exited 0; the failing exit code once `max_restarts` is spent.
    A worker exiting with 1 or 2 (training diverged; bad recipe or data) is not retried:
    running again would fail the same way.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        procs = _start_job(n, command, log_dir, attempt)
        failed = None
        try:
            while failed is None:
                codes = [p.poll() for p in procs]
                if all(c == 0 for c in codes):
                    _stop(procs)
                    return 0
                failed = next(((i, c) for i, c in enumerate(codes) if c not in (None, 0)), None)
                if failed is None:
                    time.sleep(poll)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): take the workers down too
            _stop(procs)
            raise
        i, code = failed
        print(f"attempt {attempt}: worker {i} exited with {code}; stopping the others", flush=True)
        _stop(procs)
        if code in (1, 2) or attempt >= max_restarts:
            return code if code > 0 else 128 - code
        attempt += 1


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_mgc.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tfc = sub.add_parser("tf-config", help="print the TF_CONFIG this environment gives (checked)")
    tfc.add_argument("--hosts", help="comma-separated host:port of every worker (Kubernetes)")
    tfc.add_argument("--index", type=int, help="this worker's index (e.g. $JOB_COMPLETION_INDEX)")
    tfc.add_argument("--port-base", type=int, default=8888, help="first port per node (Slurm)")
    run = sub.add_parser("launch", help="run a training command as N local workers, restarting on failure")
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--max-restarts", type=int, default=3)
    run.add_argument("--log-dir", default="launch_logs")
    run.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the arguments of keras_mgc.train")
    args = parser.parse_args(argv)
    try:
        if args.command == "tf-config":
            if args.hosts is not None:
                if args.index is None:
                    raise ClusterError("--hosts needs --index")
                config = make_tf_config([h.strip() for h in args.hosts.split(",") if h.strip()], args.index)
            else:
                config = environment_tf_config(args.port_base)
                if config is None:
                    raise ClusterError("no TF_CONFIG, no --hosts and not in a multi-task Slurm step")
            print(json.dumps(config))
            return 0
        if args.workers < 1:
            raise ClusterError(f"--workers must be >= 1, got {args.workers}")
        train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
        if not train_args:
            raise ClusterError("launch: give the training arguments after --")
        command = [sys.executable, "-m", "keras_mgc.train", *train_args]
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return launch(args.workers, command, Path(args.log_dir), args.max_restarts)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
