import pytest
import yaml
from conftest import REPO, run_stage

from sdlab.config import ConfigError, JudgeSetting, judge_setting, load_params, parse_params


def test_every_param_a_stage_declares_is_in_params_yaml():
    """DVC refuses to run a stage whose declared params the params file lacks (profiles only
    lay values over params.yaml, so it is the one to check)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        for key in stage.get("params", []):
            value = raw
            for part in key.split("."):
                assert isinstance(value, dict) and part in value, f"stage {name} reads {key}"
                value = value[part]


def test_params_rewritten_by_dvc_exp_run_read_the_same(tmp_path):
    """`dvc exp run -S` rewrites params.yaml through DVC's own YAML 1.2 writer (`mixed_precision:
    no`, unquoted): every value must read back as it was, the overridden one changed."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    apply_overrides(path, ["train.lr=0.0002"])
    assert "mixed_precision: no " in path.read_text()
    rewritten, original = load_params(path), load_params(REPO / "params.yaml")
    assert rewritten.train.lr == 0.0002 and rewritten.train.mixed_precision == "no"
    assert rewritten.model_copy(update={"train": original.train}) == original
    assert rewritten.train.model_copy(update={"lr": original.train.lr}) == original.train


def test_bad_value_names_the_key_and_the_value():
    with pytest.raises(ConfigError, match=r"train\.lr: must be > 0, got -1"):
        parse_params({"train": {"lr": -1}})


def test_unknown_key_is_rejected_with_its_dotted_name():
    with pytest.raises(ConfigError, match=r"train\.unet\.widht: unknown key"):
        parse_params({"train": {"unet": {"widht": 3}}})


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.max_steps: .*got 'many'"):
        parse_params({"train": {"max_steps": "many"}})


def test_bad_choice_names_the_key():
    with pytest.raises(ConfigError, match=r"scrape\.source"):
        parse_params({"scrape": {"source": "myspace"}})


def test_the_attribute_judge_is_asked_for_only_where_the_attributes_exist():
    with pytest.raises(
        ConfigError,
        match="evaluate.judge: blob_attributes judges the synthetic source's attributes, but scrape.source is noto",
    ):
        parse_params({"scrape": {"source": "noto"}, "evaluate": {"judge": "blob_attributes"}})
    assert parse_params({"scrape": {"source": "noto"}, "evaluate": {"judge": None}}).evaluate.judge is None


def test_judge_auto_follows_the_source_so_switching_source_needs_no_second_edit():
    def judged(source, **evaluate):
        scrape = {"source": source, "folder": {"path": "images"}, "laion": {"metadata": "m.parquet"}}
        params = parse_params({"scrape": scrape, "evaluate": evaluate})
        return judge_setting(params.scrape.source, params.evaluate)

    assert parse_params({}).evaluate.judge == "auto"
    assert judged("synthetic") == JudgeSetting("blob_attributes", [], None)
    assert judged("emoji_sets") == JudgeSetting("labels", ["category", "subcategory", "style"], "concept")
    assert judged("folder") == JudgeSetting("labels", ["tag"], None)
    assert judged("noto").kind is None and judged("laion").kind is None and judged("discord").kind is None
    assert judged("emoji_sets", label_columns=["style"]).label_columns == ["style"]  # a set value wins
    assert judged("synthetic", judge=None).kind is None  # as does an explicit judge


def test_inconsistent_unet_levels_are_rejected():
    with pytest.raises(ConfigError, match=r"train\.unet.*cross_attention_levels"):
        parse_params({"train": {"unet": {"block_out_channels": [8, 16, 32]}}})


def test_stage_exits_non_zero_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  lr: -1\n")
    result = run_stage("filter.py", "--params", str(bad), "--records", "x", "--out", "y", "--report", "z")
    assert result.returncode == 1
    assert "train.lr: must be > 0, got -1" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_yaml_names_every_value_with_the_schemas_default():
    """One home for every value: a key a stage reads but params.yaml lacks is invisible to
    `dvc params diff` / `dvc exp show`, and a default that differs from params.yaml is a
    second truth. The schema keeps types, bounds and cross-checks."""
    from sdlab.config import Params

    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())

    def leaves(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            name = f"{prefix}{key}"
            out.update(leaves(value, name + ".") if isinstance(value, dict) and value else {name: value})
        return out

    schema, params = leaves(Params().model_dump(mode="json")), leaves(on_disk)
    assert sorted(set(schema) - set(params)) == [], "read by stages, missing from params.yaml"
    assert sorted(set(params) - set(schema)) == [], "in params.yaml, unknown to the schema"
    assert {k: (schema[k], params[k]) for k in schema if schema[k] != params[k]} == {}
