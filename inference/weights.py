"""Model weights: where they are, whether they are whole, and staging them without any network.

Layout is helical's cache layout (``~/.cache/helical/models``), so a copy of that folder can be staged as is.
Resolution order for a model: the staged weights folder (``HELICAL_PLATFORM_WEIGHTS``), helical's cache
(``CACHE_DIR_HELICAL_PREFIX``), helical's own download (only when downloads are allowed), and last the
generated, untrained checkpoints. Staged files are checked against ``manifest.json`` (sha256 written when
they were staged) and are never deleted by the platform.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from inference.run_files import write_text

MANIFEST = "manifest.json"
STAGE_HINT = "helical-platform weights stage SRC"

# Every Geneformer variant helical 3.1.4 offers: version folder, weights file, hidden size, context.
GENEFORMER_VARIANTS: dict[str, dict[str, object]] = {
    "gf-6L-10M-i2048": {"version": "v1", "file": "pytorch_model.bin", "embsize": 256, "input_size": 2048},
    "gf-12L-40M-i2048": {"version": "v1", "file": "pytorch_model.bin", "embsize": 512, "input_size": 2048},
    "gf-12L-40M-i2048-CZI-CellxGene": {"version": "v1", "file": "model.safetensors", "embsize": 512,
                                       "input_size": 2048},
    "gf-12L-38M-i4096": {"version": "v2", "file": "model.safetensors", "embsize": 512, "input_size": 4096},
    "gf-12L-38M-i4096-CLcancer": {"version": "v2", "file": "model.safetensors", "embsize": 512,
                                  "input_size": 4096},
    "gf-20L-151M-i4096": {"version": "v2", "file": "model.safetensors", "embsize": 896, "input_size": 4096},
    "gf-12L-104M-i4096": {"version": "v3", "file": "model.safetensors", "embsize": 768, "input_size": 4096},
    "gf-12L-104M-i4096-CLcancer": {"version": "v3", "file": "model.safetensors", "embsize": 768,
                                   "input_size": 4096},
    "gf-18L-316M-i4096": {"version": "v3", "file": "model.safetensors", "embsize": 1152, "input_size": 4096},
}
DEFAULT_GENEFORMER = "gf-6L-10M-i2048"
SCGPT_VARIANT = "whole-human"
# UCE's two releases (helical's ``model_name``): the weights file is ``uce/<variant>.torch``; they differ in layers.
UCE_VARIANTS: dict[str, dict[str, int]] = {"4layer_model": {"layers": 4}, "33l_8ep_1024t_1280": {"layers": 33}}
DEFAULT_UCE = "4layer_model"
UCE_PROTEIN_EMBEDDINGS = "uce/protein_embeddings/Homo_sapiens.GRCh38.gene_symbol_to_embedding_ESM2.pt"
# Nicheformer's one release (helical's default ``theislab/Nicheformer``), four files in ``nicheformer/``.
NICHEFORMER_VARIANT = "Nicheformer"
NICHEFORMER_FILES = ("config.json", "vocab.json", "model.safetensors", "model.h5ad")
# TranscriptFormer's three releases (helical's ``model_name``) and the species whose ESM-2 gene tables each reads
# from ``transcriptformer/<variant>/vocabs/<species>_gene.h5`` (helical's ``list_of_files_to_download``, tested).
TRANSCRIPTFORMER_SPECIES: dict[str, tuple[str, ...]] = {
    "tf_sapiens": ("homo_sapiens",),
    "tf_exemplar": ("danio_rerio", "drosophila_melanogaster", "homo_sapiens", "mus_musculus",
                    "caenorhabditis_elegans"),
    "tf_metazoa": ("drosophila_melanogaster", "lytechinus_variegatus", "plasmodium_falciparum", "xenopus_laevis",
                   "caenorhabditis_elegans", "gallus_gallus", "mus_musculus", "saccharomyces_cerevisiae",
                   "danio_rerio", "oryctolagus_cuniculus", "spongilla_lacustris", "homo_sapiens",
                   "canis_lupus_familiaris", "rattus_norvegicus", "sus_scrofa", "macaca_fascicularis"),
}
DEFAULT_TRANSCRIPTFORMER = "tf_sapiens"


class WeightsError(RuntimeError):
    """Weights missing, corrupt or incomplete; the message names the file and what to run."""


def model_key(backend: str, variant: str) -> str:
    return f"{backend}:{variant}"


def required_files(backend: str, variant: str) -> list[str]:
    """Paths, relative to the weights root, that helical's classes read for this model (helical's layout)."""
    if backend == "geneformer":
        if variant not in GENEFORMER_VARIANTS:
            raise WeightsError(f"Unknown Geneformer variant {variant!r}; choose one of "
                               f"{', '.join(GENEFORMER_VARIANTS)}.")
        v = GENEFORMER_VARIANTS[variant]
        base = f"geneformer/{v['version']}"
        return [f"{base}/gene_median_dictionary.json", f"{base}/token_dictionary.json",
                f"{base}/ensembl_mapping_dict.json", f"{base}/{variant}/config.json",
                f"{base}/{variant}/training_args.bin", f"{base}/{variant}/{v['file']}"]
    if backend == "scgpt":
        return ["scgpt/scGPT_CP/vocab.json", "scgpt/scGPT_CP/best_model.pt"]
    if backend == "uce":
        if variant not in UCE_VARIANTS:
            raise WeightsError(f"Unknown UCE variant {variant!r}; choose one of {', '.join(UCE_VARIANTS)}.")
        return [f"uce/{variant}.torch", "uce/all_tokens.torch", UCE_PROTEIN_EMBEDDINGS, "uce/species_offsets.json",
                "uce/species_chrom.csv"]
    if backend == "nicheformer":
        if variant != NICHEFORMER_VARIANT:
            raise WeightsError(f"Unknown Nicheformer variant {variant!r}; there is one: {NICHEFORMER_VARIANT}.")
        return [f"nicheformer/{name}" for name in NICHEFORMER_FILES]
    if backend == "transcriptformer":
        if variant not in TRANSCRIPTFORMER_SPECIES:
            raise WeightsError(f"Unknown TranscriptFormer variant {variant!r}; choose one of "
                               f"{', '.join(TRANSCRIPTFORMER_SPECIES)}.")
        base = f"transcriptformer/{variant}"
        return [f"{base}/config.json", f"{base}/model_weights.pt", f"{base}/vocabs/assay_vocab.json",
                *(f"{base}/vocabs/{species}_gene.h5" for species in TRANSCRIPTFORMER_SPECIES[variant])]
    raise WeightsError(f"The {backend!r} backend has no weights.")


def optional_files(backend: str, variant: str) -> list[str]:
    """Files read when present: the architecture of a checkpoint that is not the release's own (scGPT's
    ``args.json``, as scGPT releases ship it; ``uce/args.json``, written only for generated UCE files)."""
    return {"scgpt": ["scgpt/scGPT_CP/args.json"], "uce": ["uce/args.json"]}.get(backend, [])


def weights_variants() -> dict[str, list[str]]:
    """Every model with weights and its variants: what is staged, verified and listed."""
    return {"geneformer": list(GENEFORMER_VARIANTS), "scgpt": [SCGPT_VARIANT], "uce": list(UCE_VARIANTS),
            "nicheformer": [NICHEFORMER_VARIANT], "transcriptformer": list(TRANSCRIPTFORMER_SPECIES)}


def helical_cache_dir() -> Path:
    """helical's cache, computed as helical computes it (without importing helical)."""
    prefix = os.environ.get("CACHE_DIR_HELICAL_PREFIX")
    base = Path(prefix) if prefix is not None else Path.home()
    return base / ".cache" / "helical" / "models"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        return {"files": {}, "models": {}}
    return json.loads(path.read_text())


