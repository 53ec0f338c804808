"""The Application plug-in: what a kind of analysis needs, how it is checked, what runs where, what it yields.

The run service knows no application by name: it looks one up in ``inference.applications.REGISTRY`` and calls
these methods. Everything here is plain data in and out (dataset descriptions, paths, dicts), because it runs
both in the server (validation, job building) and on Dask workers (the two phases), and ``inference`` imports
neither ``app`` nor ``store``. docs/ARCHITECTURE.md has the recipe for adding one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

StageProgress = Callable[[str, int, int], None]
ShouldStop = Callable[[], bool]


class SubmissionError(ValueError):
    """A submission that cannot run; the message names the field and says what to do (REST: 400)."""


class ModelCannotUse(SubmissionError):
    """A valid file the chosen model cannot use, e.g. too little vocabulary overlap (REST: 422)."""


@dataclass(frozen=True)
class DatasetInfo:
    """A stored dataset as an application sees it: where it is and what its check found."""

    id: str
    file_name: str
    path: str
    sha256: str
    n_cells: int
    check_report: dict[str, Any]


@dataclass(frozen=True)
class ModelInfo:
    """The catalog's model, as far as an application needs it."""

    id: str
    name: str
    backend: str


@dataclass(frozen=True)
class RunRequest:
    """What a user asked for, once the run service has found the model and the datasets."""

    model: ModelInfo
    query: DatasetInfo
    reference: DatasetInfo | None = None
    label_column: str | None = None
    truth_column: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    annotator: AnnotatorInfo | None = None  # a saved annotator instead of a reference


@dataclass(frozen=True)
class AnnotatorInfo:
    """A saved annotator as a run sees it: its head's file and what it needs."""

    id: str
    name: str
    model_id: str
    head_path: str
    model_checksum: str
    label_column: str
    classes: dict[str, int]
    ontology: dict[str, str | None] = field(default_factory=dict)  # label -> Cell Ontology id, as confirmed


@dataclass(frozen=True)
class Accepted:
    """A validated submission: the run's recorded parameters and columns."""

    parameters: dict[str, Any]
    label_column: str | None
    truth_column: str | None
    cells_total: int


@dataclass(frozen=True)
class Outcome:
    """What the worker-side CPU phase returns for the run's row (the files are in the run folder)."""

    n_cells: int
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    stage_timings: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)  # merged into the run's parameters


class Application(ABC):
    """One kind of analysis. Subclasses set the class attributes and implement the four methods."""

    id: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str]
    # share of a run's time per stage, in order, for one progress figure ("starting" and "loading model" are
    # the run service's own and come first)
    stages: ClassVar[dict[str, float]]
    downloads: ClassVar[tuple[str, ...]] = ("h5ad", "csv")  # the result's file formats (REST ?format=)

    @abstractmethod
    def validate(self, request: RunRequest) -> Accepted:
        """Check a submission against the datasets' check reports; raise ``SubmissionError`` with what to do."""

    @abstractmethod
    def job(self, request: RunRequest, accepted: Accepted, out_dir: Path, home: Path) -> Any:
        """The picklable job description the workers get (paths and parameters, never open files); ``home`` is
        the data home (its ``heads`` and ``embeddings`` stores are shared by every run)."""

    @abstractmethod
    def model_phase(self, job: Any, backend: Any, model_info: dict, workdir: Path, progress: StageProgress,
                    should_stop: ShouldStop) -> None:
        """On the model's actor (model loaded once): the model's part, written into ``workdir``."""

    @abstractmethod
    def cpu_phase(self, job: Any, workdir: Path, progress: StageProgress, should_stop: ShouldStop) -> Outcome:
        """On any worker: the rest (layout, files), published atomically into the job's run folder."""

    def progress(self, stage: str, done: int, total: int) -> float:
        """One figure in [0, 0.99] from a stage and its cells done."""
        weights = {"starting": 0.0, "loading model": 0.05, **self.stages}
        stage = stage.split(":")[0]  # "embedding query: embeddings reused" is the embedding stage
        if stage not in weights:
            return 0.0
        names = list(weights)
        before = sum(weights[n] for n in names[: names.index(stage)])
        within = done / total if total else 0.0
        return round(min(0.99, before + weights[stage] * within), 4)
