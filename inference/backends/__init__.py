"""Backends: Geneformer, scGPT, UCE, Nicheformer and TranscriptFormer through helical, the baseline, Harmony.
One line each in ``BACKENDS``."""

from __future__ import annotations

import importlib

from inference.backends.base import Backend, Cancelled, Embedding
from inference.weights import (
    DEFAULT_GENEFORMER,
    DEFAULT_TRANSCRIPTFORMER,
    DEFAULT_UCE,
    NICHEFORMER_VARIANT,
    SCGPT_VARIANT,
    WeightsLocations,
)

# name -> (module, class, the weights variant it loads when none is asked for (None: it needs no weights),
#          whether a run may ask for another variant)
BACKENDS: dict[str, tuple[str, str, str | None, bool]] = {
    "geneformer": ("inference.backends.geneformer", "GeneformerBackend", DEFAULT_GENEFORMER, True),
    "scgpt": ("inference.backends.scgpt", "ScGPTBackend", SCGPT_VARIANT, False),
    "uce": ("inference.backends.uce", "UCEBackend", DEFAULT_UCE, True),
    "nicheformer": ("inference.backends.nicheformer", "NicheformerBackend", NICHEFORMER_VARIANT, False),
    "transcriptformer": ("inference.backends.transcriptformer", "TranscriptFormerBackend", DEFAULT_TRANSCRIPTFORMER,
                         True),
    "baseline": ("inference.backends.baseline", "BaselineBackend", None, False),
    "harmony": ("inference.backends.harmony", "HarmonyBackend", None, False),
}


def backend_class(backend: str) -> type[Backend]:
    """The class of a backend by name (imported only when asked: helical is slow to import)."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}: choose {', '.join(BACKENDS)}.")
    module, name, _, _ = BACKENDS[backend]
    return getattr(importlib.import_module(module), name)


def needs_weights(backend: str) -> bool:
    """Whether the catalog tracks (and generates) weights for this backend, without importing it."""
    return BACKENDS[backend][2] is not None


def requires_gpu(backend: str) -> bool:
    """Whether helical runs this backend on CUDA only (its ``requires_gpu``); an unknown backend does not."""
    return backend in BACKENDS and backend_class(backend).requires_gpu


def create_backend(backend: str, variant: str | None, locations: WeightsLocations | None,
                   device: str | None = None, **options: object) -> Backend:
    """A backend for ``backend``/``variant``, its weights resolved (and verified) but not yet loaded."""
    cls = backend_class(backend)
    _, _, default_variant, selectable = BACKENDS[backend]
    if default_variant is None:
        return cls(**options)
    if locations is None:
        raise ValueError(f"{backend} needs a weights location.")
    return cls(locations.resolve(backend, (variant if selectable else None) or default_variant), device, **options)


__all__ = ["BACKENDS", "Backend", "Cancelled", "Embedding", "backend_class", "create_backend", "needs_weights",
           "requires_gpu"]
