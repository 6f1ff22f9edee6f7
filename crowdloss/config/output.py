"""Where an experiment writes, what it records of its config, and the ``log`` link.

- ``default_output_dir``: ``$CROWDLOSS_OUTPUT`` (else ``<repo>/output``) joined with the
  experiment's path after its last ``playground/`` component, so
  ``playground/detection/crowdhuman/lla.res50...`` writes to
  ``output/detection/crowdhuman/lla.res50...``; outside a playground, the dir's basename.
- ``dump_config``: ``config.yaml`` (the resolved config) and ``config_diff.yaml`` (the diff
  against the parent config class), each written atomically. Call it on the main process only.
- ``link_log``: the ``log`` symlink in the experiment dir, as cvpods; a filesystem that refuses
  links (read-only checkout, Windows without privileges) only gets a warning.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

from .base_config import config_diff
from .config_dict import dump_yaml

__all__ = ["default_output_dir", "dump_config", "link_log"]

logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_output_dir(experiment_dir: str) -> str:
    """The default ``OUTPUT_DIR`` of an experiment dir (see the module docstring)."""
    root = os.environ.get("CROWDLOSS_OUTPUT") or str(_REPO_ROOT / "output")
    parts = Path(os.path.abspath(os.path.expanduser(str(experiment_dir)))).parts
    after = []
    if "playground" in parts:
        last = len(parts) - 1 - parts[::-1].index("playground")
        after = list(parts[last + 1:])
    if not after:
        after = [parts[-1]] if len(parts) > 1 else ["experiment"]
    return os.path.join(os.path.expanduser(root), *after)


def dump_config(cfg, output_dir: str) -> Dict[str, Any]:
    """Write ``config.yaml`` and ``config_diff.yaml`` into ``output_dir``; return the diff."""
    os.makedirs(output_dir, exist_ok=True)
    diff = config_diff(cfg)
    cfg.dump(os.path.join(output_dir, "config.yaml"))
    dump_yaml(diff, os.path.join(output_dir, "config_diff.yaml"))
    return diff


def link_log(experiment_dir: str, output_dir: str, *, link_name: str = "log") -> Optional[str]:
    """(Re)create ``experiment_dir/log`` -> ``output_dir``; never fails the run.

    Returns:
        the link path, or None when it could not be made (a warning says why).
    """
    link = os.path.join(str(experiment_dir), link_name)
    target = os.path.abspath(str(output_dir))
    try:
        if os.path.islink(link):
            if os.readlink(link) == target:
                return link
            os.unlink(link)  # points at an older OUTPUT_DIR
        elif os.path.exists(link):
            logger.warning("not linking %s -> %s: %s exists and is not a symlink",
                           link, target, link)
            return None
        os.symlink(target, link, target_is_directory=True)
        return link
    except OSError as e:
        # Another rank or run may have made the same link between our check and symlink().
        if os.path.islink(link) and os.readlink(link) == target:
            return link
        logger.warning("could not link %s -> %s (%s); outputs are in %s", link, target, e, target)
        return None
