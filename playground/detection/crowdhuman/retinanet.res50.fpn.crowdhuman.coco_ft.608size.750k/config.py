"""pytorch-retinanet's RetinaNet R-50-FPN fine-tuned on CrowdHuman from a COCO model: the
CrowdHuman seed's recipe (qbxlvnf11/retinanet, built on yhenon/pytorch-retinanet).

- network, input (608 / 1024, RGB, ImageNet mean / std) and test post-processing:
  ``PyTorchRetinaNetConfig``, so a pytorch-retinanet checkpoint runs as in its own code;
- classes: the seed's class map, COCO's 80 (darknet spellings) + ``head`` (81). The COCO model's
  80 classes keep their classifier channels (``MODEL.WEIGHTS_CLASSES`` "coco"), ``head`` starts
  from the prior init. The seed itself loads the COCO state dict with ``load_state_dict``,
  which fails on the 720 vs 729 class channels;
- data: CSV files built from CrowdHuman's odgt by ``python -m crowdloss.tools.build_csv``
  (README.md): full-body ``person``, ``head``, ignore regions as class ``ignore`` read as
  ignore regions. The seed wrote the visible box as ``person`` and no ignore regions
  (``--person-box vbox --ignore seed``);
- optimisation: the seed's (pytorch-retinanet's train.py): Adam, lr 1e-5, no weight decay,
  gradient norm clipped at 0.1, batch 2, 100 epochs of CrowdHuman train's 15000 images
  (750k iterations) at a constant lr (its ReduceLROnPlateau, which divides the lr by 10 after
  four epochs without a lower mean loss, is not reproduced: the lr stays 1e-5);
- evaluation: CrowdHuman metrics of the ``person`` class against the val odgt, and per-class
  AP as pytorch-retinanet's csv_eval computes it (``TEST.PER_CLASS_AP`` "retinanet_csv").
"""
import os

from crowdloss.config import PyTorchRetinaNetConfig
from crowdloss.engine.weight_files import cache_dir

_config_dict = dict(
    MODEL=dict(
        # pytorch-retinanet's COCO model (33.5 COCO AP; the "Pre-trained model" link of
        # github.com/yhenon/pytorch-retinanet), put here by hand: it has no stable URL.
        WEIGHTS=os.path.join(cache_dir(), "pytorch-retinanet",
                             "coco_resnet_50_map_0_335_state_dict.pt"),
        # The checkpoint's classes, in its channel order.
        WEIGHTS_CLASSES=("coco",),
        RESNETS=dict(DEPTH=50),
        RETINANET=dict(NUM_CLASSES=81),
    ),
    DATASETS=dict(
        # pytorch-retinanet's --csv_train / --csv_val / --csv_classes, relative to the
        # datasets root (override with absolute paths, e.g. the seed's own files).
        CSV=dict(
            TRAIN="crowdhuman/csv/train.csv",
            VAL="crowdhuman/csv/val.csv",
            CLASSES="crowdhuman/csv/classes.csv",
            IGNORE_CLASS="ignore",
            VAL_ODGT="crowdhuman/annotations/annotation_val.odgt",
        ),
        TRAIN=("csv_train",),
        TEST=("csv_val",),
    ),
    SOLVER=dict(
        LR_SCHEDULER=dict(MAX_ITER=750000),
        CHECKPOINT_PERIOD=7500,  # once per epoch, as the seed saves
    ),
    TEST=dict(
        EVAL_PERIOD=0,  # evaluate once, after training (the seed evaluates every epoch)
        DETECTIONS_PER_IMAGE=300,
        PER_CLASS_AP="retinanet_csv",
    ),
)


class CustomRetinaNetConfig(PyTorchRetinaNetConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomRetinaNetConfig()
