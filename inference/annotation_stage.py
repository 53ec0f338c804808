"""The stages of an annotation run: the words its progress shows and the keys of its stage timings."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """The stages of an annotation run, in order."""

    CHECKING = "checking"
    EMBEDDING_REFERENCE = "embedding reference"
    TRAINING_HEAD = "training head"
    EMBEDDING_QUERY = "embedding query"
    PREDICTING = "predicting"
    MAJORITY_VOTING = "majority voting"
    UMAP = "UMAP"
    WRITING = "writing"
