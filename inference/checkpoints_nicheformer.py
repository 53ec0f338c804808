"""Generated Nicheformer files in helical 3.1.4's exact layout (``nicheformer/``), untrained, for tests and benchmarks.

What helical reads from ``nicheformer/`` (nothing is unpickled; no remote code):

- ``config.json`` + ``model.safetensors``: ``NicheformerForMaskedLM.from_pretrained`` (helical's own classes),
  written here by ``save_pretrained`` of a randomly initialised model.
- ``vocab.json``: ``{"[PAD]": 1, "[MASK]": 0, "[CLS]": 2, <Ensembl id>: token}``. helical uses only its keys (the
  genes it keeps); the token a gene gets is 30 + its position in the tokenizer's outer join with the reference
  below, which anndata sorts. The values written are those positions, so the file says what the model sees.
- ``model.h5ad``: the reference AnnData whose var_names fix the genes' columns; one all-zero cell suffices.

The vocabulary is the release's size: 20,310 genes (``n_tokens`` 20,340 less the 30 auxiliary tokens), human
Ensembl ids of the shipped GENCODE table, protein-coding first, then lncRNA. ``tiny`` keeps the vocabulary and
the 1,500-token context (the tokenizer always pads to 1,500) and shrinks the encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

from inference.genes import gencode

AUX_TOKENS = 30  # helical's tokenizer: token = 30 + the gene's column in the reference
RELEASE_TOKENS = 20_340  # the release's n_tokens (helical's NicheformerConfig default)
CONTEXT = 1_500  # the tokenizer's max_length: every cell is padded to it
# (dim_model, nheads, dim_feedforward, nlayers): "real" is the release (helical's defaults, 49 M parameters with
# the vocabulary-sized head); "tiny" keeps the vocabulary and context so a test runs helical's tokenizer as is.
ARCH = {"real": (512, 16, 1024, 12), "tiny": (32, 2, 64, 2)}


def nicheformer_genes() -> list[str]:
    """Human Ensembl ids of the generated vocabulary, sorted (the order the tokenizer's outer join gives)."""
    t = gencode()
    order = {"protein_coding": 0, "lncRNA": 1}
    t = t[t["biotype"].isin(order)].assign(order=lambda d: d["biotype"].map(order))
    genes = t.sort_values(["order", "ensembl_id"])["ensembl_id"].drop_duplicates().tolist()
    return sorted(genes[: RELEASE_TOKENS - AUX_TOKENS])


def write_nicheformer(folder: Path, size: str, seed: int) -> dict:
    """Write the four files into ``folder`` (``<root>/nicheformer``); returns the architecture recorded."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    import torch

    from inference.helical_env import isolated

    with isolated():
        from helical.models.nicheformer.configuration_nicheformer import NicheformerConfig
        from helical.models.nicheformer.modeling_nicheformer import NicheformerForMaskedLM
    dim, heads, ffn, layers = ARCH[size]
    genes = nicheformer_genes()
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"[PAD]": 1, "[MASK]": 0, "[CLS]": 2} | {g: AUX_TOKENS + i for i, g in enumerate(genes)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    reference = ad.AnnData(X=sp.csr_matrix((1, len(genes)), dtype=np.float32),
                           obs=pd.DataFrame(index=["reference"]), var=pd.DataFrame(index=genes))
    reference.write_h5ad(folder / "model.h5ad")
    config = NicheformerConfig(dim_model=dim, nheads=heads, dim_feedforward=ffn, nlayers=layers,
                               n_tokens=RELEASE_TOKENS, context_length=CONTEXT, generated_by="helical-platform",
                               trained=False)
    torch.manual_seed(seed)
    model = NicheformerForMaskedLM(config).eval()
    model.save_pretrained(folder)  # config.json and model.safetensors
    return {"dim_model": dim, "nheads": heads, "dim_feedforward": ffn, "nlayers": layers,
            "n_tokens": RELEASE_TOKENS, "context_length": CONTEXT, "genes": len(genes),
            "parameters": sum(p.numel() for p in model.parameters())}
