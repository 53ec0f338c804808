"""The OpenAPI 3.1 document of ``app/rest.py`` (written by hand to match the handlers; a test checks both)."""

from __future__ import annotations

from importlib import metadata


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ANNOTATOR_ID = {"name": "annotator_id", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "an annotator's id or name"}
DATASET_ID = {"name": "dataset_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
MINE = {"name": "mine", "in": "query", "required": False, "schema": {"type": "string", "enum": ["true", "false"]},
        "description": "true: only what the caller made (its created_by)"}
GROUP_ID = {"name": "group_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
REF = "#/components/schemas/"
COMMON_ERRORS = {"401": _error("Missing or wrong bearer token (or, for a download, no valid unexpired signed link)"),
                 "400": _error("Invalid input")}
CROSS_SITE = {"403": _error("Sent by another site's page: an Origin (or Referer) that is neither this server's nor "
                            "in HELICAL_PLATFORM_ALLOWED_ORIGINS, without the bearer token (code cross_origin)")}
NOT_YOURS = {"403": _error("Another user's (code forbidden: only its maker or an admin may), or sent by another "
                           "site's page (code cross_origin)")}


def openapi_document() -> dict:
    try:
        version = metadata.version("helical-platform")
    except metadata.PackageNotFoundError:
        version = "0"
    paths = {
        "/api/health": {"get": {
            "summary": "Health for probes: database, cluster, event-loop stalls (no token needed)",
            "operationId": "health", "security": [],
            "parameters": [{"name": "since", "in": "query", "required": False, "schema": {"type": "number"},
                            "description": "Unix time: report the event-loop stalls after it"}],
            "responses": {"200": _json({"type": "object"}, "Healthy"), "400": _error("Invalid since"),
                          "503": _json({"type": "object"}, "Database or cluster unavailable")}}},
        "/api/applications": {"get": {"summary": "List applications", "operationId": "listApplications",
                                      "responses": {"200": _json({"type": "array",
                                                                  "items": {"$ref": REF + "Application"}}),
                                                    **COMMON_ERRORS}}},
        "/api/models": {"get": {"summary": "List models with their attributes", "operationId": "listModels",
                                "responses": {"200": _json({"type": "array", "items": {"$ref": REF + "Model"}}),
                                              **COMMON_ERRORS}}},
        "/api/applications/{id}/models": {"get": {
            "summary": "Models linked to an application", "operationId": "listApplicationModels",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json({"type": "array", "items": {"$ref": REF + "Model"}}),
                          "404": _error("Unknown application"), **COMMON_ERRORS}}},
        "/api/datasets": {"get": {"summary": "List stored datasets", "operationId": "listDatasets",
                                  "parameters": [MINE],
                                  "responses": {"200": _json({"type": "array", "items": {"$ref": REF + "Dataset"}}),
                                                **COMMON_ERRORS}}},
        "/api/upload": {"post": {
            "summary": "Upload a file (streamed to disk) and check it", "operationId": "upload",
            "parameters": [{"name": "filename", "in": "query", "required": False, "schema": {"type": "string"},
                            "description": "Required with a raw body (application/octet-stream)."}],
            "requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "string", "format": "binary"}}, "required": ["file"]}}}},
            "responses": {"201": _json({"$ref": REF + "Dataset"}, "Stored and checked"),
                          "408": _error("The body stopped arriving for HELICAL_PLATFORM_UPLOAD_IDLE_S "
                                        "(code upload_idle); nothing was kept"),
                          "413": _error("Above the upload limit (too_large), or the user's quota (over_quota)"),
                          "415": _error("Not a readable single-cell file, or one whose structure is refused before "
                                        "reading (external storage or links, sparse indices outside the matrix, ...)"
                                        ": code unreadable_file, the report says what and where"),
                          **CROSS_SITE, **COMMON_ERRORS}}},
        "/api/submit": {"post": {
            "summary": "Submit a run (answers at once)", "operationId": "submit",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": REF + "Submit"}}}},
            "responses": {"202": _json({"type": "object", "properties": {
                "run_id": {"type": "string", "format": "uuid"}, "status": {"type": "string"},
                "group_id": {"type": "string", "format": "uuid"},
                "runs": {"type": "array", "items": {"type": "object"}}},
                "required": ["run_id", "status"]}, "Accepted"),
                "404": _error("Unknown application, model or dataset"),
                "415": _error("The body is not sent as application/json (code unsupported_media_type)"),
                "413": _error("The JSON body is over 1 MB (code too_large)"),
                "422": _error("The model cannot use this file"),
                "429": _error("The caller has HELICAL_PLATFORM_MAX_QUEUED_RUNS runs queued or running (code "
                              "too_many_runs; Retry-After says when to try again)"), **CROSS_SITE, **COMMON_ERRORS}}},
        "/api/status/{run_id}": {"get": {"summary": "Status and progress of a run", "operationId": "status",
                                         "parameters": [RUN_ID],
                                         "responses": {"200": _json({"$ref": REF + "Status"}),
                                                       "404": _error("Unknown run"), **COMMON_ERRORS}}},
        "/api/results/{run_id}": {"get": {
            "summary": "Metrics, confusion matrix, provenance and a page of per-cell predictions",
            "operationId": "results",
            "parameters": [RUN_ID,
                           {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                           {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                       "maximum": 10000}},
                           {"name": "probabilities", "in": "query",
                            "description": "best (default): each cell's best class and confidence; all: also "
                                           "every class's probability as p_<class> (each row sums to 1)",
                            "schema": {"type": "string", "enum": ["best", "all"]}}],
            "responses": {"200": _json({"$ref": REF + "Results"}), "404": _error("Unknown run"),
                          "409": _error("The run has not finished"), **COMMON_ERRORS}}},
        "/api/download/{run_id}": {"get": {
            "summary": "The annotated file, streamed", "operationId": "download",
            "parameters": [RUN_ID, {"name": "format", "in": "query",
                                    "schema": {"type": "string", "enum": ["h5ad", "csv", "cellxgene"]},
                                    "description": "cellxgene: annotation runs only"}],
            "responses": {"200": {"description": "The file", "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "text/csv": {"schema": {"type": "string"}}}},
                "404": _error("Unknown run"), "409": _error("The run has not finished"), **COMMON_ERRORS}}},
        "/api/runs/{run_id}/cancel": {"post": {"summary": "Cancel a run", "operationId": "cancel",
                                               "parameters": [RUN_ID],
                                               "responses": {"200": _json({"$ref": REF + "Status"}),
                                                             "404": _error("Unknown run"), **NOT_YOURS,
                                                             **COMMON_ERRORS}}},
        "/api/annotators": {
            "get": {"summary": "List saved annotators, newest first", "operationId": "listAnnotators",
                    "parameters": [MINE],
                    "responses": {"200": _json({"type": "array", "items": {"$ref": REF + "Annotator"}}),
                                  **COMMON_ERRORS}},
            "post": {"summary": "Save a finished run's head as an annotator", "operationId": "saveAnnotator",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "$ref": REF + "SaveAnnotator"}}}},
                     "responses": {"201": _json({"$ref": REF + "Annotator"}, "Saved"),
                                   "404": _error("Unknown run"), "409": _error("The name is taken (code conflict)"),
                                   "415": _error("The body is not sent as application/json"),
                                   **CROSS_SITE, **COMMON_ERRORS}}},
        "/api/annotators/import": {"post": {
            "summary": "Import an exported annotator file (every part checked; nothing stored otherwise)",
            "operationId": "importAnnotator",
            "parameters": [{"name": "name", "in": "query", "required": False, "schema": {"type": "string"},
                            "description": "A new name (e.g. when the file's is taken here)"}],
            "requestBody": {"required": True, "content": {
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"201": _json({"$ref": REF + "Annotator"}, "Imported"),
                          "409": _error("The name is taken"), "413": _error("Too large"),
                          "415": _error("Not sent as application/zip"), **CROSS_SITE, **COMMON_ERRORS}}},
        "/api/annotators/{annotator_id}": {
            "get": {"summary": "One annotator", "operationId": "getAnnotator", "parameters": [ANNOTATOR_ID],
                    "responses": {"200": _json({"$ref": REF + "Annotator"}), "404": _error("Unknown annotator"),
                                  **COMMON_ERRORS}},
            "delete": {"summary": "Delete an annotator (built-in ones stay)", "operationId": "deleteAnnotator",
                       "parameters": [ANNOTATOR_ID],
                       "responses": {"200": _json({"type": "object"}), "404": _error("Unknown annotator"),
                                     "409": _error("Built in (code in_use)"), **CROSS_SITE, **COMMON_ERRORS}}},
        "/api/annotators/{annotator_id}/export": {"get": {
            "summary": "The annotator as one file to share (manifest with sha256 of each part, arrays)",
            "operationId": "exportAnnotator", "parameters": [ANNOTATOR_ID],
            "responses": {"200": {"description": "The file", "content": {
                "application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                "404": _error("Unknown annotator"), **COMMON_ERRORS}}},
        "/api/datasets/{dataset_id}": {
            "get": {"summary": "One dataset, with the bytes its stored embeddings take", "operationId": "getDataset",
                    "parameters": [DATASET_ID],
                    "responses": {"200": _json({"$ref": REF + "Dataset"}), "404": _error("Unknown dataset"),
                                  **COMMON_ERRORS}},
            "delete": {"summary": "Delete a dataset: its file, its stored embeddings and (with cascade) its finished "
                                  "runs", "operationId": "deleteDataset",
                       "parameters": [DATASET_ID, {"name": "cascade", "in": "query", "required": False,
                                                   "schema": {"type": "string", "enum": ["true", "false"]},
                                                   "description": "also delete the finished runs that use it"}],
                       "responses": {"200": _json({"type": "object"}, "Deleted"), "404": _error("Unknown dataset"),
                                     "409": _error("Used by a queued or running run, or by finished runs without "
                                                   "cascade=true (code in_use)"), **CROSS_SITE, **COMMON_ERRORS}}},
        "/api/datasets/{dataset_id}/embeddings": {
            "get": {"summary": "The dataset's stored embeddings (one per model, weights and settings) and sizes",
                    "operationId": "datasetEmbeddings", "parameters": [DATASET_ID],
                    "responses": {"200": _json({"type": "object"}), "404": _error("Unknown dataset"),
                                  **COMMON_ERRORS}},
            "delete": {"summary": "Free the dataset's stored embeddings (runs keep their own)",
                       "operationId": "deleteDatasetEmbeddings", "parameters": [DATASET_ID],
                       "responses": {"200": _json({"type": "object"}), "404": _error("Unknown dataset"),
                                     **NOT_YOURS, **COMMON_ERRORS}}},
        "/api/groups/{group_id}": {"get": {
            "summary": "The runs submitted together (one per model) and their metrics side by side",
            "operationId": "group", "parameters": [GROUP_ID],
            "responses": {"200": _json({"type": "object", "required": ["group_id", "runs", "table"], "properties": {
                "group_id": {"type": "string"}, "application": {"type": "string"}, "dataset": {"type": "string"},
                "runs": {"type": "array", "items": {"$ref": REF + "Run"}},
                "table": {"type": "array", "items": {"type": "object"},
                          "description": "one row per model: its scIB metrics and aggregate scores"}}}),
                "404": _error("Unknown group"), **COMMON_ERRORS}}},
        "/api/runs": {"get": {"summary": "List runs, newest first", "operationId": "listRuns", "parameters": [MINE],
                              "responses": {"200": _json({"type": "array", "items": {"$ref": REF + "Run"}}),
                                            **COMMON_ERRORS}}},
        "/api/runs/{run_id}": {
            "get": {"summary": "Status and progress of a run (as /api/status/{run_id})", "operationId": "getRun",
                    "parameters": [RUN_ID],
                    "responses": {"200": _json({"$ref": REF + "Status"}), "404": _error("Unknown run"),
                                  **COMMON_ERRORS}},
            "delete": {"summary": "Delete a finished run: its row and its files (annotators saved from it stay)",
                       "operationId": "deleteRun", "parameters": [RUN_ID],
                       "responses": {"200": _json({"type": "object", "properties": {
                           "run_id": {"type": "string"}, "bytes_freed": {"type": "integer"}}}, "Deleted"),
                           "404": _error("Unknown run"),
                           "409": _error("Queued or running: cancel it first (code in_use)"), **CROSS_SITE,
                           "403": _error("Another user's run, for a user who is not an admin (code forbidden); or "
                                         "sent by another site's page (code cross_origin)"),
                           **COMMON_ERRORS}}},
        "/api/usage": {"get": {
            "summary": "Disk use of every dataset (file + stored embeddings) and run, with totals and free space",
            "operationId": "usage",
            "responses": {"200": _json({"type": "object", "required": ["datasets", "runs", "totals"]}),
                          **COMMON_ERRORS}}},
    }
    nullable = lambda t: {"type": [t, "null"]}  # noqa: E731
    schemas = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}}}}},
        "Application": {"type": "object", "required": ["id", "name", "description"], "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "description": {"type": "string"}}},
        "Model": {"type": "object", "required": ["id", "name", "speed", "weights", "device"], "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "speed": {"type": "string"},
            "accuracy": nullable("number"), "accuracy_source": {"type": "string"},
            "description": {"type": "string"}, "applications": {"type": "array", "items": {"type": "string"}},
            "weights": {"type": "string", "enum": ["installed", "generated", "missing"]},
            "weights_detail": {"type": "string"}, "untrained": {"type": "boolean"}, "variant": {"type": "string"},
            "device": {"type": "string", "description": "where it would run now: cpu, cuda, or 'needs a GPU' for a "
                       "model helical runs on CUDA only when the cluster's workers have no GPU (its runs are "
                       "refused)"},
            "requires_gpu": {"type": "boolean"}}},
        "Dataset": {"type": "object", "required": ["dataset_id", "file_name", "sha256"], "properties": {
            "dataset_id": {"type": "string", "format": "uuid"}, "file_name": {"type": "string"},
            "sha256": {"type": "string"}, "size_bytes": {"type": "integer"}, "n_cells": nullable("integer"),
            "n_genes": nullable("integer"), "created_at": {"type": "string"}, "check": {"type": "object"},
            "report": {"type": "object"}, "embeddings_bytes": {"type": "integer"},
            "created_by": {**nullable("string"), "description": "the user who uploaded it first"}}},
        "Submit": {"type": "object", "required": ["application", "dataset"], "properties": {
            "application": {"type": "string"}, "model": {"type": "string", "description": "one run of this model"},
            "models": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 20,
                       "description": "instead of model: one run per model, grouped (group_id)"},
            "batch_column": {**nullable("string"), "description": "embedding-integration: the obs column of each "
                                                                  "cell's batch, donor, condition or lab"},
            "dataset": {"type": "string", "description": "query dataset id"},
            "reference": nullable("string"), "label_column": nullable("string"),
            "truth_column": nullable("string"),
            "annotator": {**nullable("string"), "description": "a saved annotator (id or name) instead of a "
                                                               "reference and label column"},
            "truth_ontology": {"type": "object", "additionalProperties": {"type": ["string", "null"]},
                               "description": "with an annotator that maps its labels to the Cell Ontology and a "
                                              "truth_column: true label -> Cell Ontology id (null: unmapped) for the "
                                              "cell-class scores. Labels left out take the annotator's term for the "
                                              "same spelling, else the suggested term; the run's "
                                              "parameters.truth_ontology records each label's term and how it was "
                                              "found (given, annotator, exact, synonym, normalised, no suggestion)"},
            "options": {"type": "object", "properties": {
                "confidence_threshold": {"type": "number", "minimum": 0, "maximum": 1},
                "novelty_threshold": {"type": "number", "minimum": 0, "maximum": 1,
                                      "description": "cells whose reference_fit is below it are unassigned"},
                "head": {"type": "string", "enum": ["logistic_regression", "knn"]},
                "k": {"type": "integer", "minimum": 1, "description": "neighbours of the knn head"},
                "majority_voting": {"type": "boolean",
                                    "description": "also label each over-cluster by its majority"},
                "seed": {"type": "integer"}, "variant": {"type": "string"},
                "max_metric_cells": {"type": "integer", "minimum": 100,
                                     "description": "embedding-integration: above it, the scIB metrics use a "
                                                    "seeded sample stratified by batch and cell type"}}}}},
        "Annotator": {"type": "object", "required": ["annotator_id", "name", "model", "classes"], "properties": {
            "annotator_id": {"type": "string"}, "name": {"type": "string"}, "description": {"type": "string"},
            "author": {"type": "string"}, "created_at": {"type": "string"}, "model": {"type": "string"},
            "backend": {"type": "string"}, "variant": {"type": "string"}, "model_checksum": {"type": "string"},
            "trained": {"type": "boolean"}, "head": {"type": "string"}, "head_sha256": {"type": "string"},
            "label_column": {"type": "string"}, "reference": {"type": "object"}, "classes": {"type": "object"},
            "genes_used": nullable("integer"), "check": {"type": "object"}, "ontology": {"type": "object"},
            "builtin": {"type": "boolean"}, "format_version": {"type": "integer"},
            "created_by": {**nullable("string"), "description": "the user who saved or imported it"}}},
        "SaveAnnotator": {"type": "object", "required": ["run_id", "name"], "properties": {
            "run_id": {"type": "string"}, "name": {"type": "string"}, "description": {"type": "string"},
            "author": {"type": "string"},
            "ontology": {"type": "object", "description": "label -> Cell Ontology id (e.g. CL:0001054), or null "
                                                          "to leave a label unmapped",
                         "additionalProperties": {"type": ["string", "null"]}}}},
        "Status": {"type": "object", "required": ["run_id", "status", "progress"], "properties": {
            "run_id": {"type": "string"}, "status": {"type": "string",
                                                     "enum": ["queued", "running", "done", "failed", "cancelled"]},
            "stage": {"type": "string"}, "progress": {"type": "number"}, "cells_done": {"type": "integer"},
            "cells_total": {"type": "integer"}, "eta_s": nullable("number"), "error": nullable("string"),
            "device": nullable("string"), "model": {"type": "string"}}},
        "Run": {"type": "object", "required": ["run_id", "status"], "properties": {
            "run_id": {"type": "string"}, "status": {"type": "string"},
            "created_by": {**nullable("string"), "description": "the user who submitted it"},
            "model": {"type": "string"},
            "dataset": {"type": "string"}, "macro_f1": nullable("number"), "group_id": nullable("string"),
            "parameters": {"type": "object"},
            "scores": {"type": "object", "description": "each score with what it covers: cell_type, "
                       "majority_voting and cell_class (where recorded), each {macro_f1, accuracy, n_cells, "
                       "n_classes, labelled_cells, left_out_cells, left_out_labels, partial}; partial: under half the "
                       "labelled cells or one class, not the run's score",
                       "additionalProperties": {"$ref": "#/components/schemas/Score"}}}},
        "Score": {"type": "object", "properties": {
            "macro_f1": {"type": "number"}, "accuracy": nullable("number"), "n_cells": {"type": "integer"},
            "n_classes": {"type": "integer"}, "labelled_cells": {"type": "integer"},
            "left_out_cells": {"type": "integer"}, "left_out_labels": {"type": "array", "items": {"type": "string"}},
            "partial": {"type": "boolean"}}},
        "Results": {"type": "object", "required": ["run_id", "metrics", "classes", "cells"], "properties": {
            "run_id": {"type": "string"}, "metrics": {"type": "object"},
            "classes": {"type": "array", "items": {"type": "string"}}, "confusion_matrix": {},
            "provenance": {"type": "object"}, "predicted_counts": {"type": "object"},
            "cells": {"type": "object", "properties": {"offset": {"type": "integer"}, "limit": {"type": "integer"},
                                                       "total": {"type": "integer"},
                                                       "items": {"type": "array", "items": {"type": "object"}}}}}},
    }
    return {"openapi": "3.1.0",
            "info": {"title": "Helical AI Platform API", "version": version,
                     "description": "Cell type annotation and batch integration with bio foundation models. "
                                    "Models whose `weights` are `generated` are untrained: their predictions and "
                                    "embeddings mean nothing."},
            "paths": paths, "components": {"schemas": schemas,
                                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{}, {"bearer": []}]}
