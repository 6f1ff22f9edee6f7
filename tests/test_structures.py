import pytest
import torch

from crowdloss.data.catalog import DatasetCatalog, MetadataCatalog
from crowdloss.structures import Instances
from crowdloss.utils import comm


def _inst(n=3):
    return Instances((10, 20), gt_boxes=torch.arange(4 * n, dtype=torch.float32).view(n, 4),
                     gt_classes=torch.arange(n), names=[f"p{i}" for i in range(n)])


def test_instances_fields_and_indexing():
    inst = _inst()
    assert len(inst) == 3 and inst.image_size == (10, 20)
    sub = inst[torch.tensor([True, False, True])]
    assert sub.gt_classes.tolist() == [0, 2] and sub.names == ["p0", "p2"]
    assert inst[1].gt_classes.tolist() == [1]
    assert len(inst[torch.zeros(3, dtype=torch.bool)]) == 0
    with pytest.raises(ValueError, match="length"):
        inst.scores = torch.ones(2)
    with pytest.raises(AttributeError, match="no field 'scores'"):
        _ = inst.scores


def test_instances_cat_and_to():
    both = Instances.cat([_inst(2), _inst(3)])
    assert len(both) == 5 and both.names[2] == "p0"
    moved = both.to(torch.float64)
    assert moved.gt_boxes.dtype == torch.float64 and moved.image_size == (10, 20)


def test_comm_without_process_group():
    t = torch.tensor([3.0])
    assert comm.get_world_size() == 1 and comm.get_rank() == 0 and comm.is_main_process()
    assert comm.all_reduce_mean(t) is t and comm.all_gather({"a": 1}) == [{"a": 1}]
    assert comm.gather(5) == [5]
    comm.synchronize()  # no-op, must not raise
    assert comm.reduce_dict({"x": t}) == {"x": t}


def test_catalog_errors_name_close_matches():
    DatasetCatalog.register("_test_toy_set", lambda: [{"file_name": "a"}])
    try:
        assert DatasetCatalog.get("_test_toy_set") == [{"file_name": "a"}]
        with pytest.raises(KeyError, match="_test_toy_set"):
            DatasetCatalog.get("_test_toy_sett")
        with pytest.raises(KeyError, match="already registered"):
            DatasetCatalog.register("_test_toy_set", list)
    finally:
        DatasetCatalog.remove("_test_toy_set")
    assert MetadataCatalog.set("_test_meta", evaluator_type="coco")["evaluator_type"] == "coco"
