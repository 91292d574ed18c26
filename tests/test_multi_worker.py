"""Multi-worker training on this machine: real worker processes on 127.0.0.1 ports, from shards.

(a) Two workers (MultiWorkerMirroredStrategy, launched by `python -m keras_mgc.distributed
    launch`) end with bit-identical weights, and equal, within floating-point tolerance, to a
    one-worker run of the same command (same global batch).
(b) One worker is SIGKILLed mid-run; the launcher stops the survivor (its collectives cannot
    complete) and restarts the job with the same command; it resumes from the chief's last
    finished epoch, completes, ends where the uninterrupted run of (a) ends, and nothing the
    chief published was ever partial.
Plus the cheap parts: TF_CONFIG checks, the Slurm resolver, the example job files.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from keras_mgc.config import load_recipe
from keras_mgc.data import shard as S
from keras_mgc.data.synthetic_melon import make_synthetic_melon
from keras_mgc.distributed import (ClusterError, TaskInfo, check_tf_config, configure_cluster, make_tf_config,
                                   task_info, tf_config_from_slurm, worker_dir)
from keras_mgc.distributed import main as distributed_main
from tests.conftest import REPO_ROOT

RECIPE = REPO_ROOT / "recipes" / "melon_26_ccs_fsa_s256_c768.yaml"
NAME = "melon_26_ccs_fsa_s256_c768"
EPOCHS, STEPS, BATCH = 3, 2, 8
TINY = ["model.channels=16", "model.ccs.stop=8", "model.fsa.enabled=false", "model.res2_scale=2",
        "model.se_channels=4", "model.attention_channels=8", "eval.modes=[whole]", "eval.headline=whole",
        "train.verbose=2"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", "TF_NUM_INTEROP_THREADS": "1",
       "TF_NUM_INTRAOP_THREADS": "1", "OMP_NUM_THREADS": "1"}
ENV.pop("TF_CONFIG", None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A small Melon-shaped corpus: 50 songs, 10 folds of 5, so train is 8 shards of 5 records.

    Equal shards, as many per worker: only then does each global step of 2 workers hold the
    very crops of the 1-worker run's step (interleave order; BUILD_NOTES.md)."""
    tmp = tmp_path_factory.mktemp("mw")
    corpus = make_synthetic_melon(tmp / "melon", 50, n_genres=5, seed=2, frames=200, multi_genre_fraction=0.0)
    recipe = load_recipe(RECIPE, [f"data.root={corpus}"])
    parts, classes, source = S.parts_from_recipe(recipe, tmp, None)
    S.shard_dataset(parts, tmp / "shards", kind="mel", class_names=classes, sample_rate=22050, frontend={},
                    source=source, records_per_shard=5, workers=1, seed=recipe.seed)
    counts = [sh["n_records"] for sh in json.loads((tmp / "shards" / S.MANIFEST).read_text())["parts"]["train"]["shards"]]
    assert counts == [5] * 8, counts
    return tmp / "shards"


def _train_args(shards: Path, out: Path) -> list[str]:
    return ["--recipe", str(RECIPE), "--set", f"data.shards={shards}", f"train.epochs={EPOCHS}",
            f"train.steps_per_epoch={STEPS}", f"train.batch_size={BATCH}", "data.shuffle_buffer=0",
            "train.distribute=multi_worker", *TINY, "--output-dir", str(out)]


