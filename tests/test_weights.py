"""Weights: helical's exact layout, staging with checksums, and a clear message for every way they go wrong."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from inference.backends import create_backend
from inference.helical_env import isolated
from inference.weights import (
    GENEFORMER_VARIANTS,
    WeightsError,
    WeightsLocations,
    read_manifest,
    required_files,
)
from inference.weights_stage import stage, verify
from tests.conftest import TINY_VARIANTS


def test_our_layout_is_helicals_own_download_list():
    with isolated():
        from helical.models.geneformer import GeneformerConfig
        from helical.models.scgpt import scGPTConfig

        offered = GeneformerConfig.__init__.__annotations__["model_name"].__args__
        for variant in offered:
            cfg = GeneformerConfig(model_name=variant)
            name = cfg.config["model_name"]  # old names map to new ones
            assert name in GENEFORMER_VARIANTS
            assert sorted(required_files("geneformer", name)) == sorted(cfg.list_of_files_to_download)
            assert GENEFORMER_VARIANTS[name]["embsize"] == cfg.config["embsize"]
            assert GENEFORMER_VARIANTS[name]["input_size"] == cfg.config["input_size"]
        assert required_files("scgpt", "whole-human") == scGPTConfig().config["list_of_files_to_download"]
        from helical.models.uce import UCEConfig

        from inference.weights import UCE_VARIANTS

        for variant in UCE_VARIANTS:
            listed = UCEConfig(model_name=variant).config["list_of_files_to_download"]
            assert sorted(required_files("uce", variant)) == sorted(listed)
        from helical.constants.paths import CACHE_DIR_HELICAL
        from helical.models.nicheformer import NicheformerConfig

        from inference.weights import NICHEFORMER_VARIANT

        listed = [str(Path(path).relative_to(CACHE_DIR_HELICAL))
                  for path, _url in NicheformerConfig().list_of_files_to_download]
        assert sorted(required_files("nicheformer", NICHEFORMER_VARIANT)) == sorted(listed)


def test_generated_checkpoints_have_helicals_files_and_say_untrained(tiny_weights):
    manifest = read_manifest(tiny_weights)
    for variant in TINY_VARIANTS:
        for rel in required_files("geneformer", variant):
            assert (tiny_weights / rel).is_file(), rel
        assert manifest["models"][f"geneformer:{variant}"]["trained"] is False
    tokens = json.loads((tiny_weights / "geneformer/v2/token_dictionary.json").read_text())
    assert {"<pad>", "<mask>", "<cls>", "<eos>"} <= set(tokens)
    vocab = json.loads((tiny_weights / "scgpt/scGPT_CP/vocab.json").read_text())
    assert {"<pad>", "<cls>"} <= set(vocab) and len(vocab) == 60_697
    import torch

    state = torch.load(tiny_weights / "scgpt/scGPT_CP/best_model.pt", weights_only=True)
    assert any("Wqkv" in k for k in state)  # written as the released checkpoint names it
    loc = WeightsLocations(tiny_weights / "none", tiny_weights, tiny_weights / "none2")
    assert loc.status("geneformer", "gf-6L-10M-i2048")[0] == "generated"
    assert loc.resolve("scgpt", "whole-human").trained is False


def _staged_copy(tiny_weights: Path, tmp_path: Path) -> WeightsLocations:
    staged = tmp_path / "weights"
    stage(tiny_weights, staged, trained=False)
    return WeightsLocations(staged, tmp_path / "no-generated", tmp_path / "no-cache")


def test_staging_records_checksums_and_loading_uses_the_staged_copy(tiny_weights, tmp_path, no_network):
    loc = _staged_copy(tiny_weights, tmp_path)
    assert all(state == "ok" for _, state in verify(loc.staged))
    w = loc.resolve("geneformer", "gf-6L-10M-i2048")
    assert w.origin == "staged" and w.root == loc.staged and not w.trained
    backend = create_backend("geneformer", "gf-6L-10M-i2048", loc, device="cpu")
    backend.load()
    assert no_network == []
    assert all((loc.staged / rel).is_file() for rel in read_manifest(loc.staged)["files"])  # nothing deleted


def test_staging_an_archive(tiny_weights, tmp_path):
    archive = tmp_path / "helical-cache.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tiny_weights / "scgpt", arcname=".cache/helical/models/scgpt")
    staged = stage(archive, tmp_path / "weights")
    assert staged == {"scgpt": ["whole-human"]}


def test_a_missing_file_is_named_with_the_command_that_stages_it(tiny_weights, tmp_path):
    loc = _staged_copy(tiny_weights, tmp_path)
    (loc.staged / "geneformer/v1/token_dictionary.json").unlink()
    with pytest.raises(WeightsError) as err:
        loc.resolve("geneformer", "gf-6L-10M-i2048")
    assert "geneformer/v1/token_dictionary.json is missing" in str(err.value)
    assert "helical-platform weights stage" in str(err.value)


def test_a_corrupt_file_fails_its_checksum(tiny_weights, tmp_path):
    loc = _staged_copy(tiny_weights, tmp_path)
    target = loc.staged / "scgpt/scGPT_CP/best_model.pt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="does not match the checksum") as err:
        loc.resolve("scgpt", "whole-human")
    assert "best_model.pt" in str(err.value)
    assert ("scgpt/scGPT_CP/best_model.pt", "corrupt") in verify(loc.staged)
    assert target.exists()  # never deleted


def test_a_mismatched_scgpt_config_is_refused_not_loaded_partially(tiny_weights, tmp_path):
    loc = _staged_copy(tiny_weights, tmp_path)
    backend = create_backend("scgpt", None, loc, device="cpu", architecture={})  # helical defaults: 512 wide
    with pytest.raises(WeightsError, match=r"only \d+ of \d+ tensors of the encoder loaded"):
        backend.load()


def test_a_mismatched_geneformer_config_is_refused(tiny_weights, tmp_path):
    loc = _staged_copy(tiny_weights, tmp_path)
    config = loc.staged / "geneformer/v1/gf-6L-10M-i2048/config.json"
    cfg = json.loads(config.read_text())
    cfg["hidden_size"], cfg["intermediate_size"] = 64, 128
    config.write_text(json.dumps(cfg))
    stage(loc.staged, tmp_path / "weights2", trained=False)  # re-record checksums of the edited config
    backend = create_backend("geneformer", "gf-6L-10M-i2048",
                             WeightsLocations(tmp_path / "weights2", tmp_path / "x", tmp_path / "y"), device="cpu")
    with pytest.raises(WeightsError, match="Geneformer"):
        backend.load()


@pytest.mark.slow
def test_the_weights_command_line_end_to_end(tmp_path, capsys, monkeypatch):
    from tests.cli_inprocess import runner

    command = runner(capsys, monkeypatch, tmp_path / "home")  # the installed command first, then its main

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        done = command(*args)
        assert (done.returncode == 0) == ok, done.stdout + done.stderr
        return done

    listing = run("weights", "list", "--json")
    assert all(row["status"] == "missing" for row in json.loads(listing.stdout))
    run("weights", "generate", "--size", "tiny", "--out", str(tmp_path / "gen"))
    run("weights", "stage", str(tmp_path / "gen"), "--note", "test copy")
    rows = {(r["backend"], r["variant"]): r for r in json.loads(run("weights", "list", "--json").stdout)}
    assert rows[("geneformer", "gf-6L-10M-i2048")]["status"] == "generated"
    assert rows[("scgpt", "whole-human")]["status"] == "generated"
    assert "ok" in run("weights", "verify").stdout
    (tmp_path / "home/weights/scgpt/scGPT_CP/vocab.json").write_text("{}")
    failed = run("weights", "verify", ok=False)
    assert "corrupt" in failed.stdout and "weights stage" in failed.stderr
    info = run("info", "--json")
    models = {m["id"]: m for m in json.loads(info.stdout)["models"]}
    assert models["geneformer"]["weights_status"] == "generated"
