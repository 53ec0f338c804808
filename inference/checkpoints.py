"""Generated checkpoints in helical's exact on-disk layout, from the shipped GENCODE gene table.

They exist so that helical's real loading and tokenisation code runs offline, in tests (``tiny``) and in
benchmarks (``real``: the published architecture, random initialisation). They are **untrained**: the manifest
records ``trained: false`` and every place a user sees such a model says so.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from inference.genes import gencode
from inference.weights import (
    DEFAULT_UCE,
    GENEFORMER_VARIANTS,
    NICHEFORMER_VARIANT,
    SCGPT_VARIANT,
    TRANSCRIPTFORMER_SPECIES,
    UCE_VARIANTS,
    WeightsError,
    model_key,
    optional_files,
    read_manifest,
    required_files,
    sha256_file,
    write_manifest,
)

SIZES = ("tiny", "real")
# Vocabulary sizes of the released dictionaries (genes plus special tokens).
GENEFORMER_VOCAB = {"v1": 25_426, "v2": 20_275, "v3": 20_275}
SCGPT_VOCAB = 60_697
# Published architectures (layers, hidden size, heads, feed-forward size) per variant.
GENEFORMER_ARCH = {
    "gf-6L-10M-i2048": (6, 256, 4, 512),
    "gf-12L-40M-i2048": (12, 512, 8, 1024),
    "gf-12L-40M-i2048-CZI-CellxGene": (12, 512, 8, 1024),
    "gf-12L-38M-i4096": (12, 512, 8, 1024),
    "gf-12L-38M-i4096-CLcancer": (12, 512, 8, 1024),
    "gf-20L-151M-i4096": (20, 896, 14, 1792),
    "gf-12L-104M-i4096": (12, 768, 12, 3072),
    "gf-12L-104M-i4096-CLcancer": (12, 768, 12, 3072),
    "gf-18L-316M-i4096": (18, 1152, 18, 4608),
}
TINY_GENEFORMER = (2, 32, 2, 64)
SCGPT_ARCH = {"real": dict(embsize=512, nheads=8, d_hid=512, nlayers=12, n_layers_cls=3),
              "tiny": dict(embsize=32, nheads=2, d_hid=64, nlayers=2, n_layers_cls=3)}


def _ordered_genes(biotypes: list[str]) -> pd.DataFrame:
    t = gencode()
    t = t[t["biotype"].isin(biotypes)].copy()
    t["order"] = t["biotype"].map({b: i for i, b in enumerate(biotypes)})
    return t.sort_values(["order", "ensembl_id"])


def geneformer_genes(version: str) -> list[str]:
    """Ensembl ids of a generated Geneformer vocabulary: protein-coding, miRNA (then lncRNA for v1)."""
    specials = 2 if version == "v1" else 4
    biotypes = ["protein_coding", "miRNA", "lncRNA"]
    return _ordered_genes(biotypes)["ensembl_id"].tolist()[: GENEFORMER_VOCAB[version] - specials]


def scgpt_genes() -> list[str]:
    t = _ordered_genes(["protein_coding", "lncRNA", "miRNA", "snRNA", "misc_RNA", "processed_pseudogene",
                        "unprocessed_pseudogene", "transcribed_unprocessed_pseudogene", "snoRNA"])
    return t.drop_duplicates("symbol")["symbol"].tolist()[: SCGPT_VOCAB - 3]


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _geneformer_dictionaries(folder: Path, version: str, rng: np.random.Generator) -> None:
    genes = geneformer_genes(version)
    specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if version != "v1" else [])
    tokens = {tok: i for i, tok in enumerate(specials + genes)}
    medians = rng.lognormal(mean=0.0, sigma=0.8, size=len(genes)).round(6)
    _write_json(folder / "token_dictionary.json", tokens)
    _write_json(folder / "gene_median_dictionary.json", dict(zip(genes, medians.tolist(), strict=True)))
    _write_json(folder / "ensembl_mapping_dict.json", {g: g for g in genes})


def _geneformer_model(folder: Path, variant: str, size: str, seed: int) -> dict:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    spec = GENEFORMER_VARIANTS[variant]
    layers, hidden, heads, ffn = GENEFORMER_ARCH[variant] if size == "real" else TINY_GENEFORMER
    config = BertConfig(
        vocab_size=GENEFORMER_VOCAB[str(spec["version"])], hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=ffn, hidden_act="relu", hidden_dropout_prob=0.02,
        attention_probs_dropout_prob=0.02, max_position_embeddings=int(spec["input_size"]),
        initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0, type_vocab_size=2,
        architectures=["BertForMaskedLM"],
    )
    torch.manual_seed(seed)
    model = BertForMaskedLM(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)  # config.json and model.safetensors
    if spec["file"] == "pytorch_model.bin":  # v1 was released as a plain torch state dict
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    torch.save({"generated_by": "helical-platform", "trained": False}, folder / "training_args.bin")
    return {"layers": layers, "hidden": hidden, "heads": heads, "intermediate": ffn,
            "vocab": config.vocab_size, "parameters": sum(p.numel() for p in model.parameters())}


def _scgpt_model(folder: Path, size: str, seed: int) -> dict:
    import torch

    from inference.helical_env import isolated

    with isolated():
        from helical.models.scgpt.model_dir import TransformerModel
    arch = SCGPT_ARCH[size]
    vocab = {g: i for i, g in enumerate(scgpt_genes() + ["<pad>", "<cls>", "<eoc>"])}
    torch.manual_seed(seed)
    model = TransformerModel(
        ntoken=len(vocab), d_model=arch["embsize"], nhead=arch["nheads"], d_hid=arch["d_hid"],
        nlayers=arch["nlayers"], nlayers_cls=arch["n_layers_cls"], n_cls=1, vocab=vocab, dropout=0.2,
        pad_token="<pad>", pad_value=-2, do_mvc=True, do_dab=False, use_batch_labels=False,
        domain_spec_batchnorm=False, explicit_zero_prob=False, pre_norm=False,
    )
    # The released checkpoint was trained with flash-attention, whose fused projection is named Wqkv;
    # helical renames it to PyTorch's in_proj_ when loading. Write it the released way.
    state = {k.replace("self_attn.in_proj_", "self_attn.Wqkv."): v.contiguous()
             for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "vocab.json", vocab)
    torch.save(state, folder / "best_model.pt")
    _write_json(folder / "args.json", {**arch, "dropout": 0.2, "pad_token": "<pad>", "pad_value": -2,
                                       "generated_by": "helical-platform", "trained": False})
    return {**arch, "vocab": len(vocab), "parameters": sum(p.numel() for p in model.parameters())}


def generate(root: Path, size: str = "tiny", geneformer_variants: list[str] | None = None,
             scgpt: bool = True, seed: int = 0, uce: bool = False, nicheformer: bool = False,
             transcriptformer: bool = False) -> list[str]:
    """Write untrained checkpoints for the given models under ``root``; returns the model keys written.
    UCE (``uce``: its 4-layer release's layout, ``inference/checkpoints_uce.py``) only when asked: loading it
    takes about 4 GB, whatever its size, as helical allocates the release's token table. Nicheformer
    (``nicheformer``: ``inference/checkpoints_nicheformer.py``) and TranscriptFormer (``transcriptformer``: its
    ``tf_sapiens`` layout, ``inference/checkpoints_transcriptformer.py``) only when asked, like UCE."""
    if size not in SIZES:
        raise WeightsError(f"Unknown size {size!r}: choose tiny or real.")
    variants = list(geneformer_variants if geneformer_variants is not None else ["gf-6L-10M-i2048"])
    for v in variants:
        if v not in GENEFORMER_VARIANTS:
            raise WeightsError(f"Unknown Geneformer variant {v!r}; choose from {', '.join(GENEFORMER_VARIANTS)}.")
    root = Path(root)
    manifest = read_manifest(root)
    written = []
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix=".generate-", dir=_ensure(root)) as tmp:
        staging = Path(tmp)
        for version in sorted({str(GENEFORMER_VARIANTS[v]["version"]) for v in variants}):
            _geneformer_dictionaries(staging / "geneformer" / version, version, rng)
        entries = []
        for v in variants:
            version = GENEFORMER_VARIANTS[v]["version"]
            arch = _geneformer_model(staging / "geneformer" / str(version) / v, v, size, seed)
            entries.append(("geneformer", v, arch))
        if scgpt:
            entries.append(("scgpt", SCGPT_VARIANT, _scgpt_model(staging / "scgpt" / "scGPT_CP", size, seed)))
        if uce:
            from inference.checkpoints_uce import write_uce

            layers = UCE_VARIANTS[DEFAULT_UCE]["layers"]
            entries.append(("uce", DEFAULT_UCE, write_uce(staging / "uce", DEFAULT_UCE, size, layers, seed)))
        if nicheformer:
            from inference.checkpoints_nicheformer import write_nicheformer

            entries.append(("nicheformer", NICHEFORMER_VARIANT,
                            write_nicheformer(staging / "nicheformer", size, seed)))
        if transcriptformer:
            from inference.checkpoints_transcriptformer import write_transcriptformer

            variant = next(iter(TRANSCRIPTFORMER_SPECIES))  # tf_sapiens: human only
            entries.append(("transcriptformer", variant, write_transcriptformer(
                staging / "transcriptformer" / variant, size, seed)))
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for backend, variant, arch in entries:
            rels = required_files(backend, variant) + optional_files(backend, variant)
            for rel in rels:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(staging / rel, root / rel)
                manifest["files"][rel] = {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size}
            manifest["models"][model_key(backend, variant)] = {
                "trained": False, "size": size, "seed": seed, "generated_at": stamp, "architecture": arch,
                "note": "generated by helical-platform with random weights: untrained, its numbers mean nothing",
            }
            written.append(model_key(backend, variant))
    write_manifest(root, manifest)
    return written


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
