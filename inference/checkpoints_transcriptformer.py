"""Generated TranscriptFormer files in helical 3.1.4's exact layout (``transcriptformer/tf_sapiens/``), untrained.

What helical's ``TranscriptFormer`` reads from ``transcriptformer/<variant>/`` (its paths, ``model.py:75-97``):

- ``config.json``: JSON merged into helical's config and handed to ``hydra.utils.instantiate``; its ``_target_``
  names the class built. Ours names helical's own ``Transcriptformer``; the backend refuses any other target
  before helical reads the file (``inference/backends/transcriptformer.py``).
- ``model_weights.pt``: the state dict, read by ``torch.load(weights_only=True)`` and a strict
  ``load_state_dict``; written here from helical's own class, randomly initialised.
- ``vocabs/assay_vocab.json``: assay name -> token (``unknown`` is the padding token).
- ``vocabs/homo_sapiens_gene.h5``: the ESM-2 protein embedding of every gene (``keys`` + ``arrays/<id>``); the
  gene vocabulary is the special tokens followed by these ids in file order. Random vectors here.

The gene list is the release's size (23,829 tokens less the 7 special ones), human Ensembl ids of the shipped
GENCODE table, protein-coding first, then lncRNA. ``real`` is helical's default architecture (``ModelConfig``:
12 layers, 16 heads, width 2,048, 2,047 genes + 1 assay token per cell) with 2,560-d gene vectors (the
release's 61 M frozen parameters over its 23,829 tokens); ``tiny`` keeps the vocabulary and the context and
shrinks everything else.
"""

from __future__ import annotations

import json
from pathlib import Path

from inference.genes import gencode

SPECIAL_TOKENS = ["unknown", "[PAD]", "[START]", "[END]", "[RD]", "[CELL]", "[MASK]"]  # helical's NON_GENE_TOKENS
RELEASE_TOKENS = 23_829  # tf_sapiens' vocabulary (its model card)
ASSAYS = ["unknown", "10x 3' v1", "10x 3' v2", "10x 3' v3", "10x 5' v1", "10x 5' v2", "Smart-seq2", "Drop-seq",
          "Seq-Well", "inDrop"]
TARGET = "helical.models.transcriptformer.model_dir.model.Transcriptformer"
# (layers, heads, model_dim, embed_dim, gene vector size, gene head hidden size)
ARCH = {"real": (12, 16, 2048, 2048, 2560, 2048), "tiny": (2, 2, 64, 32, 32, 16)}
SEQ_LEN, AUX_LEN, BLOCK_LEN = 2047, 1, 128  # helical's ModelConfig defaults: (seq_len + aux_len) % block_len == 0


def transcriptformer_genes() -> list[str]:
    """Human Ensembl ids of the generated vocabulary, in the order of the gene table (its token order)."""
    t = gencode()
    order = {"protein_coding": 0, "lncRNA": 1}
    t = t[t["biotype"].isin(order)].assign(order=lambda d: d["biotype"].map(order))
    genes = t.sort_values(["order", "ensembl_id"])["ensembl_id"].drop_duplicates().tolist()
    return genes[: RELEASE_TOKENS - len(SPECIAL_TOKENS)]


def transcriptformer_config(size: str) -> dict:
    """config.json as helical's loader wants it: the model's ``_target_`` and its four sub-configurations."""
    layers, heads, model_dim, embed_dim, _, head_dim = ARCH[size]
    return {"generated_by": "helical-platform", "trained": False, "model": {
        "_target_": TARGET,
        "data_config": {"pin_memory": False, "aux_cols": "assay", "gene_col_name": "ensembl_id", "clip_counts": 30,
                        "filter_to_vocabs": True, "filter_outliers": 0.0, "pad_zeros": True, "normalize_to_scale": 0,
                        "n_data_workers": 0, "sort_genes": False, "randomize_genes": False,
                        "min_expressed_genes": 0, "gene_pad_token": "[PAD]", "aux_pad_token": "unknown",
                        "esm2_mappings": ["homo_sapiens_gene.h5"], "special_tokens": SPECIAL_TOKENS},
        "model_config": {"log_counts_eps": 1e-6, "num_heads": heads, "num_layers": layers, "model_dim": model_dim,
                         "embed_dim": embed_dim, "dropout": 0.0, "activation": "gelu", "attn_bias": False,
                         "fw_bias": False, "mu_link_fn": "softmax", "softcap": 10, "seq_len": SEQ_LEN,
                         "aux_len": AUX_LEN, "block_len": BLOCK_LEN, "gene_head_hidden_dim": head_dim},
        "loss_config": {"gene_id_loss_weight": 1.0, "softplus_approx": True},
        "inference_config": {"output_keys": ["llh"], "batch_size": 8, "obs_keys": ["all"], "data_files": [None],
                             "load_checkpoint": None, "output_path": None, "precision": "32"},
    }}


def write_transcriptformer(folder: Path, size: str, seed: int) -> dict:
    """Write the four files of ``tf_sapiens`` into ``folder`` (``<root>/transcriptformer/tf_sapiens``) with
    helical's own class; returns the architecture recorded."""
    import h5py
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from inference.helical_env import isolated

    layers, heads, model_dim, embed_dim, gene_dim, head_dim = ARCH[size]
    genes = transcriptformer_genes()
    vocabs = folder / "vocabs"
    vocabs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(genes), gene_dim)).astype(np.float32)
    with h5py.File(vocabs / "homo_sapiens_gene.h5", "w") as f:
        f.create_dataset("keys", data=np.array(genes, dtype="S"))
        arrays = f.create_group("arrays")
        for gene, row in zip(genes, vectors, strict=True):
            arrays.create_dataset(gene, data=row)
    (vocabs / "assay_vocab.json").write_text(json.dumps({a: i for i, a in enumerate(ASSAYS)}))
    config = transcriptformer_config(size)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    with isolated():
        from helical.models.transcriptformer.tokenizer.vocab import load_vocabs_and_embeddings
        from hydra.utils import instantiate

        cfg = OmegaConf.create(config)
        cfg.model.data_config.aux_vocab_path = str(vocabs)
        cfg.model.data_config.esm2_mappings_path = str(vocabs)
        (gene_vocab, aux_vocab), matrix = load_vocabs_and_embeddings(cfg)
        torch.manual_seed(seed)
        model = instantiate(cfg.model, gene_vocab_dict=gene_vocab, aux_vocab_dict=aux_vocab, emb_matrix=matrix,
                            emb_mode="cell")
    torch.save(model.state_dict(), folder / "model_weights.pt")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"num_layers": layers, "num_heads": heads, "model_dim": model_dim, "embed_dim": embed_dim,
            "gene_vector": gene_dim, "gene_head_hidden_dim": head_dim, "seq_len": SEQ_LEN, "aux_len": AUX_LEN,
            "genes": len(genes), "trainable_parameters": trainable}
