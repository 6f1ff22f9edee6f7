"""What a run leaves for people: TensorBoard events, compact COCO results with integer ids,
metrics printed once in percent, the training time without the evaluation, readable plots."""
import json
import logging
import re
import sys
import time

import numpy as np
import pytest

from crowdloss.engine import DefaultRunner
from crowdloss.engine.events import TensorboardWriter
from crowdloss.evaluation.crowdhuman import evaluate_crowdhuman
from crowdloss.evaluation.evaluator import CrowdHumanEvaluator
from crowdloss.evaluation.results_io import (crowdhuman_image_ids, load_gt, make_dt_record,
                                             odgt_to_coco_results)
from test_engine import CountingEvaluator, make_cfg, sample, train
from test_eval_evaluator import PRED, ToyModel, batch, register


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    @property
    def text(self):
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def engine_log():
    # Our own handler on the package loggers: setup_logger may have turned their propagation
    # off (so caplog's root handler misses them) or not (so it would see them twice).
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("crowdloss.engine", "crowdloss.evaluation")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    yield handler
    for lg, level in zip(loggers, old):
        lg.removeHandler(handler)
        lg.setLevel(level)


# ---------------------------------------------------------------------------- TensorBoard
def test_tensorboard_events_are_written_by_default(tmp_path):
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # pragma: no cover - a broken install, not a reason to pass
        pytest.fail("tensorboard is a requirement (requirements.txt): pip install tensorboard")
    train(make_cfg(tmp_path, max_iter=25, period=0))
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert {"total_loss", "lr", "loss_reg"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("total_loss")] == [19, 24]


def test_without_tensorboard_a_one_line_notice(tmp_path, monkeypatch, engine_log):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    writer = TensorboardWriter(str(tmp_path))
    assert not writer.enabled
    notices = [r.getMessage() for r in engine_log.records if "TensorBoard" in r.getMessage()]
    assert len(notices) == 1 and notices[0].startswith("TensorBoard events off: ")
    assert notices[0].endswith("(pip install tensorboard)")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- training time
class SlowEvaluator(CountingEvaluator):
    def evaluate(self):
        time.sleep(1.5)
        return super().evaluate()


def test_total_training_time_leaves_out_the_evaluation(tmp_path, engine_log):
    cfg = make_cfg(tmp_path, max_iter=4, period=0)
    cfg.DATASETS.TEST = ("toy_val",)
    cfg.TEST.EVAL_PERIOD = 2  # evaluates after iterations 2 and 4: 3 s of evaluation
    cfg.build_test_loader = lambda c, name: [[sample(10_000 + i)] for i in range(3)]
    cfg.build_evaluator = lambda c, name, out: SlowEvaluator()
    train(cfg)
    line = next(r.getMessage() for r in engine_log.records
                if r.getMessage().startswith("Total training time"))
    per_iter = float(re.search(r"\(([\d.]+) s / it over 4 iterations\)", line).group(1))
    assert per_iter < 0.5, line  # with the evaluation it would be >= 0.75
    assert re.search(r"; evaluation took 0:00:0[3-9] more$", line), line


# ---------------------------------------------------------------------------- result files
def test_crowdhuman_coco_results_are_compact_with_integer_ids(tmp_path):
    name, gt_file = register(tmp_path, "ch_compact_eval")
    out = tmp_path / "inference" / name
    ev = CrowdHumanEvaluator(name, output_dir=str(out), plot=False)
    for image_id in PRED:
        ev.process(*batch(image_id))
    ev.evaluate()
    text = (out / "coco_instances_results.json").read_text()
    assert text.count("\n") == 1 and ", " not in text and ": " not in text
    results = json.loads(text)
    ids = json.loads((out / "coco_image_ids.json").read_text())
    assert ids == {"i0": 1, "i1": 2, "i2": 3, "i3": 4}  # 1-based order of the GT odgt
    assert sorted({r["image_id"] for r in results}) == [1, 2, 3]  # i3 has no detection
    assert all(isinstance(r["image_id"], int) for r in results)

    # COCO tools take them as they are: a COCO GT numbered the same way loads them.
    import contextlib
    import io

    from pycocotools.coco import COCO

    gt = load_gt(gt_file)
    coco_gt = {"images": [{"id": ids[g.image_id], "file_name": f"{g.image_id}.jpg",
                           "height": 160, "width": 240} for g in gt],
               "annotations": [{"id": k, "image_id": ids[g.image_id], "category_id": 1,
                                "bbox": b.tolist(), "area": float(b[2] * b[3]), "iscrowd": 0}
                               for k, (g, b) in enumerate(((g, b) for g in gt for b in g.boxes),
                                                          1)],
               "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "gt_coco.json").write_text(json.dumps(coco_gt))
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = COCO(str(tmp_path / "gt_coco.json")).loadRes(str(out /
                                                                  "coco_instances_results.json"))
    assert len(loaded.getAnnIds()) == len(results)


def test_compact_results_size_for_60k_detections():
    rng = np.random.default_rng(0)
    records = []
    for i in range(200):  # 200 images x 300 detections, as a crowd detector writes them
        xy = rng.uniform(0, 800, (300, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 200, (300, 2))], axis=1)
        records.append(make_dt_record(f"img{i}", 900, 1200, boxes, rng.random(300)))
    ids = crowdhuman_image_ids(load_gt([{"ID": r["ID"], "gtboxes": []} for r in records]))
    results = odgt_to_coco_results(records, image_ids=ids)
    assert len(results) == 60_000
    pretty = len(json.dumps(results, indent=1))
    compact = len(json.dumps(results, separators=(",", ":")))
    print(f"60k detections: indent=1 {pretty / 1e6:.1f} MB, compact {compact / 1e6:.1f} MB")
    assert compact < 0.75 * pretty  # scores keep full precision: the ranking must not change


