"""The app's side of model weights: where they are looked for, and what the catalog says about them."""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine
from sqlmodel import select

from app.settings import Settings
from inference.backends import needs_weights
from inference.weights import WeightsError, WeightsLocations
from store.engine import write_session
from store.tables import ModelEntry

log = logging.getLogger(__name__)


def weights_locations(settings: Settings) -> WeightsLocations:
    return WeightsLocations(staged=settings.weights_dir, generated=settings.generated_weights_dir,
                            allow_download=settings.allow_download)


def refresh_weights_status(engine: Engine, locations: WeightsLocations) -> None:
    """Write each model's weights status (installed / generated / missing) and how to fix it into the catalog."""
    with write_session(engine) as s:
        for model in s.exec(select(ModelEntry)).all():
            if not needs_weights(model.backend):
                continue
            status, detail = locations.status(model.backend, model.variant)
            model.weights_status, model.weights_detail = status, detail
            s.add(model)


def ensure_generated_weights(settings: Settings, engine: Engine) -> list[str]:
    """When a model has no real weights, write untrained ones (labelled so) so the product runs offline.

    The caller refreshes the catalog's weights status afterwards (the Platform does, once, at start). GPU-only
    models (TranscriptFormer) are not generated here: untrained files help no one on a CPU cluster, and a GPU
    cluster is given them with ``weights generate --transcriptformer`` or, better, the release staged."""
    if settings.generate_weights == "none":
        return []
    locations = weights_locations(settings)
    written: list[str] = []
    with write_session(engine) as s:
        models = [(m.backend, m.variant) for m in s.exec(select(ModelEntry)).all() if needs_weights(m.backend)]
    missing_gf = [v for b, v in models if b == "geneformer" and locations.status(b, v)[0] == "missing"]
    missing_scgpt = any(b == "scgpt" and locations.status(b, v)[0] == "missing" for b, v in models)
    missing_uce = any(b == "uce" and locations.status(b, v)[0] == "missing" for b, v in models)
    missing_nf = any(b == "nicheformer" and locations.status(b, v)[0] == "missing" for b, v in models)
    if missing_gf or missing_scgpt or missing_uce or missing_nf:
        from inference.checkpoints import generate

        try:
            written = generate(settings.generated_weights_dir, settings.generate_weights, missing_gf,
                               scgpt=missing_scgpt, uce=missing_uce, nicheformer=missing_nf)
            log.warning("no real weights for %s: generated untrained %s checkpoints in %s", ", ".join(written),
                        settings.generate_weights, settings.generated_weights_dir)
        except WeightsError:
            log.exception("could not generate weights")
    return written


def model_variants(backend: str) -> list[str]:
    """Every published variant of a model (what ``weights list`` shows and the run form offers)."""
    from inference.weights import weights_variants

    return weights_variants().get(backend, [])
