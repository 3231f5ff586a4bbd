"""Profiles as deltas over params.yaml (sdlab.profiles, `sdlab profile`): what DVC makes of
their overrides is what `compose` says, a typo is named, and a profile run as a DVC experiment
(`--temp`) leaves the workspace alone (the full tiny run is test_pipeline_e2e's fixture)."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from sdlab.config import ConfigError, load_params, parse_params
from sdlab.profiles import compose, leaves, load_profile

PROFILES = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", PROFILES)
def test_dvcs_own_overrides_turn_params_yaml_into_the_profile(name, tmp_path):
    """The `-S` arguments `sdlab profile` gives `dvc exp run`, applied by DVC's own override
    code to params.yaml, give the params `compose` gives (and that validate)."""
    from dvc.utils.hydra import apply_overrides

    delta, composed, params, overrides = load_profile(name, REPO)  # the arguments `sdlab profile` passes
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    base = yaml.safe_load(path.read_text())
    assert overrides[::2] == ["-S"] * len(leaves(delta, base))
    apply_overrides(path, overrides[1::2])
    assert load_params(path) == params == parse_params(composed)
    assert params != load_params(REPO / "params.yaml")  # the profile changes something


def test_a_profile_states_only_what_differs():
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in PROFILES:
        delta = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
        same = [key for key, value in leaves(delta, base) if _get(base, key) == value]
        assert not same, f"configs/{name}.yaml repeats params.yaml's {same}"


def _get(mapping: dict, dotted: str):
    for part in dotted.split("."):
        mapping = mapping[part]
    return mapping


def test_compose_merges_mappings_and_replaces_the_rest():
    base = {"a": {"x": 1, "y": [1, 2], "z": None}, "b": 2}
    assert compose(base, {"a": {"y": [3], "z": {"k": 1}}}) == {"a": {"x": 1, "y": [3], "z": {"k": 1}}, "b": 2}
    assert base == {"a": {"x": 1, "y": [1, 2], "z": None}, "b": 2}  # not modified


def test_a_misspelt_key_is_named_with_its_file(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "configs" / "typo.yaml").write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: train.learning_rate: params.yaml has no such key"):
        load_profile("typo", tmp_path)
    with pytest.raises(ConfigError, match=r"profile nope: .*nope.yaml not found \(profiles: typo\)"):
        load_profile("nope", tmp_path)


def test_sdlab_profile_prints_the_experiment_it_runs_and_refuses_a_bad_profile():
    dry = subprocess.run(
        [sys.executable, "-m", "sdlab.cli", "profile", "noto", "--dry-run"], capture_output=True, text=True, cwd=REPO
    )
    assert dry.returncode == 0, dry.stderr
    assert shlex.split(dry.stdout) == [
        *("dvc", "exp", "run", "--temp", "-n", "noto"),
        *("-S", "scrape.source='emoji_sets'", "-S", "scrape.emoji_sets.vendors=['noto']"),
        *("-S", "scrape.emoji_sets.skin_tones=true", "-S", "caption.template='{name} emoji'"),
        *("-S", "vae.latent_channels=8", "-S", "vae.steps=1200"),
        *("-S", "train.transformer.patch_size=1", "-S", "train.lr=0.001", "-S", "train.snr_gamma=null"),
        *("-S", "evaluate.num_samples=128"),
    ]
    bad = subprocess.run(
        [sys.executable, "-m", "sdlab.cli", "profile", "nope"], capture_output=True, text=True, cwd=REPO
    )
    assert bad.returncode == 2 and "configs/nope.yaml not found" in bad.stderr and "Traceback" not in bad.stderr


def test_a_profile_runs_as_an_experiment_outside_the_workspace(tmp_path):
    """`sdlab profile tiny filter` in a fresh clone: the stages run in DVC's temporary copy, the
    workspace and every tracked file stay as they were, `dvc exp show` lists the profile's values
    and the stage's metrics."""
    import json

    from conftest import dvc, project_copy, sdlab_in

    work = project_copy(tmp_path / "sdlab", (REPO / "params.yaml").read_text())
    result = sdlab_in(work, "profile", "tiny", "filter")
    assert "Running stage 'filter'" in result.stdout and "Running stage 'download'" not in result.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=work, capture_output=True, text=True)
    assert status.stdout == "" and not (work / "data").exists()
    shown = json.loads(dvc(work, "exp", "show", "--json").stdout)
    [exp] = [rev for row in shown for exp in row.get("experiments") or [] for rev in exp["revs"]]
    assert exp["name"] == "tiny"
    params = exp["data"]["params"]["params.yaml"]["data"]
    assert params["scrape"]["synthetic"]["num_images"] == 160 and params["train"]["max_steps"] == 20
    assert exp["data"]["metrics"]["reports/filter/stats.json"]["data"]["kept"] == 160
