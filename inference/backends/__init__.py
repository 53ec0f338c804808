"""Backends: Geneformer and scGPT through helical, and the baseline."""

from __future__ import annotations

from inference.backends.base import Backend, Cancelled, Embedding
from inference.weights import DEFAULT_GENEFORMER, SCGPT_VARIANT, WeightsLocations


def create_backend(backend: str, variant: str | None, locations: WeightsLocations | None,
                   device: str | None = None, **options: object) -> Backend:
    """A backend for ``backend``/``variant``, its weights resolved (and verified) but not yet loaded."""
    if backend == "baseline":
        from inference.backends.baseline import BaselineBackend

        return BaselineBackend(**options)
    if locations is None:
        raise ValueError(f"{backend} needs a weights location.")
    if backend == "geneformer":
        from inference.backends.geneformer import GeneformerBackend

        return GeneformerBackend(locations.resolve("geneformer", variant or DEFAULT_GENEFORMER), device, **options)
    if backend == "scgpt":
        from inference.backends.scgpt import ScGPTBackend

        return ScGPTBackend(locations.resolve("scgpt", SCGPT_VARIANT), device, **options)
    raise ValueError(f"Unknown backend {backend!r}: choose geneformer, scgpt or baseline.")


__all__ = ["Backend", "Cancelled", "Embedding", "create_backend"]
