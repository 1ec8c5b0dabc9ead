"""The Ray backend (keydyn.cluster): collection, evaluation and reproduce on a Ray cluster started here give the
local backend's results, bit for bit, and a Ray evaluation resumes like a local one."""

from __future__ import annotations

import json
import sys

import pytest

from keydyn.cli import main
from keydyn.cluster import ClusterConfig
from keydyn.data.collect import collect
from keydyn.evaluation.reproduce import ReproduceConfig, run_reproduce
from keydyn.presets import from_preset

from .conftest import small_collect_config
from .test_collect import _assert_same_store
from .test_evaluate import FAST_MPC, rows

RAY = ClusterConfig(backend="ray")


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray instance on this machine (2 CPUs, a small object store) shared by the module's tests; each test's
    `ray.init()` (in keydyn.cluster.connect) finds it running."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_collection_on_ray_is_the_local_dataset(ray_cluster, small_dataset, tmp_path):
    out = tmp_path / "ray"
    collect(small_collect_config(out, workers=2, cluster=RAY))  # two actors, episodes written in order here
    _assert_same_store(small_dataset, out)  # every field of every episode, collected in this process


def test_evaluation_on_ray_gives_the_local_rows_and_resumes_only_the_missing_episodes(ray_cluster, small_run, tmp_path):
    def evaluate(out, *flags: str) -> None:
        args = ["evaluate", "--run", str(small_run), "--out", str(out), "--episodes", "2", "--videos", "0"]
        assert main([*args, "--no-progress", *flags, *FAST_MPC]) == 0

    local, on_ray = tmp_path / "local", tmp_path / "ray"
    evaluate(local, "--workers", "0")
    evaluate(on_ray, "--workers", "2", "--cluster.backend", "ray")
    expected = rows(local)
    assert rows(on_ray) == expected  # everything but the wall-clock planning times
    assert [row["index"] for row in expected] == [0, 1]

    # The local evaluation cut after its first episode to finish, resumed on Ray: the other episode alone runs.
    log = local / "episodes.jsonl"
    kept = {**json.loads(log.read_text().splitlines()[0]), "kept": True}  # a mark a re-run episode would lack
    log.write_text(json.dumps(kept) + "\n")
    evaluate(local, "--workers", "2", "--cluster.backend", "ray", "--resume")
    resumed = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row["index"] for row in resumed] == [kept["index"], 1 - kept["index"]] and resumed[0] == kept
    assert rows(local) == [{**row, "kept": True} if row["index"] == kept["index"] else row for row in expected]


def test_reproduce_on_ray_writes_the_local_table(ray_cluster, tmp_path):
    local = tmp_path / "local"
    run_reproduce(from_preset(ReproduceConfig, "reproduce", "tiny", methods=("gt3d",), out=local, progress=False))
    on_ray = tmp_path / "ray"
    args = ["reproduce", "table1", "--preset", "tiny", "--methods", "gt3d", "--no-progress", "--out", str(on_ray)]
    assert main([*args, "--cluster.backend", "ray"]) == 0  # the seed's stages, then the cell's, as Ray tasks
    assert (on_ray / "table.md").read_text() == (local / "table.md").read_text()
    tables = [json.loads((out / "table.json").read_text().replace(str(out), "OUT")) for out in (local, on_ray)]
    assert tables[0] == tables[1]
    _assert_same_store(local / "data/seed0", on_ray / "data/seed0")
    assert rows(on_ray / "eval/gt3d/seed0") == rows(local / "eval/gt3d/seed0")


def test_the_ray_backend_without_ray_names_the_extra_that_installs_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    for flags, message in (
        (["--cluster.backend", "ray"], 'needs Ray: install keydyn\'s cluster extra (pip install -e ".[cluster]")'),
        (["--cluster.address", "auto"], "add --cluster.backend ray"),
    ):
        with pytest.raises(SystemExit) as exited:  # refused while the command line is parsed
            main(["collect", "--out", str(tmp_path / "data"), *flags])
        assert exited.value.code == 2
        assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "data").exists()
