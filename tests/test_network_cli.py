import json
import os

import pytest

import trainers.network.trainer as trainer_module
from benchmarks import network as bench
from benchmarks import network_report, throughput
from tests.conftest import exit_code, make_dataset

SMALL = ["--batch-size", "4", "--steps", "8", "--eval-every", "4", "--val-samples", "0"]


@pytest.fixture
def cli(tmp_path):
    root = make_dataset(tmp_path / "data", name="fashion-mnist", n_train=300, n_test=40)
    out, logdir = tmp_path / "network.json", tmp_path / "runs"
    return ["--dataset", "fashion-mnist", "--data-dir", str(root), "--out", str(out), "--logdir", str(logdir),
            *SMALL], out, logdir


def test_smoke_run_of_table_2_2_writes_tables_json_tensorboard_and_figure(cli, capsys):
    argv, out, logdir = cli
    assert exit_code(bench.main, [*argv, "--seeds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Table 2.2" in printed and "ring all-reduce of N replicas" in printed
    assert "first sustained validation crossing" in printed and "targets 10nodes-none holds on every seed" in printed
    paired = printed[printed.index("paired by seed") :].splitlines()
    assert paired[3].split()[:2] == ["10nodes-none", "-"] and paired[4].startswith("10nodes-logits   ")
    assert "[" in paired[4] and "1node" not in "".join(paired[:9])  # intervals over 2 seeds; 1 node has no pairs
    order = printed[printed.index("the thesis' ordering of contents") :].splitlines()
    assert [line.split()[:3] for line in order[3:6]] == [["labels", "-", "logits"], ["logits", "-", "features"],
                                                         ["features", "-", "none"]]
    assert order[3].split()[-2:] == ["+2.8", "+2.0"] and not order[6]  # the thesis' gaps; no 20-node row
    data = json.loads(out.read_text())
    names = ["1node", "10nodes-none", "10nodes-logits", "10nodes-labels", "10nodes-features", "20nodes-labels"]
    assert list(data["cells"]) == names
    run = data["cells"]["10nodes-labels"]["runs"]["1"]
    assert run["steps"] == [4, 8] and len(run["test_nodes"]) == 10 and run["samples_sent"] > 0
    assert data["cells"]["1node"]["ring_allreduce_estimate_per_node_step"] == 0
    assert data["cells"]["10nodes-none"]["ring_allreduce_estimate_per_node_step"] > 0
    assert len(run["routing"]) == 16 and run["wire_bytes_per_node_step"] == 0  # one process hands nothing over
    assert data["cells"]["10nodes-labels"]["summary"]["test_collective"]["n"] == 2
    assert (logdir / "network" / "figure_table_2_2.png").stat().st_size > 1000
    assert list((logdir / "network" / "20nodes-labels" / "seed1").glob("events.out.tfevents.*"))


def test_custom_grid_unsupervised_and_rerun_skips_finished_configs(cli, capsys, monkeypatch):
    argv, out, _ = cli
    grid = [*argv, "--unsupervised", "vae", "--nodes", "1,3", "--content", "none,features", "--seeds", "1"]
    assert exit_code(bench.main, grid) == 0
    data = json.loads(out.read_text())
    assert list(data["cells"]) == ["vae-1node", "vae-3nodes-none", "vae-3nodes-features"]
    printed = capsys.readouterr().out
    assert "Table 2.3" in printed and "ordering of contents" not in printed  # Table 2.2's claim, not 2.3's
    assert (out.parent / "runs" / "network" / "figure_table_2_3_vae.png").exists()
    stamp = os.stat(out).st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("a finished configuration was trained again")

    monkeypatch.setattr(trainer_module.NetworkTrainer, "fit", no_training)
    assert exit_code(bench.main, grid) == 0
    runs = lambda d: {c: e["runs"] for c, e in d["cells"].items()}  # noqa: E731
    assert runs(json.loads(out.read_text())) == runs(data) and os.stat(out).st_mtime_ns >= stamp


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--nodes", "4", "--neighbours", "4", "--content", "labels"], "--neighbours must be in 0..nodes-1"),
        (["--nodes", "0"], "--nodes must be >= 1"),
        (["--p-consume", "1.2"], r"probability in [0, 1]"),
        (["--p-broadcast", "-1"], r"probability in [0, 1]"),
        (["--content", "gradients"], "unknown content gradients"),
        (["--nodes", "ten"], "--nodes must be comma-separated integers"),
        (["--nodes", "200", "--content", "labels"], "fewer than a minibatch"),
        (["--nodes", "10", "--content", "labels", "--shard-size", "100"], "10 nodes of 100 images each need 1,000"),
        (["--shard-size", "2"], "--shard-size must hold a minibatch of 4, got 2"),
        (["--lr", "0"], "--lr must be > 0, got 0.0"),
        (["--capacity", "0"], "--capacity must be >= 1, got 0"),
        (["--threads", "-1"], "--threads must be >= 0, got -1"),
        (["--exchange", "all_to_all"], "--exchange does nothing with --distributed False"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(cli, capsys, extra, message):
    argv, out, _ = cli
    assert exit_code(bench.main, [*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_shard_size_sweep_has_a_cell_per_size_and_content_and_a_figure(cli, capsys):
    argv, out, logdir = cli
    sweep = [*argv, "--nodes", "3", "--content", "none,labels", "--seeds", "1", "--sweep", "shard-size=8,16"]
    assert exit_code(bench.main, sweep) == 0
    cells = json.loads(out.read_text())["cells"]
    assert list(cells) == [f"shard-size={s}/3nodes-{c}" for s in (8, 16) for c in ("none", "labels")]
    assert "Sweep over shard-size" in capsys.readouterr().out
    assert (logdir / "network" / "sweep_shard-size.png").stat().st_size > 1000
    assert (logdir / "network" / "sweep_shard-size_average.png").stat().st_size > 1000


def test_throughput_writes_rows_with_ratios_and_fractions_of_peak(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert exit_code(throughput.main, ["--nodes", "1,2", "--models", "dcgan-small", "--steps", "1", "--runs", "2",
                                       "--scale", "3", "--batch-size", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows, peak = data["rows"], data["peak_gflops"]
    assert [(r["model"], r["n_nodes"], r["default"]) for r in rows] == [("dcgan-small", n, True) for n in (1, 2)]
    for r in rows:
        assert r["ratio"] == pytest.approx(r["batched_node_steps_per_s"] / r["loop_node_steps_per_s"])
        achieved = r["batched_node_steps_per_s"] * r["gflop_per_node_step"]
        assert r["batched_peak_fraction"] == pytest.approx(achieved / peak["matmul"])
    assert rows[0]["gflop_per_node_step"] == rows[1]["gflop_per_node_step"] > 0
    assert [r["runs"] for r in data["language"]] == [2] and data["language"][0]["gflop_per_run_step"] > 0
    assert [(r["model"], r["n_nodes"]) for r in data["scale"]] == [("dcgan-small", 3), ("mlp", 3)]
    assert all(r["s_per_step"] > 0 and r["state_mb"] > 0 for r in data["scale"])
    assert data["memory_gb_per_s"] > 0
    assert "of peak" in capsys.readouterr().out
    assert exit_code(throughput.main, ["--nodes", "0", "--out", str(out)]) == 2
    assert "--nodes must be >= 1, got '0'" in capsys.readouterr().err
    assert exit_code(throughput.main, ["--nodes", "2", "--models", "dcgan-small", "--steps", "1", "--out", str(out),
                                       "--runs", "", "--sweep", "batch-size=2,3"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["variant"], r["batch_size"]) for r in rows] == [("batch-size=2", 2), ("batch-size=3", 3)]


def test_a_killed_benchmark_keeps_finished_configs_and_a_rerun_finishes(cli, monkeypatch):
    argv, out, _ = cli
    argv = [*argv, "--nodes", "2,3", "--content", "labels", "--seeds", "1"]
    real_fit, calls = trainer_module.NetworkTrainer.fit, []

    def fit_then_die(self, *a, **k):
        calls.append(self.config.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(self, *a, **k)

    monkeypatch.setattr(trainer_module.NetworkTrainer, "fit", fit_then_die)
    assert exit_code(bench.main, argv) == 130
    assert list(json.loads(out.read_text())["cells"]) == ["2nodes-labels"]
    monkeypatch.setattr(trainer_module.NetworkTrainer, "fit", real_fit)
    assert exit_code(bench.main, argv) == 0
    assert list(json.loads(out.read_text())["cells"]) == ["2nodes-labels", "3nodes-labels"]


@pytest.mark.skipif(not os.environ.get("COMMCHANNELS_DATA"), reason="real Fashion-MNIST needs COMMCHANNELS_DATA")
def test_quick_network_benchmark_on_real_fashion_mnist(tmp_path, capsys):
    out = tmp_path / "quick.json"
    assert exit_code(bench.main, ["--dataset", "fashion-mnist", "--quick", "--out", str(out),
                                  "--logdir", str(tmp_path / "runs")]) == 0
    data = json.loads(out.read_text())
    assert len(data["cells"]) == 6
    assert all(e["runs"]["0"]["test_collective"] > 40 for e in data["cells"].values())  # 40 steps; chance is 10%
    assert "Table 2.2" in capsys.readouterr().out


def test_more_local_processes_than_cores_are_called_oversubscribed(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "5")
    assert network_report.oversubscribed() == " (5 of them on this machine's 2 cores: oversubscribed)"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert network_report.oversubscribed() == ""


def test_the_throughput_benchmark_knows_every_node_model():
    from agents.network import MODELS

    assert set(throughput.SHAPES) == set(MODELS)  # it times any model the network benchmark trains


def test_gossip_and_local_sgd_rows_sit_in_the_table_with_their_bytes(cli, capsys):
    argv, out, _ = cli
    grid = [*argv, "--nodes", "4", "--content", "labels", "--baseline", "gossip,local-sgd,allreduce", "--average-every",
            "1,4"]
    assert exit_code(bench.main, grid) == 0
    cells = json.loads(out.read_text())["cells"]
    assert list(cells) == ["4nodes-labels", "4nodes-gossip-k2-every1", "4nodes-gossip-k2-every4",
                           "4nodes-gossip-k3-every1", "4nodes-gossip-k3-every4", "4nodes-local-sgd-every1",
                           "4nodes-local-sgd-every4", "4nodes-allreduce"]
    sent = {c: e["runs"]["0"]["bytes_sent_per_node_step"] for c, e in cells.items()}
    assert sent["4nodes-gossip-k2-every1"] == 4 * sent["4nodes-gossip-k2-every4"] == 2 * sent[
        "4nodes-local-sgd-every1"] == 2 * sent["4nodes-allreduce"] > 100 * sent["4nodes-labels"]
    assert "4nodes-gossip-k3-every4" in capsys.readouterr().out
    assert (out.parent / "runs" / "network" / "accuracy_vs_bytes.png").stat().st_size > 1000
    assert exit_code(bench.main, [*argv, "--average-every", "2"]) == 2
    assert "--average-every does nothing without --baseline" in capsys.readouterr().err
