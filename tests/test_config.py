import pytest
import torch

from dashlib.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    from_dict,
    override,
    to_dict,
)
from dashlib.data import load_dataset
from dashlib.presets import PRESETS, get_preset


@pytest.mark.parametrize("make, field", [
    (lambda: ModelConfig(ch=0), "ch"),
    (lambda: ModelConfig(ch_mult=()), "ch_mult"),
    (lambda: ModelConfig(image_size=10, ch_mult=(1, 2, 2)), "image_size"),
    (lambda: ModelConfig(attn_resolutions=(3,)), "attn_resolutions"),
    (lambda: ModelConfig(ch=30, norm_groups=8), "norm_groups"),
    (lambda: ModelConfig(null_init="ones"), "null_init"),
    (lambda: ModelConfig(ch="32"), "ch"),
    (lambda: ModelConfig(dropout=1.5), "dropout"),
    (lambda: TrainConfig(lr=-1e-3), "lr"),
    (lambda: TrainConfig(lr=float("nan")), "lr"),
    (lambda: get_preset("tiny", **{"train.weighting": "snr"}), "weighting"),
    (lambda: TrainConfig(label_dropout_mode="row"), "label_dropout_mode"),
    (lambda: TrainConfig(ema_decay=1.0), "ema_decay"),
    (lambda: SampleConfig(w=float("inf")), "w"),
    (lambda: get_preset("tiny", **{"sample.guidance": "cosine"}), "guidance"),
    (lambda: SampleConfig(eta=2.0), "eta"),
    (lambda: get_preset("tiny", **{"data.name": "imagenet"}), "name"),
    (lambda: get_preset("tiny", **{"sample.spacing": "cubic"}), "spacing"),
    (lambda: get_preset("tiny", **{"diffusion.schedule": "sqrt"}), "schedule"),
    (lambda: get_preset("tiny", **{"distill.method": "dasj"}), "method"),
    (lambda: get_preset("digits", **{"data.image_size": "abc"}), "image_size"),
    (lambda: get_preset("digits", **{"data.image_size": 0}), "image_size"),
])
def test_bad_values_name_the_field(make, field):
    with pytest.raises(ConfigError) as err:
        make()
    assert f".{field} = " in str(err.value)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown preset 'cifar'.*digits"):
        get_preset("cifar")


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ConfigError, match="choose one of:.*digits.*synthetic"):
        load_dataset(DataConfig(name="svhn"))


def test_unknown_override_field_is_refused():
    with pytest.raises(ConfigError, match="no field 'stepz'"):
        get_preset("tiny", **{"train.stepz": 3})


def test_override_and_roundtrip():
    p = get_preset("digits", **{"train.steps": 7, "sample.w": 2})
    assert p.train.steps == 7 and p.sample.w == 2.0
    assert from_dict(type(p), to_dict(p)) == p
    assert override(p, name="x").name == "x"


def test_lists_become_tuples():
    assert ModelConfig(ch_mult=[1, 2, 2]).ch_mult == (1, 2, 2)


def test_a_guidance_grid_of_numbers_is_named_as_its_cells_are_and_repeats_are_refused():
    p = get_preset("tiny", **{"eval.guidance": [0, 3, 2.5, "tag"], "eval.sweep_guidance": [1.0, "4.0"]})
    assert p.eval.guidance == ("0", "3", "2.5", "tag") and p.eval.sweep_guidance == ("1", "4")
    # the text of a number is named as the number is, so a sweep and the tables' w are one cell
    from dashlib.pipeline import budget

    b = budget("tiny", overrides={"eval.sweep_guidance": ["0", "3.0", "tag"], "sample.guidance": "constant",
                                  "sample.w": 3}, threads=torch.get_num_threads())  # threads unchanged
    assert b.sweep_guidance == ("0", "3", "tag")
    for repeated in (["3", "3.0"], [3, "3"], ["tag", "tag"]):
        with pytest.raises(ConfigError, match="must not repeat a guidance setting"):
            get_preset("tiny", **{"eval.guidance": repeated})
    with pytest.raises(ConfigError, match="tuple\\[str"):
        get_preset("tiny", **{"eval.guidance": [True]})


