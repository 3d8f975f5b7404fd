import pytest

from genforge.errors import UserError
from genforge.methods import get_method
from genforge.methods.gan import GANConfig
from genforge.training.config import apply_overrides, list_presets, read_raw, validate


def test_every_preset_validates():
    names = list_presets()
    assert {"quickstart", "mnist-dcgan", "mnist-cgan", "cifar10-dcgan"} <= set(names)
    for name, desc in names.items():
        raw = read_raw(name)
        cfg = validate(raw)
        get_method(cfg.family).Config.model_validate(cfg.model)
        assert desc, f"preset {name} has no description"


def test_override_parses_values_as_yaml():
    raw = apply_overrides(read_raw("mnist-dcgan"), ["train.lr=1e-3", "train.mixed_precision=no", "model.conditional=true"], GANConfig)
    cfg = validate(raw)
    assert cfg.train.lr == 1e-3 and cfg.train.mixed_precision == "no" and cfg.model["conditional"] is True


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UserError) as e:
        apply_overrides(read_raw("mnist-dcgan"), ["train.learning_rate=1"], GANConfig)
    assert "train.learning_rate" in str(e.value) and "lr" in str(e.value) and "batch_size" in str(e.value)
    with pytest.raises(UserError, match="Valid keys at model: .*z_dim"):
        apply_overrides(read_raw("mnist-dcgan"), ["model.zdim=3"], GANConfig)


def test_unknown_key_in_yaml_file_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("family: gan\ntrain:\n  epochz: 3\n")
    with pytest.raises(UserError, match="Unknown config key 'train.epochz'.*epochs"):
        validate(read_raw(str(path)))


def test_bad_value_and_bad_preset():
    with pytest.raises(UserError, match="train.batch_size"):
        validate(apply_overrides({}, ["train.batch_size=0"]))
    with pytest.raises(UserError, match="Unknown preset 'mnist-dcgam'.*mnist-dcgan"):
        read_raw("mnist-dcgam")
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides({}, ["train.lr"])
