"""The catalog: applications and the models that serve them, seeded idempotently at every start."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import select

from inference.applications import REGISTRY
from inference.backends import requires_gpu
from inference.devices import NEEDS_GPU as NEEDS_GPU  # the dashboards' word for it (they import app only)
from inference.reference import MAX_REFERENCE_CELLS as MAX_REFERENCE_CELLS  # the run form's default
from store.engine import read_session, write_session
from store.tables import Application, ModelEntry

CELL_TYPE_ANNOTATION = "cell-type-annotation"
EMBEDDING_INTEGRATION = "embedding-integration"

SEED_SOURCE = (
    "Figure from the product's seed catalog (the design card's model table). It is not a published "
    "benchmark and this platform has not measured it; see docs/BENCHMARKS.md for figures measured here."
)

# the applications come from their registry (inference/applications): one line there adds one here
SEED_APPLICATIONS = [Application(id=a.id, name=a.name, description=a.description) for a in REGISTRY.values()]

# Attributes a user sees; weights status is the platform's own finding and is kept across re-seeding.
SEED_MODELS = [
    dict(
        id="geneformer",
        name="Geneformer",
        speed="fast",
        accuracy=0.92,
        accuracy_source=SEED_SOURCE,
        description="Transformer model for scRNA-seq",
        applications=[CELL_TYPE_ANNOTATION, EMBEDDING_INTEGRATION],
        backend="geneformer",
        variant="gf-6L-10M-i2048",
    ),
    dict(
        id="scgpt",
        name="scGPT",
        speed="slow",
        accuracy=0.95,
        accuracy_source=SEED_SOURCE,
        description="GPT-style model for single-cell",
        applications=[CELL_TYPE_ANNOTATION, EMBEDDING_INTEGRATION],
        backend="scgpt",
        variant="whole-human",
    ),
    dict(
        id="uce",
        name="UCE (Universal Cell Embeddings, 4 layers)",
        speed="slow",
        accuracy=None,
        accuracy_source=("Not measured by this platform yet. Speed measured here: 0.54 cells/s on 2 CPU cores "
                         "(docs/BENCHMARKS.md)."),
        description=(
            "Cells as sentences of expressed genes, each gene a protein-language-model (ESM2) token, ordered by "
            "chromosome; a 1,280-d cell embedding. Human gene symbols, raw counts."
        ),
        applications=[CELL_TYPE_ANNOTATION, EMBEDDING_INTEGRATION],
        backend="uce",
        variant="4layer_model",
    ),
    dict(
        id="nicheformer",
        name="Nicheformer (12 layers)",
        speed="slow",
        accuracy=None,
        accuracy_source=("Not measured by this platform yet. Speed measured here: 0.38 cells/s on 2 CPU cores "
                         "(docs/BENCHMARKS.md)."),
        description=(
            "Each cell as its genes ranked by normalised expression (1,500 tokens) after species, assay and "
            "modality tokens; trained on dissociated and spatial data; a 512-d cell embedding. Human or mouse "
            "Ensembl ids, raw counts."
        ),
        applications=[CELL_TYPE_ANNOTATION, EMBEDDING_INTEGRATION],
        backend="nicheformer",
        variant="Nicheformer",
    ),
    dict(
        id="transcriptformer",
        name="TranscriptFormer (tf_sapiens, GPU only)",
        speed="not measured (needs a GPU)",
        accuracy=None,
        accuracy_source=("Not measured by this platform: helical runs TranscriptFormer on CUDA only and no GPU was "
                         "available to measure it (docs/MODELS.md)."),
        description=(
            "A generative model of each cell's expressed genes (up to 2,047, in the file's gene order) and their "
            "counts, genes given as protein-language-model (ESM-2) vectors, after an assay token; a 2,048-d cell "
            "embedding. Human Ensembl ids, raw counts. Runs only on GPU workers."
        ),
        applications=[CELL_TYPE_ANNOTATION, EMBEDDING_INTEGRATION],
        backend="transcriptformer",
        variant="tf_sapiens",
    ),
    dict(
        id="baseline",
        name="Baseline (log1p + HVG, no foundation model)",
        speed="fast",
        accuracy=None,
        accuracy_source="Measured by this platform on pbmc3k (held-out split); see docs/BENCHMARKS.md.",
        description=(
            "Normalise to 10k counts, log1p, the reference's 2,000 highly variable genes (scanpy); its embedding "
            "is their PCA. No foundation model: the yardstick the others must beat. Annotation reads it with the "
            "run's head (logistic regression or kNN), as it reads every model."
        ),
        applications=[CELL_TYPE_ANNOTATION, EMBEDDING_INTEGRATION],
        backend="baseline",
        variant="",
        weights_status="installed",
        weights_detail="No pretrained weights: the classifier is trained on your reference.",
    ),
    dict(
        id="harmony",
        name="Harmony (on the baseline's 50 PCs)",
        speed="fast",
        accuracy=None,
        accuracy_source="Not an annotation model; its integration scores are measured per dataset (scIB metrics).",
        description=(
            "The baseline's PCA of highly variable genes, corrected across batches by Harmony (harmonypy): the "
            "classical integration yardstick the foundation models' embeddings are compared with."
        ),
        applications=[EMBEDDING_INTEGRATION],
        backend="harmony",
        variant="",
        weights_status="installed",
        weights_detail="No pretrained weights: computed from the dataset's own cells.",
    ),
]
SEEDED_FIELDS = ("name", "speed", "accuracy", "accuracy_source", "description", "applications", "backend",
                 "variant")


def seed_catalog(engine: Engine) -> None:
    """Insert the seed rows that are missing and refresh seeded attributes of those present."""
    with write_session(engine) as s:
        for app in SEED_APPLICATIONS:
            existing = s.get(Application, app.id)
            if existing is None:
                s.add(Application.model_validate(app.model_dump()))
            else:
                existing.name, existing.description = app.name, app.description
                s.add(existing)
        for seed in SEED_MODELS:
            existing = s.get(ModelEntry, seed["id"])
            if existing is None:
                s.add(ModelEntry(**seed))
                continue
            for key in SEEDED_FIELDS:
                setattr(existing, key, seed[key])
            s.add(existing)


def list_applications(engine: Engine) -> list[Application]:
    with read_session(engine) as s:
        return list(s.exec(select(Application).order_by(Application.name)))


def list_models(engine: Engine, application_id: str | None = None) -> list[ModelEntry]:
    with read_session(engine) as s:
        models = list(s.exec(select(ModelEntry).order_by(ModelEntry.id)))
    if application_id is not None:
        models = [m for m in models if application_id in m.applications]
    return models


def shown_accuracy(model: ModelEntry) -> float | None:
    """The accuracy figure a page may show for ``model``: none for the seed catalog's figures, which are neither a
    published benchmark nor measured here, and beside generated, untrained weights read as the model's accuracy."""
    return None if model.accuracy_source == SEED_SOURCE else model.accuracy


def needs_gpu(model: ModelEntry) -> bool:
    """Whether helical runs this model on CUDA only (its backend's ``requires_gpu``), for the dashboards, which
    import the app layer only."""
    return requires_gpu(model.backend)

