"""The Ray executor on a local Ray instance (skipped where Ray is not installed): the same store and report as
the local executor, and a worker killed mid-cell is retried without a half-written record."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from bdprune.experiments.reproduce import reproduce  # noqa: E402

pytestmark = [pytest.mark.fashion_mnist, pytest.mark.slow]
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def local_ray():
    # Workers import bdprune from this checkout, like the driver.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


def records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))}


def test_ray_executor_fills_the_same_store_and_report(micro, local_ray, tmp_path):
    out = tmp_path / "ray"
    summary = reproduce(["table3"], preset="micro", out=out, executor="ray")
    assert summary.cells == 9 and not summary.failed, [o.error for o in summary.failed]
    done = records(out)
    assert len(done) == 9 and all(r["status"] == "ok" for r in done.values())
    assert all(r["threads"] == 1 for r in done.values())  # one CPU per task, one torch thread
    assert "| time (s) |" in (out / "report.md").read_text()
    again = reproduce(["table3"], preset="micro", out=out, executor="ray")
    assert again.outcomes == [] and again.skipped_done == 9


def test_a_worker_killed_mid_cell_is_retried_and_no_record_is_half_written(micro, local_ray, tmp_path):
    out = tmp_path / "killed"
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(summary=reproduce(["table6"], preset="micro", out=out, executor="ray"))
    )
    thread.start()
    killed = None
    deadline = time.time() + 180
    while killed is None and time.time() < deadline and thread.is_alive():
        for marker in (out / "running").glob("*.json") if (out / "running").is_dir() else ():
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError):
                continue
            if info["pid"] != os.getpid():
                os.kill(info["pid"], signal.SIGKILL)  # the worker process running this cell
                killed = marker.stem
                break
        time.sleep(0.05)
    thread.join(timeout=900)  # the retried cell trains again: minutes on a loaded machine
    assert killed is not None, "no cell was caught running"
    assert not thread.is_alive(), "reproduce did not finish within 900 s of the kill"
    summary = result["summary"]
    assert not summary.failed, [o.error for o in summary.failed]
    done = records(out)
    assert len(done) == 11 and killed in done and all(r["status"] == "ok" for r in done.values())
    assert not list((out / "runs").glob(".*.partial"))  # a killed training's directory is gone, never read


def test_a_gpu_preset_on_a_cluster_without_gpus_is_refused_not_left_waiting(local_ray, tmp_path):
    from bdprune.errors import InvalidInput
    from bdprune.experiments.reproduce.executors import run_ray
    from bdprune.experiments.reproduce.work import Context

    with pytest.raises(InvalidInput, match="asks a GPU per task"):
        run_ray([], Context(str(tmp_path)), lambda o, p: None, gpus_per_task=1)