def _launch(shards: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "keras_mgc.distributed", "launch", "--workers", "2", "--max-restarts", "2",
               "--log-dir", str(out / "logs"), "--", *_train_args(shards, out)]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _weights(path: Path) -> dict[str, np.ndarray]:
    import h5py

    found: dict[str, np.ndarray] = {}
    with h5py.File(path) as f:
        f.visititems(lambda n, o: found.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return found


def _final_weights(run: Path) -> dict[str, np.ndarray]:
    state = json.loads((run / "fold_01" / "backup" / "state.json").read_text())
    assert state["epoch"] == EPOCHS
    return _weights(run / "fold_01" / "backup" / state["weights"])


def _digests(log_dir: Path, attempt: int) -> list[str]:
    return [re.search(r"final weights digest (\w+) \(worker %d\)" % i,
                      (log_dir / f"worker{i}.attempt{attempt}.log").read_text()).group(1) for i in range(2)]


@pytest.fixture(scope="module")
def two_worker_run(shards, tmp_path_factory) -> tuple[Path, Path]:
    """The 2-worker job and a 1-worker run of the same command, side by side."""
    tmp = tmp_path_factory.mktemp("runs")
    two = _launch(shards, tmp / "two")
    one = subprocess.run([sys.executable, "-m", "keras_mgc.train", *_train_args(shards, tmp / "one")], cwd=REPO_ROOT,
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    out, _ = two.communicate(timeout=600)
    assert two.returncode == 0, out + "".join(p.read_text()[-3000:] for p in (tmp / "two" / "logs").glob("*"))
    return tmp / "two", tmp / "one"


def test_two_workers_match_each_other_and_one_worker(two_worker_run):
    two, one = two_worker_run
    d0, d1 = _digests(two / "logs", 0)
    assert d0 == d1  # all-reduced gradients, same update: bit-identical on both workers
    a, b = _final_weights(two / NAME), _final_weights(one / NAME)
    assert a.keys() == b.keys()
    # Same global batches, same order of steps; summation order differs (sums over 2 workers
    # vs 1), and Adam's first steps divide by |g| + eps, which turns float noise on gradients
    # that are zero in exact arithmetic (biases before a BatchNorm) into steps of up to
    # ~lr * 1e-2. A run that saw other batches differs by ~lr per step in every weight.
    # Those are named here: the head's embedding-BN beta and dense bias feed the logit BatchNorm,
    # which removes any constant shift (zero gradient in exact arithmetic), and the logit BN's
    # moving mean follows that bias. They only have Adam's bound (|step| <= ~lr); every other
    # weight must agree far more closely (measured: <= 6e-5 with lr 1e-3 over 6 steps).
    lr, steps = 1e-3, EPOCHS * STEPS
    noise_only = ("classifier_head/embedding_bn/vars/1", "classifier_head/dense/vars/1",
                  "classifier_head/logit_bn/vars/2")
    diff = {k: float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a if not k.startswith("optimizer")}
    assert all(any(k.endswith(n) for k in diff) for n in noise_only), sorted(diff)
    worst = max(v for k, v in diff.items() if not k.endswith(noise_only))
    assert worst < 0.05 * lr * steps, worst
    assert max(v for k, v in diff.items() if k.endswith(noise_only)) < 2 * lr * steps
    # The models' predictions agree closely (the noisy biases cancel in BatchNorm).
    p2 = json.loads((two / NAME / "fold_01" / "predictions.json").read_text())
    p1 = json.loads((one / NAME / "fold_01" / "predictions.json").read_text())
    np.testing.assert_allclose(p2["whole"]["scores"], p1["whole"]["scores"], atol=2e-3)
    h2 = json.loads((two / NAME / "fold_01" / "history.json").read_text())
    h1 = json.loads((one / NAME / "fold_01" / "history.json").read_text())
    np.testing.assert_allclose([e["loss"] for e in h2], [e["loss"] for e in h1], rtol=1e-3)
    # Only the chief wrote: no worker folder is left, the run has one set of results.
    assert not list((two).glob(f".{NAME}.workertemp_*"))
    assert (two / NAME / "results.json").is_file() and (two / NAME / "fold_01" / "tensorboard").is_dir()


def _published_whole(run: Path) -> None:
    """Every file the chief has published is complete: JSON parses, .keras archives are whole."""
    for path in run.rglob("*"):
        if not path.is_file() or ".tmp-" in path.name or "workertemp" in str(path):
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".keras":
                with zipfile.ZipFile(path) as z:
                    assert z.testzip() is None, path
        except FileNotFoundError:  # replaced or removed between listing and reading: fine
            continue


def test_killed_worker_rejoins_and_the_job_completes(shards, two_worker_run, tmp_path):
    out = tmp_path / "killed"
    launcher = _launch(shards, out)
    lines: list[str] = []
    first = launcher.stdout.readline()
    lines.append(first)
    pids = {int(i): int(p) for i, p in re.findall(r"(\d) pid (\d+)", first)}
    state = out / NAME / "fold_01" / "backup" / "state.json"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and launcher.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
            break
        _published_whole(out / NAME)
        time.sleep(0.2)
    assert state.is_file(), "no epoch finished: " + "".join((out / "logs").joinpath(f).read_text()[-2000:]
                                                             for f in os.listdir(out / "logs"))
    killed_at = json.loads(state.read_text())["epoch"]
    assert killed_at < EPOCHS
    os.kill(pids[1], signal.SIGKILL)
    while launcher.poll() is None:
        _published_whole(out / NAME)
        time.sleep(0.5)
    lines += launcher.stdout.readlines()
    log = "".join(lines)
    assert launcher.returncode == 0, log
    assert f"worker 1 exited with {-signal.SIGKILL}" in log and "attempt 1: workers" in log
    chief = (out / "logs" / "worker0.attempt1.log").read_text()
    assert re.search(r"resumed fold_01 after epoch [1-9]", chief), chief[-3000:]
    record = json.loads((out / NAME / "fold_01" / "fold.json").read_text())
    assert record["resumed_from_epoch"] >= killed_at and record["epochs_run"] == EPOCHS
    _published_whole(out / NAME)
    assert not list((out / NAME).rglob(".*.tmp-*"))
    d0, d1 = _digests(out / "logs", 1)
    assert d0 == d1
    # The resumed job ends where the uninterrupted 2-worker job ended.
    a, b = _final_weights(out / NAME), _final_weights(two_worker_run[0] / NAME)
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a if not k.startswith("optimizer"))
    assert worst < 1e-5, worst


# --------------------------------------------------------------------------- cluster configuration


def test_tf_config_is_checked_with_clear_errors():
    good = make_tf_config(["10.0.0.1:2222", "10.0.0.2:2222"], 1)
    assert good == {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, "task": {"type": "worker", "index": 1}}
    assert check_tf_config(json.dumps(good)) == good
    bad = [("{", "not valid JSON"), ("[]", "expected a JSON object"),
           ({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}, "out of range"),
           ({"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}, "is not host:port"),
           ({"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}, "listed twice"),
           ({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}, "not one MultiWorkerMirroredStrategy"),
           ({"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, "not a job of the cluster")]
    for config, message in bad:
        with pytest.raises(ClusterError, match=message):
            check_tf_config(config if isinstance(config, str) else json.dumps(config))


@pytest.mark.parametrize("cluster, task, chief", [
    ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
    ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, ("chief", 0), True),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, ("worker", 0), False),  # the chief job's task is the chief
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, ("worker", 1), False),
])
def test_the_chief_is_the_chief_task_else_worker_0_as_tensorflow_decides(monkeypatch, tmp_path, cluster, task, chief):
    from tensorflow.python.distribute import multi_worker_util

    from keras_mgc.runlock import is_chief

    assert multi_worker_util.is_chief(cluster, *task) is chief  # MultiWorkerMirroredStrategy's own rule
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task[0], "index": task[1]}}))
    info = task_info()
    assert info.is_chief is chief and is_chief() is chief  # who writes the run, who takes its lock
    assert info.num_workers == len(cluster.get("chief", [])) + len(cluster["worker"])
    assert (worker_dir(tmp_path / "run", info) == tmp_path / "run") is chief


def test_slurm_environment_gives_tf_config_by_tfs_resolver():
    env = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "gpu[07-08]",
           "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "CUDA_VISIBLE_DEVICES": ""}
    config = tf_config_from_slurm(9000, env)
    assert config == {"cluster": {"worker": ["gpu07:9000", "gpu08:9000"]}, "task": {"type": "worker", "index": 1}}
    assert tf_config_from_slurm(9000, {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert tf_config_from_slurm(9000, {}) is None


def test_configure_cluster_reads_tf_config_else_fills_it_from_slurm(monkeypatch):
    for name in [k for k in os.environ if k.startswith("SLURM_")] + ["TF_CONFIG", "KERAS_MGC_PORT_BASE"]:
        monkeypatch.delenv(name, raising=False)
    assert configure_cluster() == TaskInfo("worker", 0, 1) and "TF_CONFIG" not in os.environ
    given = json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
                        "task": {"type": "worker", "index": 1}})
    monkeypatch.setenv("TF_CONFIG", given)
    assert configure_cluster() == TaskInfo("worker", 1, 3, has_chief=True) and os.environ["TF_CONFIG"] == given
    monkeypatch.setenv("TF_CONFIG", "{")
    with pytest.raises(ClusterError, match="not valid JSON"):
        configure_cluster()
    monkeypatch.delenv("TF_CONFIG")
    for name, value in {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "gpu[07-08]",
                        "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "CUDA_VISIBLE_DEVICES": "",
                        "KERAS_MGC_PORT_BASE": "9000"}.items():
        monkeypatch.setenv(name, value)
    assert configure_cluster() == TaskInfo("worker", 1, 2)
    assert json.loads(os.environ["TF_CONFIG"]) == {"cluster": {"worker": ["gpu07:9000", "gpu08:9000"]},
                                                   "task": {"type": "worker", "index": 1}}


def test_example_job_files_parse_and_give_valid_tf_configs(capsys):
    slurm = REPO_ROOT / "examples" / "slurm_melon.sbatch"
    assert subprocess.run(["bash", "-n", str(slurm)], capture_output=True).returncode == 0
    text = slurm.read_text()
    assert "--ntasks-per-node=1" in text and "train.distribute=multi_worker" in text
    # The script's preflight (each task prints its TF_CONFIG), as task 2 of a simulated 3-node step.
    env = {**ENV, "SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "3", "SLURM_STEP_NODELIST": "n[1-3]",
           "SLURM_STEP_TASKS_PER_NODE": "1(x3)", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "keras_mgc.distributed", "tf-config", "--port-base", "12345"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"cluster": {"worker": ["n1:12345", "n2:12345", "n3:12345"]},
                                       "task": {"type": "worker", "index": 2}}
    # Kubernetes: an Indexed Job; each pod builds TF_CONFIG from its index with our command.
    docs = list(yaml.safe_load_all((REPO_ROOT / "examples" / "k8s_melon_job.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    n = job["spec"]["completions"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    script = container["command"][-1]
    assert "python -m keras_mgc.distributed tf-config" in script and "train.distribute=multi_worker" in script
    hosts = env["WORKER_HOSTS"].split(",")
    assert len(hosts) == n
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["clusterIP"] == "None" and job["spec"]["template"]["spec"]["subdomain"] == \
        service["metadata"]["name"]
    for index in range(n):
        assert distributed_main(["tf-config", "--hosts", env["WORKER_HOSTS"], "--index", str(index)]) == 0
        config = check_tf_config(capsys.readouterr().out)
        assert config["task"]["index"] == index and config["cluster"]["worker"] == hosts
    assert distributed_main(["tf-config", "--hosts", env["WORKER_HOSTS"], "--index", str(n)]) == 2
    assert "task.index 2 out of range for 2 worker task(s)" in capsys.readouterr().err
