"""Use helical without its side effects on the host process.

Importing helical sets the root logger to INFO with a handler of its own and routes warnings into logging;
its models add handlers through ``logging.basicConfig``; scGPT reseeds numpy and torch globally; and
``process_data`` writes into the AnnData it is given. ``isolated()`` restores the process state afterwards,
and callers hand helical a copy of their AnnData.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

HELICAL_LOG_LEVEL = logging.WARNING


@contextmanager
def isolated() -> Iterator[None]:
    """Run helical code, then put back the root logger, warnings capture and global random states."""
    import torch

    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    saved_capture = logging._warnings_showwarning is not None  # noqa: SLF001 - only public state
    saved_np = np.random.get_state()
    saved_torch = torch.random.get_rng_state()
    saved_filters = list(warnings.filters)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _quiet()
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
        for handler in saved_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved_level)
        logging.captureWarnings(saved_capture)
        warnings.filters[:] = saved_filters
        np.random.set_state(saved_np)
        torch.random.set_rng_state(saved_torch)
        _quiet()


def _quiet() -> None:
    for name in ("helical", "scGPT", "datasets", "transformers"):
        logging.getLogger(name).setLevel(HELICAL_LOG_LEVEL)


def import_helical() -> None:
    """Import helical's model packages once, without letting the import reconfigure logging."""
    with isolated():
        import helical.models.geneformer  # noqa: F401
        import helical.models.scgpt  # noqa: F401