def test_coco_results_with_an_unknown_id_are_refused():
    with pytest.raises(KeyError, match="results ID 'zz' has no integer COCO image id"):
        odgt_to_coco_results([{"ID": "zz", "dtboxes": [{"box": [0, 0, 1, 1], "score": 1}]}],
                             image_ids={"a": 1})


# ---------------------------------------------------------------------------- printed once
def test_evaluation_printed_once_in_percent_with_titled_plots(tmp_path, engine_log, monkeypatch):
    from crowdloss.evaluation import plots

    titles = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, plt, path: (
        titles.append(fig.axes[0].get_title()), real_save(fig, plt, path))[1])
    name, _ = register(tmp_path, "ch_print_eval")
    cfg = make_cfg(tmp_path)
    cfg.DATASETS.TEST = (name,)
    cfg.TEST.update(PLOT=True, JI_MATCHING="weight", PER_CLASS_AP="", COCO_METRICS=False)
    cfg.DATASETS.update(BOX_TYPE="fbox", TAG_MAP={})
    cfg.build_test_loader = lambda c, n: [batch(i)[0] for i in PRED]
    results = DefaultRunner.test(cfg, ToyModel(), source="model_final.pth, iteration 4")
    metrics = results[name]["crowdhuman"]
    text = engine_log.text
    assert text.count("copypaste: AP,mMR,Recall,JI") == 1
    assert text.count("Recall") == 1  # no second table of the same numbers
    assert "copypaste: Task: crowdhuman (percent)" in text
    values = ",".join("nan" if np.isnan(v) else f"{100 * v:.2f}" for v in metrics.values())
    assert f"copypaste: {values}" in text and "75.00" in values  # Recall 0.75 -> 75.00
    assert "Evaluation results for ch_print_eval (model_final.pth, iteration 4):" in text
    assert titles == ["ch_print_eval: model_final.pth, iteration 4"] * 2


# ---------------------------------------------------------------------------- plots
def _weak_result():
    """10 images of 10 people; the detector finds one person per image among 30 false boxes."""
    rng = np.random.default_rng(1)
    gt, dt = [], []
    for i in range(10):
        people = [[20 + 60 * k, 100, 40, 120] for k in range(10)]
        gt.append({"ID": f"w{i}", "height": 400, "width": 700,
                   "gtboxes": [{"tag": "person", "fbox": b} for b in people]})
        boxes = [[p[0], p[1], p[0] + p[2], p[1] + p[3]] for p in people[:1]]
        xy = rng.uniform(0, 600, (30, 2))
        boxes += np.concatenate([xy, xy + 15], axis=1).tolist()  # off-person clutter
        dt.append(make_dt_record(f"w{i}", 400, 700, np.array(boxes), rng.random(31)))
    return evaluate_crowdhuman(gt, dt)


def test_plots_show_a_weak_model_and_keep_the_legend_off_the_curves(tmp_path, monkeypatch):
    from crowdloss.evaluation import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, plt, path: figures.append(fig) or path)
    result = _weak_result()
    assert result.metrics["Recall"] == pytest.approx(0.1)
    plots.plot_crowdhuman(result, str(tmp_path), label="synthcrowd_val",
                          title="synthcrowd_val: model_iter_0000499.pth, iteration 499")
    mr_fig, pr_fig = figures
    for fig in figures:
        ax = fig.axes[0]
        assert ax.get_title() == "synthcrowd_val: model_iter_0000499.pth, iteration 499"
        fig.canvas.draw()
        legend = ax.get_legend().get_window_extent()
        assert legend.y1 <= ax.get_window_extent().y0  # below the axes, over no curve
    low, high = mr_fig.axes[0].get_ylim()
    assert 1.0 <= high < 1.1 and 0.5 < low < 0.9  # miss rate 0.9..1 fills the plot, not 1e-3..1
    top = pr_fig.axes[0].get_ylim()[1]
    precision = result.curves["precision"]
    assert precision.max() < top < 0.5  # precision under 0.4: zoomed in, not squeezed
    import matplotlib.pyplot as plt

    for fig in figures:
        plt.close(fig)
