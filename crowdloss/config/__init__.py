"""crowdloss configs: cvpods-style config classes, overrides, rescaling and output helpers.

A playground ``config.py`` subclasses one of these classes,
registers its nested dict, and exports ``config``; the CLI applies ``KEY VALUE`` overrides with
``merge_from_list``, rescales with ``rescale_for_world_size`` and records the result with
``dump_config``. ``validate_config`` checks the numbers before anything is built;
``ReadTracker`` / ``UnreadKeyReport`` find keys an experiment set that nothing reads.
See docs/config.md.
"""
from .access import cfg_get
from .base_config import BaseConfig, config_diff
from .base_detection_config import BaseDetectionConfig
from .config_dict import ConfigDict, ConfigKeyError
from .fcos_config import FCOSConfig
from .output import default_output_dir, dump_config, link_log
from .rcnn_fpn_config import RCNNFPNConfig
from .rescale import rescale_for_world_size
from .coco_ranking import COCO_TRAIN_IMAGES, coco_ranking_config
from .synthcrowd import (SYNTHCROWD_LENGTHS, synthcrowd_input, synthcrowd_reference_config,
                         synthcrowd_solver)
from .pytorch_retinanet_config import PyTorchRetinaNetConfig, PyTorchRetinaNetCrowdHumanConfig
from .retinanet_config import RetinaNetConfig
from .ssd_config import SSDConfig, ssd_train_pipeline
from .tracking import ReadTracker, UnreadKeyReport, UnreadKeysError, untracked
from .validate import ConfigValueError, validate_config

__all__ = [
    "cfg_get",
    "ConfigDict",
    "ConfigKeyError",
    "BaseConfig",
    "BaseDetectionConfig",
    "FCOSConfig",
    "RetinaNetConfig",
    "SSDConfig",
    "ssd_train_pipeline",
    "RCNNFPNConfig",
    "PyTorchRetinaNetConfig",
    "PyTorchRetinaNetCrowdHumanConfig",
    "coco_ranking_config",
    "COCO_TRAIN_IMAGES",
    "synthcrowd_solver",
    "synthcrowd_input",
    "synthcrowd_reference_config",
    "SYNTHCROWD_LENGTHS",
    "rescale_for_world_size",
    "default_output_dir",
    "dump_config",
    "link_log",
    "config_diff",
    "validate_config",
    "ConfigValueError",
    "ReadTracker",
    "UnreadKeyReport",
    "UnreadKeysError",
    "untracked",
]
