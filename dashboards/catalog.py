"""Picking an application and a model, with what a user weighs: speed, accuracy and its source, weights."""

from __future__ import annotations

import pandas as pd
import panel as pn
import param

from app.catalog import EMBEDDING_INTEGRATION, NEEDS_GPU, SEED_SOURCE, needs_gpu, shown_accuracy
from dashboards.safe_text import code, md, plain_formatters
from dashboards.styles import FITTING_TABLE
from dashboards.view import PlatformView

WEIGHTS_WORDS = {
    "installed": "installed (trained)",
    "generated": "generated, untrained",
    "missing": "missing",
}


def cluster_gpus(platform) -> int | None:  # noqa: ANN001 - app.platform.Platform
    """The GPUs of the cluster's workers, or None while it is not ready (then nothing is said about GPUs)."""
    status = platform.compute_status()
    return int(status.get("gpus") or 0) if status.get("state") == "ready" else None


def model_label(model, gpus: int | None = None) -> str:  # noqa: ANN001 - store.tables.ModelEntry
    """How a model is named in the picker: untrained or missing weights, and a GPU-only model on a cluster
    without a GPU (``gpus`` 0), are said in the name itself."""
    suffix = {"generated": " — generated, untrained", "missing": " — weights missing"}.get(model.weights_status, "")
    if gpus == 0 and needs_gpu(model):
        suffix += f" — {NEEDS_GPU}"
    return f"{model.name}{suffix}"


def accuracy_text(model) -> str:  # noqa: ANN001 - store.tables.ModelEntry
    """The accuracy as a page says it: a figure only where one was measured (``shown_accuracy``)."""
    figure = shown_accuracy(model)
    if figure is not None:
        return f"{figure:.2f}"
    measured = (model.accuracy_source or "").startswith("Measured by this platform")
    return "measured: docs/BENCHMARKS.md" if measured else "not measured here"


def model_card(model, gpus: int | None = None) -> str:  # noqa: ANN001
    """Markdown with the model's attributes and, for generated or missing weights, what that means; for a
    GPU-only model, that it needs a GPU and, when the cluster's workers have none (``gpus`` 0), what to do."""
    source = ("Figures measured on this platform: docs/BENCHMARKS.md." if model.accuracy_source == SEED_SOURCE
              else model.accuracy_source)
    lines = [f"### {md(model.name)}", md(model.description), "",
             f"**Speed:** {md(model.speed)} · **Accuracy:** {md(accuracy_text(model))}",
             f"<small>{md(source)}</small>", ""]
    if model.variant:
        lines.append(f"**Variant:** {code(model.variant)}")
    lines.append(f"**Weights:** {md(WEIGHTS_WORDS.get(model.weights_status, model.weights_status))}")
    if model.weights_status == "generated":
        lines.append("\n**Generated, untrained weights**: this model runs so the product can be tried, but its "
                     "predictions mean nothing. Stage real weights with `helical-platform weights stage`.")
    elif model.weights_status == "missing":
        lines.append(f"\n**No weights**: {md(model.weights_detail)}")
    elif model.weights_detail:
        lines.append(f"<small>{md(model.weights_detail)}</small>")
    if needs_gpu(model):
        lines.append("\n**Needs a GPU**: helical runs this model on CUDA only, so it runs on the cluster's GPU "
                     "workers only.")
        if gpus == 0:
            lines.append("This cluster's workers have no GPU: a run of it is refused. Point the platform at a Dask "
                         "scheduler with GPU workers: `DASK_SCHEDULER_ADDRESS=tcp://host:8786`, workers started "
                         "with `--resources GPU=1` (README, *Running on a cluster*).")
    return "\n".join(lines)


# the catalog fits its width: the long columns wrap, the short ones keep these widths (px)
WRAPPED = ("model", "speed", "accuracy", "variant", "weights", "description")
CATALOG_WIDTHS = {"model": 200, "speed": 100, "accuracy": 130, "variant": 150, "weights": 150}


def models_frame(models: list) -> pd.DataFrame:
    rows = [{"model": m.name, "speed": m.speed, "accuracy": accuracy_text(m), "variant": m.variant,
             "weights": WEIGHTS_WORDS.get(m.weights_status, m.weights_status), "description": m.description}
            for m in models]
    return pd.DataFrame(rows, columns=["model", "speed", "accuracy", "variant", "weights", "description"])


FORM_PICKS_MODELS = (EMBEDDING_INTEGRATION,)  # applications whose run form picks several models at once
FORM_PICKS_NOTE = ("This application's run form (**2 · Run**) picks its models, several at once; the catalog at the "
                   "bottom of the page describes each.")


class ModelPicker(PlatformView):
    """Application first, then the models that serve it."""

    application = param.Selector(doc="The application (its id).")
    model = param.Selector(doc="The model that will run (its id).")
    picks_model = param.Boolean(default=True, doc="The sidebar picks the model (an application whose run form "
                                                  "picks several models at once has no use for it).")

    def __init__(self, platform=None, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        super().__init__(platform, **params)
        apps = self.platform.applications()
        self.param.application.objects = {a.name: a.id for a in apps}
        self.application = apps[0].id if apps else None
        self._fill_models()

    @param.depends("application", watch=True)
    def _fill_models(self) -> None:
        self.picks_model = self.application not in FORM_PICKS_MODELS
        models = self.platform.models(self.application)
        self._models = {m.id: m for m in models}
        self._gpus = cluster_gpus(self.platform)
        self.param.model.objects = {model_label(m, self._gpus): m.id for m in models}
        usable = [m.id for m in models if m.weights_status != "missing"]
        self.model = usable[0] if usable else (models[0].id if models else None)

    def selected(self):  # noqa: ANN201 - ModelEntry
        return self._models.get(self.model)

    @param.depends("model")
    def _card(self) -> pn.pane.Markdown:
        m = self.selected()
        return pn.pane.Markdown(model_card(m, self._gpus) if m else "", css_classes=["model-card"],
                                sizing_mode="stretch_width")

    @param.depends("application")
    def table(self) -> pn.widgets.Tabulator:
        """Every model of the application side by side, from the catalog in the database."""
        frame = models_frame(self.platform.models(self.application))
        return pn.widgets.Tabulator(frame, show_index=False, disabled=True,
                                    formatters=plain_formatters(frame, wrap=WRAPPED), css_classes=["catalog-models"],
                                    sizing_mode="stretch_width", layout="fit_columns", widths=CATALOG_WIDTHS,
                                    stylesheets=[FITTING_TABLE])

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(
            pn.widgets.Select.from_param(self.param.application, name="Application",
                                         css_classes=["application-picker"], sizing_mode="stretch_width"),
            pn.widgets.Select.from_param(self.param.model, name="Model", css_classes=["model-picker"],
                                         sizing_mode="stretch_width", visible=self.param.picks_model),
            pn.Column(self._card, visible=self.param.picks_model, sizing_mode="stretch_width"),
            pn.pane.Markdown(FORM_PICKS_NOTE, css_classes=["form-picks-models"], sizing_mode="stretch_width",
                             visible=self.param.picks_model.rx.not_()),
            sizing_mode="stretch_width")
