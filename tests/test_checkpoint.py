"""Atomic checkpoint writes, finding / loading checkpoints, and pretrained-weight loading."""
import io
import logging
import os
import pickle
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

import crowdloss.engine.weight_files as files_mod
from crowdloss.engine.checkpoint import Checkpointer, DetectionCheckpointer


class Net(nn.Module):
    def __init__(self, out=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4, out)


@contextmanager
def engine_log():
    """Collect crowdloss.engine records (the package logger may not propagate to caplog)."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    log = logging.getLogger("crowdloss.engine")
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old)


def messages(records, level=logging.DEBUG):
    return "\n".join(r.getMessage() for r in records if r.levelno >= level)


def make(tmp_path):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt, Checkpointer(model, str(tmp_path), optimizer=opt)


def test_save_writes_every_key_and_last_checkpoint(tmp_path):
    model, opt, ck = make(tmp_path)
    path = ck.save("model_iter_0000003", iteration=3)
    data = torch.load(path, weights_only=True)
    assert sorted(data) == ["iteration", "model", "optimizer", "rng", "scaler"]
    assert data["iteration"] == 3 and data["scaler"] is None
    assert (tmp_path / "last_checkpoint").read_text() == "model_iter_0000003.pth"
    assert ck.has_checkpoint() and ck.get_checkpoint_file() == path

    other_model, other_opt, other = make(tmp_path)
    extra = other.load(path)
    assert extra["iteration"] == 3 and "rng" in extra
    assert torch.equal(other_model.head.weight, model.head.weight)


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, ck = make(tmp_path)
    good = ck.save("model_iter_0000003", iteration=3)
    real_save = torch.save

    def save_half_then_die(obj, f, *a, **k):
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    with pytest.raises(OSError, match="simulated"):
        ck.save("model_iter_0000007", iteration=7)
    monkeypatch.setattr(torch, "save", real_save)

    def replace_dies(src, dst):
        raise OSError("killed during rename (simulated)")

    monkeypatch.setattr(os, "replace", replace_dies)
    with pytest.raises(OSError, match="rename"):
        ck.save("model_iter_0000011", iteration=11)
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_iter_0000003.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_iter_0000003.pth"
    assert ck.get_checkpoint_file() == good
    assert ck.load(good)["iteration"] == 3
    # A hard kill leaves its temp file behind; it must never be taken for a checkpoint.
    (tmp_path / ".model_iter_0000015.pth.tmp.4242").write_bytes(b"partial")
    assert ck.get_all_checkpoint_files() == [good]


def test_missing_pointer_target_falls_back_to_listing(tmp_path):
    _, _, ck = make(tmp_path)
    assert not ck.has_checkpoint() and ck.get_all_checkpoint_files() == []
    path = ck.save("model_iter_0000001", iteration=1)
    (tmp_path / "last_checkpoint").write_text("model_iter_0009999.pth")
    with engine_log() as records:
        assert ck.get_checkpoint_file() == path
    assert "does not exist" in messages(records, logging.WARNING)


def test_only_rank0_writes(tmp_path):
    ck = Checkpointer(Net(), str(tmp_path), save_to_disk=False)
    assert ck.save("model_final") is None and os.listdir(tmp_path) == []


def test_load_model_weights_prefixes_wrappers_and_mismatches(tmp_path):
    src = Net(out=5)
    bare = {"module." + k: v for k, v in src.state_dict().items()}
    torch.save(bare, tmp_path / "bare.pth")
    torch.save({"model": src.state_dict(), "iteration": 9}, tmp_path / "wrapped.pth")
    for name in ("bare.pth", "wrapped.pth"):
        model = Net(out=3)
        fresh_head = model.head.weight.detach().clone()
        with engine_log() as records:
            DetectionCheckpointer(model, "").load_model_weights(str(tmp_path / name))
        assert torch.equal(model.conv.weight, src.conv.weight), name
        assert torch.equal(model.head.weight, fresh_head), name  # (3, 4) vs (5, 4): skipped
        warnings = messages(records, logging.WARNING)
        assert "head.weight" in warnings and "(5, 4)" in warnings and "(3, 4)" in warnings
        assert "head.bias" in messages(records)  # reported as missing (left as initialised)


def test_missing_and_unexpected_keys_logged(tmp_path):
    state = Net().state_dict()
    state.pop("conv.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pth")
    with engine_log() as records:
        DetectionCheckpointer(Net(), "").load_model_weights(str(tmp_path / "w.pth"))
    text = messages(records)
    assert "conv.bias" in text and "extra.weight" in text


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_pkl_is_read_with_a_restricted_unpickler(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"blobs": {"conv1_w": Evil()}}, f)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        DetectionCheckpointer(Net(), "").load_model_weights(str(tmp_path / "evil.pkl"))
    assert not (tmp_path / "pwned_marker").exists()


def test_url_download_into_cache_file_scheme(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CROWDLOSS_CACHE", str(cache))
    src = Net()
    torch.save({"model": src.state_dict()}, tmp_path / "remote.pth")
    url = (tmp_path / "remote.pth").as_uri()
    model = Net()
    DetectionCheckpointer(model, "").load_model_weights(url)
    assert torch.equal(model.head.weight, src.head.weight)
    cached = files_mod.resolve_weights_path(url)
    assert cached.startswith(str(cache)) and os.path.isfile(cached)
    os.remove(tmp_path / "remote.pth")  # served from the cache from now on
    DetectionCheckpointer(Net(), "").load_model_weights(url)
    assert [f for f in os.listdir(os.path.dirname(cached)) if ".tmp." in f] == []


def test_detectron2_url_and_clear_error_without_network(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    monkeypatch.setenv("CROWDLOSS_CACHE", str(tmp_path / "cache"))
    requested = []
    payload = io.BytesIO()
    torch.save(Net().state_dict(), payload)

    def fake_urlopen(url, timeout=None):
        requested.append(url)
        return io.BytesIO(payload.getvalue())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    path = files_mod.resolve_weights_path("detectron2://ImageNetPretrained/X/model.pth")
    assert requested == ["https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/X/model.pth"]
    assert path == str(tmp_path / "cache" / "dl.fbaipublicfiles.com" / "detectron2"
                       / "ImageNetPretrained" / "X" / "model.pth")
    assert files_mod.resolve_weights_path("detectron2://ImageNetPretrained/X/model.pth") == path
    assert len(requested) == 1  # cached: downloaded once

    def refuse(url, timeout=None):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(RuntimeError) as err:
        files_mod.resolve_weights_path("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    msg = str(err.value)
    assert "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl" in msg
    assert str(tmp_path / "cache" / "dl.fbaipublicfiles.com" / "detectron2" / "ImageNetPretrained"
               / "MSRA" / "R-50.pkl") in msg
    assert not (tmp_path / "cache" / "dl.fbaipublicfiles.com" / "detectron2"
                / "ImageNetPretrained" / "MSRA" / "R-50.pkl").exists()


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS.*nope.pth"):
        DetectionCheckpointer(Net(), "").load_model_weights(str(tmp_path / "nope.pth"))


def test_msra_pkl_end_to_end_into_a_prefixed_detector(tmp_path):
    """A Caffe2-named .pkl (narrow R-50, same names as MSRA's) lands in backbone.bottom_up.*."""
    from crowdloss.modeling.backbone import ResNet

    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.bottom_up = ResNet(depth=50, width_per_group=2, stem_out_channels=4,
                                      res2_out_channels=8, norm="FrozenBN")
    model.head = nn.Conv2d(4, 2, 1)
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}
    suffix = {"weight": "w", "norm.weight": "bn_s", "norm.bias": "bn_b"}
    rng = np.random.default_rng(0)
    blobs, where = {}, {}
    for key, value in model.backbone.bottom_up.state_dict().items():
        if "running" in key:
            continue
        if key.startswith("stem.conv1."):
            rest = key[len("stem.conv1."):]
            name = "conv1_w" if rest == "weight" else f"res_conv1_{suffix[rest]}"
        else:
            stage, block, conv, attr = key.split(".", 3)
            name = f"{stage}_{block}_{branch[conv]}_{suffix[attr]}"
        blobs[name] = rng.random(tuple(value.shape), dtype=np.float32)
        where[name] = "backbone.bottom_up." + key
    blobs["fc1000_w"] = np.zeros((10, 4 * 8 * 8), np.float32)
    with open(tmp_path / "R-50-narrow.pkl", "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)

    head_before = model.head.weight.detach().clone()
    DetectionCheckpointer(model, "").load_model_weights(str(tmp_path / "R-50-narrow.pkl"))
    state = model.state_dict()
    assert len(where) > 50
    for name, key in where.items():
        assert torch.equal(state[key], torch.from_numpy(blobs[name])), (name, key)
    # Caffe2 folded BN statistics into scale/shift: FrozenBN gets mean 0 / var 1.
    assert torch.all(state["backbone.bottom_up.res4.2.conv3.norm.running_var"] == 1)
    assert torch.equal(model.head.weight, head_before)


def test_unreadable_checkpoint_names_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model_iter_0000001.pth").write_bytes(b"PK\x03\x04 truncated")
    _, _, ck = make(tmp_path)
    with pytest.raises(RuntimeError, match="model_iter_0000001.pth.*truncated"):
        ck.load(str(tmp_path / "model_iter_0000001.pth"))
    torch.save({"model": {"w": torch.zeros(1)}, "meta": Evil()}, tmp_path / "unsafe.pth")
    with pytest.raises(RuntimeError, match="(?s)unsafe.pth.*system.*refused"):
        DetectionCheckpointer(Net(), "").load_model_weights(str(tmp_path / "unsafe.pth"))
    assert not (tmp_path / "pwned_marker").exists()