def write_manifest(root: Path, manifest: dict) -> None:
    write_text(root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))


@dataclass
class ResolvedWeights:
    """Where a model's files are, where they came from, and a checksum that identifies them."""

    backend: str
    variant: str
    root: Path
    origin: str  # "staged" | "helical-cache" | "generated"
    trained: bool
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 (or "" if unverified)
    detail: dict = field(default_factory=dict)

    @property
    def checksum(self) -> str:
        """sha256 over the files' own checksums (or sizes, for unverified helical-cache files)."""
        digest = hashlib.sha256()
        for rel in sorted(self.files):
            sig = self.files[rel] or f"size:{(self.root / rel).stat().st_size}"
            digest.update(f"{rel}={sig}\n".encode())
        return digest.hexdigest()

    def path(self, rel: str) -> Path:
        return self.root / rel

    def status(self) -> str:
        """The catalog's words: installed (trained weights) or generated (untrained)."""
        return "installed" if self.trained else "generated"

    def describe(self) -> dict[str, object]:
        return {"backend": self.backend, "variant": self.variant, "origin": self.origin,
                "trained": self.trained, "root": str(self.root), "checksum": self.checksum, **self.detail}


@dataclass
class WeightsLocations:
    """The folders searched, in order; ``allow_download`` lets helical fetch missing files (network)."""

    staged: Path
    generated: Path
    helical_cache: Path = field(default_factory=helical_cache_dir)
    allow_download: bool = False

    def resolve(self, backend: str, variant: str, verify: bool = True) -> ResolvedWeights:
        """Find complete weights for a model, or raise naming the first missing or corrupt file."""
        needed = required_files(backend, variant)
        problems: list[str] = []
        for root, origin in ((self.staged, "staged"), (self.helical_cache, "helical-cache"),
                             (self.generated, "generated")):
            manifest = read_manifest(root) if origin != "helical-cache" else {"files": {}, "models": {}}
            present = [rel for rel in needed if (root / rel).is_file()]
            if not present:
                continue
            if len(present) < len(needed):
                missing = next(rel for rel in needed if rel not in present)
                problems.append(f"{root / missing} is missing (the other files of {backend} {variant} are in {root})")
                continue
            files = {}
            for rel in needed + [o for o in optional_files(backend, variant) if (root / o).is_file()]:
                expected = manifest["files"].get(rel, {}).get("sha256", "")
                if verify and expected and sha256_file(root / rel) != expected:
                    raise WeightsError(
                        f"{root / rel} does not match the checksum recorded when it was staged "
                        f"({expected[:12]}…): the file is corrupt or was changed. Stage it again with "
                        f"`{STAGE_HINT}`, or check it with `helical-platform weights verify`.")
                files[rel] = expected
            info = manifest["models"].get(model_key(backend, variant), {})
            trained = origin != "generated" and info.get("trained", True)
            detail = {k: v for k, v in info.items() if k in ("size", "generated_at", "architecture", "note")}
            return ResolvedWeights(backend, variant, root, origin, trained, files, detail)
        if self.allow_download:
            return self._download(backend, variant)
        where = ", ".join(str(p) for p in (self.staged, self.helical_cache, self.generated))
        hint = "; ".join(problems) + "; " if problems else ""
        raise WeightsError(
            f"No weights for {backend} {variant}: {hint}looked in {where}. Needed files: {needed[0]}, … "
            f"({len(needed)} in helical's cache layout). Stage a copy of helical's cache with `{STAGE_HINT}`, "
            f"or write untrained test weights with `helical-platform weights generate`.")

    def _download(self, backend: str, variant: str) -> ResolvedWeights:
        """helical's own downloader, into helical's cache; only when the deployment allows network access."""
        from inference.helical_env import isolated

        with isolated():
            from helical.utils.downloader import Downloader

            downloader = Downloader()
            if backend == "nicheformer":  # from its Hugging Face repository, by helical's own list of links
                from helical.models.nicheformer import NicheformerConfig

                cfg = NicheformerConfig()
                for path, url in cfg.list_of_files_to_download:
                    downloader.download_via_link(Path(path), url)
            else:
                for rel in required_files(backend, variant):
                    downloader.download_via_name(rel)
        return WeightsLocations(self.helical_cache, self.generated, self.helical_cache, False).resolve(
            backend, variant)

    def status(self, backend: str, variant: str) -> tuple[str, str]:
        """(installed | generated | missing, a sentence for the user) without hashing any file."""
        try:
            w = self.resolve(backend, variant, verify=False)
        except WeightsError:
            return "missing", (f"not found in {self.staged} or helical's cache: stage them with `{STAGE_HINT}` "
                               "(`helical-platform weights list` tells more)")
        if w.trained:
            return "installed", f"{w.origin} weights in {w.root}"
        return "generated", f"generated, untrained ({w.detail.get('size', '?')} size) in {w.root}: numbers mean nothing"


