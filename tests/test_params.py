from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from advmix.cli import app
from advmix.params import ParamsError, load_params, parse_params


def write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_committed_params_load():
    p = load_params(Path(__file__).parents[1] / "params.yaml")
    assert p.data.name == "synthfaces" and 0.5 < p.data.rho < 1


def test_unknown_key_names_dotted_path(tmp_path):
    with pytest.raises(ParamsError, match=r"data\.sizes\.trian: unknown key"):
        load_params(write(tmp_path, {"data": {"sizes": {"trian": 10}}}))


def test_wrong_type_names_key_and_expectation(tmp_path):
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, {"data": {"rho": "high"}, "seed": 1.5}))
    msg = str(err.value)
    assert "data.rho: input should be a valid number" in msg
    assert "seed: input should be a valid integer" in msg
    assert str(tmp_path / "params.yaml") in msg


def test_value_constraints():
    with pytest.raises(ParamsError, match=r"data\.resolution: value error, expected a power of two"):
        parse_params({"data": {"resolution": 48}})
    with pytest.raises(ParamsError, match=r"data\.rho"):
        parse_params({"data": {"rho": 1.5}})
    with pytest.raises(ParamsError, match=r"data\.name"):
        parse_params({"data": {"name": "imagenet"}})
    with pytest.raises(ParamsError, match=r"seed: input should be greater than or equal to 0, got -1"):
        parse_params({"seed": -1})  # numpy's generators refuse a negative seed: say so before any stage runs
    with pytest.raises(ParamsError, match=r"train\.seeds\.1: input should be greater than or equal to 0"):
        parse_params({"train": {"seeds": [0, -2]}})


def test_overrides_apply_dotted_keys(tmp_path):
    p = load_params(write(tmp_path, {}), {"data.rho": 0.8, "data.sizes.train": 100})
    assert p.data.rho == 0.8 and p.data.sizes.train == 100


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_cli_params_prints_resolved_and_fails_cleanly(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["params", "-p", str(write(tmp_path, {"seed": 3}))])
    assert ok.exit_code == 0
    resolved = yaml.safe_load(ok.stdout)
    assert resolved["seed"] == 3 and resolved["validate"]["rho_tolerance"] == 0.02
    bad = runner.invoke(app, ["params", "-p", str(write(tmp_path, {"data": {"colour": 1}}))])
    assert bad.exit_code == 2
    assert "data.colour: unknown key" in bad.output


def test_params_yaml_holds_every_key_with_the_schema_default():
    """The committed params.yaml spells every key of the schema, each at its default: a missing key would still
    parse (the schema fills it in) but DVC reads declared keys from the file itself."""
    from pathlib import Path

    import yaml

    from advmix.params import Params

    def flat(tree, prefix=""):
        out = {}
        for k, v in tree.items():
            out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k: v}
        return out

    raw = flat(yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text()))
    defaults = flat(Params().model_dump(mode="json", by_alias=True))
    assert sorted(set(defaults) - set(raw)) == [] and sorted(set(raw) - set(defaults)) == []
    assert {k: (v, raw[k]) for k, v in defaults.items() if raw[k] != v} == {}

