"""Generated UCE files in helical 3.1.4's exact layout (``uce/``), untrained, for tests and benchmarks.

What helical reads (all relative to the weights file's folder, loaded with ``torch.load(weights_only=True)``,
``json.load`` or ``pandas.read_csv``: nothing is unpickled):

- ``<variant>.torch``: the model's state dict, loaded strictly; it must hold ``pe_embedding.weight`` of the
  release's shape (145,469 × 5,120) whatever the token size, which helical then replaces by the token table
  below (any row count but the release's 143,574 or 145,469). Written as a stride-0 view: one float on disk.
- ``all_tokens.torch``: the token table [4 special rows | one per gene | one per chromosome].
- ``protein_embeddings/Homo_sapiens…ESM2.pt``: {gene symbol: vector}; helical uses only its keys, in order (a
  gene's token row = the human offset + its position).
- ``species_offsets.json`` ({"human": 4}) and ``species_chrom.csv`` (species, chromosome, start, upper-case symbol).
- ``args.json`` (ours, not helical's): the generated architecture, which the backend passes to ``UCEConfig``
  (the releases use helical's defaults and have none).

The vocabulary is every human protein-coding gene of the shipped GENCODE table. That table has no coordinates, so
each gene's chromosome and start are made up from a hash of its symbol: UCE orders a cell's genes by them, and
they are as untrained as the weights.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from inference.genes import gencode
from inference.weights import UCE_PROTEIN_EMBEDDINGS

SPECIALS = 4  # pad, chromosome open (unused by helical), chromosome close, CLS: helical's default token indices
RELEASE_TABLE = (145_469, 5_120)  # the shape helical's load_model allocates for pe_embedding
RELEASE_ROWS = (143_574, 145_469)  # row counts that send helical down the real release's path
CHROMOSOMES = [str(i) for i in range(1, 23)] + ["X", "Y"]
# (token_dim, d_hid, layers, sample_size, pad_length): "real" is the 4-layer release's architecture (d_model 1280
# and 20 heads are fixed in helical); "tiny" keeps d_model and shrinks the rest, and samples 128 genes per cell
# instead of 1,024 so that a test embeds a few cells in seconds.
ARCH = {"real": (5120, 5120, None, 1024, 1536), "tiny": (16, 64, 2, 128, 256)}


def uce_genes() -> list[str]:
    """Upper-case symbols of the human protein-coding genes, unique, in a stable order."""
    t = gencode()
    symbols = t.loc[t["biotype"] == "protein_coding", "symbol"].astype(str).str.upper()
    return sorted(set(s for s in symbols if s and s != "NAN"))


def write_uce(folder: Path, variant: str, size: str, layers: int, seed: int) -> dict:
    """Write the files of ``variant`` into ``folder`` (``<root>/uce``); returns the architecture recorded."""
    import pandas as pd
    import torch

    from inference.helical_env import isolated

    with isolated():
        from helical.models.uce.uce_model import TransformerModel
    token_dim, d_hid, tiny_layers, sample_size, pad_length = ARCH[size]
    layers = tiny_layers or layers
    genes = uce_genes()
    generator = torch.Generator().manual_seed(seed)
    (folder / "protein_embeddings").mkdir(parents=True, exist_ok=True)
    # only the keys are read: one shared zero-size tensor keeps the file small
    empty = torch.zeros(0)
    torch.save({g: empty for g in genes}, folder.parent / UCE_PROTEIN_EMBEDDINGS)
    (folder / "species_offsets.json").write_text(json.dumps({"human": SPECIALS}))
    chrom = [CHROMOSOMES[zlib.crc32(g.encode()) % len(CHROMOSOMES)] for g in genes]
    start = [zlib.crc32(b"start:" + g.encode()) % 250_000_000 for g in genes]
    table = pd.DataFrame({"species": "human", "chromosome": chrom, "start": start, "gene_symbol": genes})
    table.to_csv(folder / "species_chrom.csv", index=False)
    chromosome_tokens = pd.Categorical(table["species"] + "_" + table["chromosome"]).categories.size
    rows = SPECIALS + len(genes) + chromosome_tokens
    if rows in RELEASE_ROWS:
        raise ValueError(f"{rows} token rows would be taken for the release's table")
    torch.save(torch.randn(rows, token_dim, generator=generator), folder / "all_tokens.torch")
    torch.manual_seed(seed)
    model = TransformerModel(token_dim=token_dim, d_model=1280, nhead=20, d_hid=d_hid, nlayers=layers,
                             output_dim=1280, dropout=0.05)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["pe_embedding.weight"] = torch.zeros(1, 1).expand(*RELEASE_TABLE)
    torch.save(state, folder / f"{variant}.torch")
    arch = {"token_dim": token_dim, "d_hid": d_hid, "n_layers": layers, "output_dim": 1280,
            "CHROM_TOKEN_OFFSET": SPECIALS + len(genes), "sample_size": sample_size, "pad_length": pad_length}
    (folder / "args.json").write_text(json.dumps({**arch, "generated_by": "helical-platform", "trained": False}))
    return {**arch, "genes": len(genes), "parameters": sum(p.numel() for n, p in model.named_parameters()
                                                           if n != "pe_embedding.weight")}