def test_every_preset_is_valid_and_consistent():
    """Each registered preset passes `presets.check` (registry names, its method's own
    knobs, a student smaller than the teacher), is already fitted to its data, and samples
    within its diffusion's T."""
    from dashlib.presets import fit_to_data
    from dashlib.unet import param_count

    for name in PRESETS:
        p = get_preset(name)  # runs `check`, which PRESETS.get skips
        assert p == PRESETS.get(name)
        assert param_count(p.student) < param_count(p.teacher), name
        assert fit_to_data(p) == p, name
        assert max(p.sample.steps, p.eval.ddim_steps, *p.eval.sweep_steps) <= p.diffusion.T, name


def test_checking_a_preset_leaves_the_global_rng_alone():
    """The student-smaller check builds both UNets (on the CPU, once per configuration
    pair); their initialisers must not move the RNG that dropout later draws from."""
    from dashlib.presets import get_preset

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    get_preset("tiny", **{"teacher.ch": 6})  # a pair no earlier test has checked
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("preset, size, attn", [("digits", 32, (16,)), ("digits", 12, (6,)),
                                                ("tiny", 16, (8,)), ("cifar10", 64, (32,))])
def test_data_image_size_alone_resizes_both_models_keeping_attention_depth(preset, size, attn):
    p = get_preset(preset, **{"data.image_size": size})
    for m in (p.teacher, p.student):
        assert m.image_size == size and m.attn_resolutions == attn
    assert get_preset(preset).teacher.image_size == get_preset(preset).data.image_size != size


def test_levels_given_with_a_new_size_are_checked_at_that_size():
    deep = [1, 2, 2, 2, 2]  # 5 levels: fits 64, not the preset's own 8
    p = get_preset("digits", **{"data.image_size": 64, "teacher.ch_mult": deep, "student.ch_mult": deep})
    assert p.teacher.ch_mult == tuple(deep) and p.teacher.image_size == 64
    assert p.teacher.attn_resolutions == (32,)
    with pytest.raises(ConfigError, match=r"does not fit the teacher's 5 resolution levels"):
        get_preset("digits", **{"data.image_size": 24, "teacher.ch_mult": deep})


def test_resized_models_train_and_sample_at_the_new_size():
    from dashlib.unet import build_unet

    p = get_preset("tiny", **{"data.image_size": 16})
    x = load_dataset(p.data).train.x[:2]
    assert x.shape[-1] == 16
    out = build_unet(p.student, 0)(x, torch.tensor([3, 50]), torch.tensor([0, 1]))
    assert out.shape == x.shape


def test_image_size_that_the_models_cannot_take_names_the_fix():
    with pytest.raises(ConfigError, match=r"data.image_size = 10 .* divisible by 4, e.g. 8 or 12"):
        get_preset("digits", **{"data.image_size": 10})
    # an explicit model size or attention is the user's: kept (and checked)
    with pytest.raises(ConfigError, match="must equal data.image_size"):
        get_preset("digits", **{"data.image_size": 16, "teacher.image_size": 8})
    p = get_preset("digits", **{"data.image_size": 16, "teacher.attn_resolutions": [16]})
    assert p.teacher.attn_resolutions == (16,) and p.student.attn_resolutions == (8,)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_the_cifar_presets_evaluate_as_the_paper_does(name):
    """docs/paper.md, Setup: 50K samples, three seeds, Inception FID against the training
    set (all 50,000 images), 50-step DDIM."""
    p = get_preset(name)
    assert (p.eval.n_samples, p.eval.seeds, p.eval.feature_extractor) == (50_000, (42, 123, 456), "inception")
    assert p.eval.max_reference == 50_000 and p.sample.steps == p.eval.ddim_steps == 50
    assert get_preset("digits").eval.max_reference == 10_000  # the CPU presets keep the default cap