def catalog(locations: WeightsLocations) -> list[dict[str, str]]:
    """Status of every model variant: for ``weights list``, the catalog and the UI."""
    rows = []
    for backend, variants in weights_variants().items():
        for variant in variants:
            status, detail = locations.status(backend, variant)
            rows.append({"backend": backend, "variant": variant, "status": status, "detail": detail})
    return rows


def vocabulary_genes(weights: ResolvedWeights) -> tuple[str, frozenset[str]]:
    """(kind, genes) of a model's vocabulary: Ensembl ids for Geneformer and Nicheformer (the keys of its
    ``vocab.json`` that are not special tokens) and TranscriptFormer (the keys of its ESM-2 gene tables), symbols
    for scGPT and UCE (the keys of its protein-embedding table, read memory-mapped: the real table holds a 5,120-d
    vector per gene)."""
    if weights.backend == "uce":
        import torch

        table = torch.load(weights.root / UCE_PROTEIN_EMBEDDINGS, map_location="cpu", weights_only=True, mmap=True)
        return "symbol", frozenset(str(k).upper() for k in table)
    if weights.backend == "geneformer":
        version = GENEFORMER_VARIANTS[weights.variant]["version"]
        tokens = json.loads((weights.root / f"geneformer/{version}/token_dictionary.json").read_text())
        return "ensembl", frozenset(k for k in tokens if not k.startswith("<"))
    if weights.backend == "nicheformer":
        vocab = json.loads((weights.root / "nicheformer/vocab.json").read_text())
        return "ensembl", frozenset(k for k in vocab if not k.startswith("["))
    if weights.backend == "transcriptformer":
        import h5py

        genes: set[str] = set()
        for rel in required_files(weights.backend, weights.variant):
            if rel.endswith("_gene.h5"):
                with h5py.File(weights.root / rel, "r") as f:
                    genes.update(k.decode() if isinstance(k, bytes) else str(k) for k in f["keys"][:])
        return "ensembl", frozenset(genes)
    vocab = json.loads((weights.root / "scgpt/scGPT_CP/vocab.json").read_text())
    return "symbol", frozenset(k for k in vocab if not k.startswith("<"))
