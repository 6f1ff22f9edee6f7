"""The benchmark runner on a toy list: the demo experiment and a warm-up variant of it, 2 seeds,
2 iterations, on a tiny synthcrowd, through the real pods_train / pods_test subprocesses:
report files, reuse of finished runs, resume of a half-finished one, refusal of a run dir made
from another config."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from crowdloss.data.synthetic import generate_synthcrowd
from crowdloss.tools.bench_stages import failure_reason
from crowdloss.tools.benchmark import main, plan_runs, prepare_runs

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "playground/detection/synthcrowd/lla.res18.fpn.synthcrowd.256size.2600"
TOY = ["SOLVER.LR_SCHEDULER.MAX_ITER", "2", "SOLVER.LR_SCHEDULER.STEPS", "(1,)",
       "SOLVER.LR_SCHEDULER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "1",
       "SOLVER.IMS_PER_BATCH", "2", "SOLVER.IMS_PER_DEVICE", "2", "DATALOADER.NUM_WORKERS", "0",
       "TEST.EVAL_PERIOD", "0",  # pods_train evaluates its final model (pods_test: below)
       # an untrained model scores below the usual 0.05: keep its boxes so metrics are numbers
       "MODEL.FCOS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "20"]


def test_plan_is_seed_major_with_per_experiment_overrides(tmp_path):
    runs = plan_runs([f"a={DEMO}", f"b={DEMO}"], [0, 1], str(tmp_path), ["X", "1"],
                     [["b", "Y", "2"]])
    assert [(r.label, r.seed) for r in runs] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert runs[3].overrides == ["X", "1", "Y", "2"] and runs[0].overrides == ["X", "1"]
    assert runs[3].out == str(tmp_path / "b" / "seed1")
    with pytest.raises(SystemExit, match="used twice"):
        plan_runs([str(DEMO), str(DEMO)], [0], str(tmp_path))
    with pytest.raises(SystemExit, match="no experiment has that label"):
        plan_runs([str(DEMO)], [0], str(tmp_path), [], [["zz", "Y", "2"]])
    with pytest.raises(SystemExit, match="no config.py"):
        plan_runs([str(tmp_path)], [0], str(tmp_path))


def test_plan_gives_one_experiment_its_own_seeds(tmp_path):
    runs = plan_runs([f"a={DEMO}", f"b={DEMO}"], [0, 1], str(tmp_path),
                     exp_seeds=[["b", "0", "1", "2", "3"]])
    assert [(r.label, r.seed) for r in runs] == [("a", 0), ("b", 0), ("a", 1), ("b", 1),
                                                 ("b", 2), ("b", 3)]
    runs = plan_runs([f"a={DEMO}", f"b={DEMO}"], [0, 1], str(tmp_path),
                     exp_seeds=[["a", "5"]])
    assert [(r.label, r.seed) for r in runs] == [("b", 0), ("b", 1), ("a", 5)]
    for bad in (["b"], ["b", "1", "1"], ["b", "x"]):
        with pytest.raises(SystemExit, match="expected distinct integer seeds"):
            plan_runs([f"b={DEMO}"], [0], str(tmp_path), exp_seeds=[bad])
    with pytest.raises(SystemExit, match="no experiment has that label"):
        plan_runs([f"b={DEMO}"], [0], str(tmp_path), exp_seeds=[["zz", "1"]])


def test_plan_can_fix_seed_and_vary_the_data_stream(tmp_path):
    runs = plan_runs([f"init={DEMO}", f"data={DEMO}"], [3, 4], str(tmp_path), [],
                     [["init", "DATALOADER.SEED", "0"],
                      ["data", "SEED", "0", "DATALOADER.SEED", "{seed}"]])
    by = {(r.label, r.seed): r for r in runs}
    assert by["data", 4].overrides == ["SEED", "0", "DATALOADER.SEED", "4"]
    # SEED <k> comes first, so an override fixes it; the config sees what the run trains with
    assert by["data", 4].cli_args()[-6:] == ["SEED", "4", "SEED", "0", "DATALOADER.SEED", "4"]
    assert by["init", 3].config_overrides() == ["SEED", "3", "DATALOADER.SEED", "0"]
    prepare_runs(runs)
    assert len({r.fingerprint for r in runs}) == 4  # four different trainings
    with pytest.raises(SystemExit, match="no value uses {seed}"):
        plan_runs([str(DEMO)], [0, 1], str(tmp_path), ["SEED", "0"])


@pytest.mark.slow
def test_runner_trains_reports_reuses_and_resumes(tmp_path, monkeypatch, capsys):
    generate_synthcrowd(str(tmp_path / "ds" / "synthcrowd"), num_train=8, num_val=4, seed=3)
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(tmp_path / "ds"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    out = tmp_path / "bench"
    argv = ["--output", str(out), "--seeds", "0", "1", "--jobs", "2", f"lla={DEMO}",
            f"wu={DEMO}", f"top5={DEMO}", "--exp-opts", "wu", "MODEL.LLA.WARMUP_ITERS", "1",
            "--exp-opts", "top5", "TEST.DETECTIONS_PER_IMAGE", "5", "--opts", *TOY]
    assert main(argv) == 0

    # top5 differs from lla in a test-time key only: it scores lla's models, trains nothing.
    for seed in (0, 1):
        top5 = out / "top5" / f"seed{seed}"
        record = json.loads((top5 / "benchmark_run.json").read_text())
        trainer = json.loads((out / "lla" / f"seed{seed}" / "benchmark_run.json").read_text())
        assert record["trained_by"] == str(out / "lla" / f"seed{seed}")
        assert record["train"] == trainer["train"] and record["test"]["invocations"] == 1
        assert (top5 / "model_final.pth").is_symlink() and not (top5 / "log.txt").exists()
        odgt = top5 / "inference" / "model_final" / "synthcrowd_val" / "crowdhuman_results.odgt"
        assert max(len(json.loads(line)["dtboxes"]) for line in odgt.open()) == 5
    assert "top5 scores the models trained by lla" in (out / "report.md").read_text()

    report = (out / "report.md").read_text()
    assert "| lla | 2 |" in report and "| wu | 2 |" in report and "+-" in report
    for label in ("lla", "wu"):
        for seed in (0, 1):
            assert f"| {label} | {seed} |" in report
    results = json.loads((out / "results.json").read_text())
    assert results["missing"] == [] and len(results["runs"]) == 6
    ap = results["experiments"]["lla"]["datasets"]["synthcrowd_val"]["metrics"]["AP"]
    assert ap["n"] == 2 and all(0 <= v <= 1 for v in ap["values"])
    bands = results["expected_results"]["lla"]
    assert ["synthcrowd_val", "crowdhuman", "AP"] == bands[0][:3] and bands[0][4] >= 0.01
    assert (out / "ap_mr.png").stat().st_size > 0 and (out / "mr_fppi.png").stat().st_size > 0
    run_dir = out / "wu" / "seed1"
    record = json.loads((run_dir / "benchmark_run.json").read_text())
    assert record["seed"] == 1 and record["train"]["invocations"] == 1
    assert record["train"]["wall_s"] > 0 and record["train"]["cpu_s"] > 0
    assert "test" not in record  # pods_train evaluated its final checkpoint: no pods_test
    assert "assignment warm-up over at iteration 1" in (run_dir / "log.txt").read_text()
    assert "warm-up" not in (out / "lla" / "seed1" / "log.txt").read_text()

    halves = record["results"]["synthcrowd_val"]["val_halves"]
    assert halves["images"] == 4 and len(halves["mMR"]) == 20 and len(halves["mMR"][0]) == 2

    # Same command again: every run is reused, nothing is started; a record written before the
    # split halves existed gets them from the run's saved detections, not from a new scoring.
    del record["results"]["synthcrowd_val"]["val_halves"]
    (run_dir / "benchmark_run.json").write_text(json.dumps(record))
    log = (run_dir / "benchmark.log").read_text()
    assert main(argv) == 0
    assert (run_dir / "benchmark.log").read_text() == log
    again = json.loads((run_dir / "benchmark_run.json").read_text())
    assert again["results"]["synthcrowd_val"]["val_halves"] == halves
    assert again["train"] == record["train"] and "test" not in again
    (run_dir / "benchmark_run.json").write_text(json.dumps(record))  # and with --report-only
    assert main(["--report-only", *argv]) == 0
    again = json.loads((run_dir / "benchmark_run.json").read_text())
    assert again["results"]["synthcrowd_val"]["val_halves"] == halves

    # A half-finished run (killed after its first checkpoint) resumes where it stopped.
    (run_dir / "model_final.pth").unlink()
    (run_dir / "last_checkpoint").write_text("model_iter_0000001.pth")
    assert main(argv) == 0
    record = json.loads((run_dir / "benchmark_run.json").read_text())
    assert record["train"]["invocations"] == 2 and (run_dir / "model_final.pth").exists()
    assert "Resuming at iteration 1" in (run_dir / "log.txt").read_text()

    # --always-test: pods_test scores the final checkpoints again (the path taken when the
    # training evaluated nothing); the same numbers come back.
    before = json.loads((run_dir / "benchmark_run.json").read_text())["results"]
    assert main(["--output", str(out), "--seeds", "1", "--always-test", *argv[5:]]) == 0
    record = json.loads((run_dir / "benchmark_run.json").read_text())
    assert record["test"]["invocations"] == 1
    key = "synthcrowd_val"
    assert record["results"][key]["metrics"] == before[key]["metrics"]

    # Only a test-time key changed: the run is scored again, not trained again.
    few = ["--output", str(out), f"lla={DEMO}", "--seeds", "1", "--opts", *TOY,
           "TEST.DETECTIONS_PER_IMAGE", "3"]
    lla1 = out / "lla" / "seed1"
    before = json.loads((lla1 / "benchmark_run.json").read_text())
    assert main(few) == 0
    record = json.loads((lla1 / "benchmark_run.json").read_text())
    assert record["train"] == before["train"]
    assert record["test"]["invocations"] == before.get("test", {}).get("invocations", 0) + 1
    odgt = lla1 / "inference" / "model_final" / "synthcrowd_val" / "crowdhuman_results.odgt"
    assert max(len(json.loads(line)["dtboxes"]) for line in odgt.open()) == 3

    # Another config into the same run dirs is refused, not reused.
    capsys.readouterr()
    assert main(argv + ["SOLVER.OPTIMIZER.BASE_LR", "0.001"]) == 1
    assert "another config" in capsys.readouterr().out


def test_a_failed_run_is_named_with_its_reason(tmp_path, monkeypatch):
    # A diverging toy run (LR 1e30): pods_train stops on the non-finite loss; the record keeps
    # the CLI's error line and the report names the seed with it, on the run and on
    # --report-only, instead of only leaving it out.
    generate_synthcrowd(str(tmp_path / "ds" / "synthcrowd"), num_train=8, num_val=4, seed=3)
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(tmp_path / "ds"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    out = tmp_path / "bench"
    argv = ["--output", str(out), f"bad={DEMO}", "--seeds", "0", "--opts", *TOY,
            "SOLVER.OPTIMIZER.BASE_LR", "1e30"]
    assert main(argv) == 1
    failed = json.loads((out / "bad" / "seed0" / "benchmark_run.json").read_text())["failed"]
    assert failed.startswith("pods_train exit 1: pods_train: error: ") and "NaN" in failed
    for args in (argv, ["--report-only", *argv]):
        main(args)
        assert f"Failed (left out above): bad seed 0: {failed}" in (out / "report.md").read_text()
        results = json.loads((out / "results.json").read_text())
        assert results["failed"] == {"bad seed 0": failed} and results["missing"] == ["bad seed 0"]
        assert "Not finished" not in (out / "report.md").read_text()


def test_failure_reason_is_the_last_error_line(tmp_path):
    log = tmp_path / "benchmark.log"
    log.write_text("iter 1\nTraceback\nRuntimeError: boom\npods_train: error: RuntimeError: boom\n\n")
    assert failure_reason("pods_train exit 1", str(log)) == \
        "pods_train exit 1: pods_train: error: RuntimeError: boom"
    log.write_text("iter 1\nKilled\n")  # no error line: the last line
    assert failure_reason("pods_train exit -9", str(log)) == "pods_train exit -9: Killed"
    assert "could not be read" in failure_reason("pods_test exit 1", str(tmp_path / "none"))
    log.write_text("pods_train: error: " + "x" * 500 + "\n")  # cut, pointing at the log
    assert failure_reason("s", str(log), max_chars=30) == \
        f"s: pods_train: error: {'x' * 11} ... (the rest in {log})"


def _record(label, seed, ap, mr, wall=60.0):
    return {"label": label, "seed": seed, "experiment": "/x/" + label, "overrides": [],
            "train": {"wall_s": wall, "cpu_s": wall / 2, "invocations": 1},
            "results": {"synthcrowd_val": {
                "task": "crowdhuman",
                "metrics": {"AP": ap, "mMR": mr, "Recall": 0.9, "JI": 0.5},
                "curve": {"fppi": [0.01, 0.1, 1.0], "miss_rate": [0.9, 0.6, mr]},
                "val_bootstrap": {"images": 1000, "samples": 200,
                                  "std": {"AP": 0.005, "mMR": 0.01, "Recall": 0.004}}},
                # TEST.COCO_METRICS beside it: a table, not a plot (its AP is not AP50).
                "synthcrowd_val COCO": {"dataset": "synthcrowd_val", "task": "bbox",
                                        "metrics": {"AP": ap / 2, "AP50": ap, "moLRP": mr}}}}


def test_report_tables_bands_and_plots(tmp_path):
    from crowdloss.tools.bench_report import write_report
    from crowdloss.tools.benchmark import Run

    records = [_record("a", 0, 0.60, 0.80), _record("a", 1, 0.62, 0.76),
               _record("a", 2, 0.64, 0.78), _record("b", 0, 0.50, 0.90)]
    runs = [Run(lb, "/x/" + lb, s, str(tmp_path / lb / f"seed{s}")) for s in (0, 1, 2)
            for lb in ("a", "b")]
    write_report(records, runs, str(tmp_path), command="CMD", band_k=3.0)
    md = (tmp_path / "report.md").read_text()
    assert "Command: `CMD`" in md
    assert "**synthcrowd_val** (mean +- std over seeds, %; MR^-2: lower is better)" in md
    assert "| a | 3 | 62.00 +- 2.00 | 78.00 +- 2.00 | 90.00 +- 0.00 | 50.00 +- 0.00 |" in md
    assert "| b | 1 | 50.00 +- - |" in md  # one seed: no std
    assert "| a | 1 | 62.00 | 76.00 | 90.00 | 50.00 | 1.0 min | 0.5 min |" in md
    assert "Not finished (left out above): b seed 1, b seed 2" in md
    res = json.loads((tmp_path / "results.json").read_text())
    ap_band = [e for e in res["expected_results"]["a"] if e[2] == "AP"][0]
    assert ap_band == ["synthcrowd_val", "crowdhuman", "AP", 0.62, 0.06]  # mean, 3 x 0.02
    assert [e for e in res["expected_results"]["b"] if e[2] == "AP"][0][4] == 0.01  # floor
    # the MR-FPPI curve shown is the seed closest to the mean MR^-2 (0.78: seed 2)
    assert res["experiments"]["a"]["datasets"]["synthcrowd_val"]["curve"]["seed"] == 2
    assert "| a | 3 | 31.00 +- 1.00 | 62.00 +- 2.00 | 78.00 +- 2.00 |" in md  # COCO AP, AP50, oLRP
    # One CrowdHuman dataset: the plots keep their plain names, and only its figures are drawn.
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["ap_mr.png", "mr_fppi.png"]
    assert (tmp_path / "ap_mr.png").stat().st_size > 0
    assert (tmp_path / "mr_fppi.png").stat().st_size > 0


def test_split_half_estimate_recovers_the_seed_std_and_the_val_share():
    from crowdloss.tools.bench_report import seed_std_without_val

    # S models, each true value m_i; a half of the val set adds noise of variance 2 s^2, the
    # whole set s^2 (the 1 / size law): the estimate must find std(m) and s^2 / (var m + s^2).
    rng = np.random.default_rng(0)
    m = rng.normal(0.7, 0.01, 400)
    noise = rng.normal(0, 0.01 * math.sqrt(2), (400, 20, 2))
    halves = m[:, None, None] + noise
    whole = m + noise[:, 0, :].mean(axis=1)
    est = seed_std_without_val(whole, halves)
    assert est["std"] == pytest.approx(m.std(ddof=1), rel=0.1)
    assert est["val_share"] == pytest.approx(0.5, abs=0.08)
    # no val noise at all: the share is 0 and the std is the plain seed std
    est = seed_std_without_val(m[:5], np.repeat(m[:5, None, None], 2, axis=2))
    assert est == pytest.approx({"std": m[:5].std(ddof=1), "val_share": 0.0})
    assert seed_std_without_val([0.7], [[[0.7, 0.7]]]) is None  # one seed
    assert seed_std_without_val([0.7, 0.7], np.full((2, 3, 2), 0.7)) is None  # no spread


def test_report_says_how_much_of_the_seed_std_is_the_val_set(tmp_path):
    from crowdloss.tools.bench_report import write_report
    from crowdloss.tools.benchmark import Run

    records = []
    for seed, ap in enumerate((0.60, 0.62, 0.64)):
        rec = _record("a", seed, ap, 0.80)
        half = 0.62 + (ap - 0.62) * math.sqrt(1.5)  # var over seeds: 1.5 x the whole set's
        rec["results"]["synthcrowd_val"]["val_halves"] = {
            "images": 1000, "AP": [[half, half]] * 4, "mMR": [[0.8, 0.8]] * 4}
        records.append(rec)
    runs = [Run("a", "/x/a", s, str(tmp_path / "a" / f"seed{s}")) for s in (0, 1, 2)]
    write_report(records, runs, str(tmp_path), command="CMD")
    md = (tmp_path / "report.md").read_text()
    # var whole 4e-4, var half 6e-4: the seeds' own std sqrt(2e-4), the val set half of it;
    # MR^-2 has no spread: no estimate
    assert ("Seed std with the val set's share taken out (split-half estimate, %; in brackets "
            "that share of the seed variance): a: AP50 1.41 (50 %)\n") in md
    res = json.loads((tmp_path / "results.json").read_text())
    est = res["experiments"]["a"]["datasets"]["synthcrowd_val"]["seed_std_without_val"]
    assert set(est) == {"AP"} and est["AP"]["val_share"] == pytest.approx(0.5)


def test_report_says_which_seed_a_mean_leaves_out():
    from crowdloss.tools.bench_report import format_markdown, summarize

    # seed 1 collapsed: no detections, so its MR^-2 is undefined (NaN), its AP50 0
    records = [_record("a", 0, 0.60, 0.80), _record("a", 1, 0.0, float("nan")),
               _record("a", 2, 0.64, 0.78)]
    md = format_markdown(summarize(records, ["a"]), "CMD")
    assert "| a | 3 | 41.33 +- 35.85 | 79.00 +- 1.41 (2 of 3 seeds) | 90.00 +- 0.00 |" in md
    assert "| a | 1 | 0.00 | - | 90.00 |" in md
    assert "Not computable, so left out of the mean +- std above ('-'): a seed 1 MR^-2." in md
    # nor does the val-sampling std: seed 1's is undefined too, the others' mean is given
    records[1]["results"]["synthcrowd_val"]["val_bootstrap"]["std"]["mMR"] = float("nan")
    md = format_markdown(summarize(records, ["a"]), "CMD")
    assert "mean over seeds, %): a: AP50 0.50, MR^-2 1.00, Recall 0.40" in md


def test_results_are_read_where_pods_test_writes_them(tmp_path):
    # With TEST.EVAL_PERIOD -1 only pods_test scores a run: inference/<checkpoint>/<dataset>/.
    from crowdloss.tools.bench_report import collect_results
    from crowdloss.tools.benchmark import Run

    run = Run("a", "/x/a", 0, str(tmp_path))
    run.test_sets = [("synthcrowd_val", None, "crowdhuman", "fbox")]
    final = tmp_path / "model_final.pth"
    final.write_bytes(b"")
    assert collect_results(run, str(final)) is None  # not scored yet
    folder = tmp_path / "inference" / "model_final" / "synthcrowd_val"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"AP": 0.5, "mMR": 0.7, "name": "x"}))
    got = collect_results(run, str(final))
    assert got["synthcrowd_val"]["metrics"] == {"AP": 0.5, "mMR": 0.7}
    assert list(got) == ["synthcrowd_val"]  # no TEST.PER_CLASS_AP: no per-class table
    # TEST.PER_CLASS_AP: per_class_ap.json beside metrics.json, its own table and bands, under
    # the real dataset name and the task pods_test reports it as.
    (folder / "per_class_ap.json").write_text(json.dumps({"mAP": 0.4, "classes": {
        "person": {"ap": 0.6, "num_gt": 5}, "head": {"ap": 0.2, "num_gt": 3},
        "bag": {"ap": None, "num_gt": 0}}}))
    got = collect_results(run, str(final))
    extra = got["synthcrowd_val per-class AP"]
    assert extra == {"dataset": "synthcrowd_val", "task": "per_class_ap",
                     "metrics": {"mAP": 0.4, "AP-person": 0.6, "AP-head": 0.2}}
    from crowdloss.tools.bench_report import expected_results, format_markdown, summarize

    summary = summarize([{"label": "a", "seed": 0, "experiment": "/x/a", "overrides": [],
                          "results": got}], ["a"])
    bands = expected_results(summary)["a"]
    assert ["synthcrowd_val", "per_class_ap", "AP-head", 0.2, 0.01] in bands
    assert ["synthcrowd_val", "crowdhuman", "AP", 0.5, 0.01] in bands
    md = format_markdown(summary, "CMD")
    assert "**synthcrowd_val per-class AP** (mean +- std over seeds, %)\n" in md
    assert "| a | 1 | 20.00 +- - | 60.00 +- - | 40.00 +- - |" in md  # AP-head, AP-person, mAP
    # TEST.COCO_METRICS: coco_metrics.json beside it, COCO AP and oLRP as a table of their own
    # (task "bbox", the one pods_test reports; oLRP, like MR^-2, lower is better).
    coco = {"AP": 0.3, "AP50": 0.6, "AP75": 0.25, "APs": None, "AR100": 0.5, "moLRP": 0.7,
            "moLRP_loc": 0.2, "moLRP_FP": 0.3, "moLRP_FN": 0.4}
    (folder / "coco_metrics.json").write_text(json.dumps(coco))
    got = collect_results(run, str(final))
    assert got["synthcrowd_val COCO"]["task"] == "bbox"
    assert got["synthcrowd_val COCO"]["metrics"]["AP75"] == 0.25
    summary = summarize([{"label": "a", "seed": 0, "experiment": "/x/a", "overrides": [],
                          "results": got}], ["a"])
    md = format_markdown(summary, "CMD")
    assert ("**synthcrowd_val COCO** (mean +- std over seeds, %; oLRP: lower is better)\n\n"
            "| experiment | seeds | AP | AP50 | AP75 | oLRP | oLRP loc | oLRP FP | oLRP FN |") in md
    assert ["synthcrowd_val", "bbox", "moLRP", 0.7, 0.01] in expected_results(summary)["a"]
    os.utime(final)  # a checkpoint newer than its scores (training resumed): not scored
    os.utime(folder / "metrics.json", ns=(1, 1))
    assert collect_results(run, str(final)) is None


def test_fingerprint_ignores_output_dir_and_the_expected_band_only():
    from crowdloss.cli.common import load_experiment
    from crowdloss.tools.benchmark import config_fingerprint

    cfg = load_experiment(str(DEMO)).config
    base = config_fingerprint(cfg)
    cfg.OUTPUT_DIR = "/elsewhere"
    cfg.TEST.EXPECTED_RESULTS = [["synthcrowd_val", "crowdhuman", "AP", 0.6, 0.05]]
    assert config_fingerprint(cfg) == base
    cfg.SOLVER.OPTIMIZER.BASE_LR = 0.01
    assert config_fingerprint(cfg) != base


def test_runs_recorded_before_a_key_was_added_still_match():
    import copy

    from crowdloss.cli.common import load_experiment
    from crowdloss.config.tracking import ADDED_KEYS
    from crowdloss.tools.benchmark import Run, config_fingerprint, config_fingerprints

    cfg = load_experiment(str(DEMO)).config
    older = copy.deepcopy(cfg)  # the config as it was before the added keys existed
    for key in ADDED_KEYS:
        *parents, leaf = key.split(".")
        node = older
        for name in parents:
            node = node[name]
        del node[leaf]
    assert older.SOLVER.EMA == {}
    del older.SOLVER["EMA"]  # a section that came with its keys
    prints = config_fingerprints(cfg)
    assert prints[0] == config_fingerprint(cfg) and prints[-1] == config_fingerprint(older)
    assert len(prints) == len(ADDED_KEYS) + 1 and len(set(prints)) == len(prints)
    run = Run("lla", str(DEMO), 0, "/tmp/x")
    run.fingerprint, *run.earlier_fingerprints = prints
    assert run.made_by({"fingerprint": config_fingerprint(older)})
    assert not run.made_by({"fingerprint": "f" * 64})
    # A config that sets an added key otherwise is another config than the runs recorded
    # before that key existed (it still matches those recorded after it, before a newer key).
    cfg.MODEL.CHANNELS_LAST = True
    assert config_fingerprint(older) not in config_fingerprints(cfg)
    cfg.MODEL.CHANNELS_LAST, cfg.TEST.COCO_METRICS = False, True
    # matches runs recorded before DATALOADER.SEED, SOLVER.EMA's two keys, TEST.EMA_WEIGHTS,
    # MODEL.FCOS.BBOX_BIAS_INIT
    assert len(config_fingerprints(cfg)) == 6
    cfg.DATALOADER.SEED = 0
    assert len(config_fingerprints(cfg)) == 5
    cfg.SOLVER.EMA.DECAY = 0.999
    assert len(config_fingerprints(cfg)) == 3
    cfg.TEST.EMA_WEIGHTS = False
    assert len(config_fingerprints(cfg)) == 2
    cfg.MODEL.FCOS.BBOX_BIAS_INIT = 1.0  # the newest key, set: no earlier record is this config
    assert config_fingerprints(cfg) == [config_fingerprint(cfg)]


def test_test_time_keys_and_the_training_fingerprint():
    from crowdloss.cli.common import load_experiment
    from crowdloss.config.tracking import is_test_time_key
    from crowdloss.tools.benchmark import config_fingerprint, training_fingerprint

    for key in ("TEST.DETECTIONS_PER_IMAGE", "TEST.COCO_METRICS", "DATASETS.TEST",
                "INPUT.AUG.TEST_PIPELINES", "MODEL.FCOS.SCORE_THRESH_TEST",
                "MODEL.RPN.POST_NMS_TOPK_TEST", "MODEL.RETINANET.TEST_CLIP",
                "MODEL.WEIGHTS_MIN_COVERAGE.TEST"):
        assert is_test_time_key(key), key
    for key in ("TEST.EVAL_PERIOD", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "SOLVER.TEST_X",
                "DATASETS.TRAIN", "MODEL.WEIGHTS_MIN_COVERAGE.TRAIN", "MODEL.LLA.TOPK"):
        assert not is_test_time_key(key), key

    cfg = load_experiment(str(DEMO)).config
    base, full = training_fingerprint(cfg), config_fingerprint(cfg)
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    cfg.INPUT.AUG.TEST_PIPELINES = []
    cfg.OUTPUT_DIR = "/elsewhere"
    assert training_fingerprint(cfg) == base and config_fingerprint(cfg) != full
    cfg.MODEL.LLA.TOPK = 9
    assert training_fingerprint(cfg) != base
    cfg.MODEL.LLA.TOPK = 10
    # Evaluating during training draws from its random streams: every key counts then.
    cfg.TEST.EVAL_PERIOD = 100
    other = load_experiment(str(DEMO)).config
    other.TEST.EVAL_PERIOD = 100
    assert training_fingerprint(cfg) != training_fingerprint(other)


def test_link_trainings_in_the_plan_on_disk_and_never_over_a_trained_run(tmp_path):
    from crowdloss.tools.benchmark import RECORD, Run, link_trainings

    def run(label, seed, train_fp):
        r = Run(label, str(DEMO), seed, str(tmp_path / label / f"seed{seed}"))
        r.train_fingerprint = train_fp
        return r

    def finish(r, **record):
        os.makedirs(r.out, exist_ok=True)
        (Path(r.out) / "model_final.pth").write_bytes(b"x")
        (Path(r.out) / "last_checkpoint").write_text("model_final.pth")
        (Path(r.out) / RECORD).write_text(json.dumps(
            {"seed": r.seed, "train_fingerprint": r.train_fingerprint, **record}))

    runs = [run("a", 0, "T"), run("thr", 0, "T"), run("b", 0, "U"), run("a", 1, "T"),
            run("thr", 1, "T")]
    link_trainings(runs, str(tmp_path), RECORD)
    assert [r.trained_by for r in runs] == [None, runs[0].out, None, None, runs[3].out]

    # Only the variant asked for later: it scores the finished run on disk of its training.
    finish(runs[0])
    late = [run("thr", 0, "T"), run("c", 0, "V")]
    link_trainings(late, str(tmp_path), RECORD)
    assert [r.trained_by for r in late] == [runs[0].out, None]
    # A run dir holding its own final checkpoint keeps it; runs scoring others' models (their
    # records say trained_by) are not trainers.
    finish(late[0], trained_by=runs[0].out)
    os.remove(runs[0].out + "/" + RECORD)
    again = [run("thr", 0, "T"), run("d", 0, "T")]
    link_trainings(again, str(tmp_path), RECORD)
    assert [r.trained_by for r in again] == [None, again[0].out]


def test_plot_labels_stay_distinct():
    from crowdloss.tools.bench_plots import short_labels

    tail = ".res18.fpn.synthcrowd.256size.2600"
    # The shared dotted suffix goes; what tells the experiments apart stays.
    assert short_labels(["lla" + tail, "fcos" + tail, "atss" + tail]) == ["lla", "fcos", "atss"]
    assert short_labels(["faster_rcnn" + tail, "faster_rcnn.repgt_repbox" + tail]) == [
        "faster_rcnn", "faster_rcnn.repgt_repbox"]
    # Cutting to the first dotted part would merge these two: they are kept whole.
    two = ["faster_rcnn.res18.fpn.a", "faster_rcnn.repgt.res18.fpn.b"]
    assert short_labels(two) == two
    # Runner labels without dots, beside a long experiment name.
    assert short_labels(["lla" + tail, "lla_wu_bf16"]) == ["lla", "lla_wu_bf16"]
