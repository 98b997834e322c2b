from pathlib import Path

import pytest
import yaml

from idc_ray.config import ConfigError, IDCConfig, apply_overrides, from_dict, load_preset, load_yaml, preset_names
from idc_ray.data import get_spec
from idc_ray.engine.plan import build_plan, check, effective_lr_img, resolve


def _resolve(cfg):
    """The dataset rules for a preset's registered dataset (the caller passes the spec it has)."""
    return resolve(cfg, get_spec(cfg.data.dataset))

# Settings sheet, "Per-dataset settings", one literal per cell: (model, metric, lr_img, n_data,
# factor, outer iters, expert lr, expert weight decay, batch_real, extra). Expert lr and weight
# decay: "SGD lr 0.01, momentum 0.9, weight decay 5e-4" (Algorithm 1) unless the row says
# otherwise (ImageNet-100: net lr 0.1, wd 1e-4; batch_real 128 in the corrections); speech's
# network lr 3e-4 is the paper's appendix C.1 (the sheet's row does not name one).
SHEET = {
    "cifar10": ("convnet3", "mse", 5e-3, 2000, 2, 2000, 0.01, 5e-4, 64, {}),
    "cifar100": ("convnet3", "mse", 5e-3, 2000, 2, 2000, 0.01, 5e-4, 64, {}),
    "svhn": ("convnet3", "mse", 5e-3, 500, 2, 2000, 0.01, 5e-4, 64, {}),
    "mnist": ("convnet3", "l1", 1e-4, 500, 2, 2000, 0.01, 5e-4, 64, {}),
    "fashion": ("convnet3", "l1", 1e-4, 500, 2, 2000, 0.01, 5e-4, 64, {}),
    "imagenet10": ("resnetap10", "l1", 3e-3, 500, 3, 500, 0.01, 5e-4, 64, {"expert.early": 10}),
    "imagenet100": ("resnetap10", "l1", 1e-3, 500, 3, 500, 0.1, 1e-4, 128,
                    {"expert.pt_from": 5, "expert.batch_size": 128}),
    "speech": ("convnet4", "l1", 3e-3, 500, 2, 1000, 3e-4, 5e-4, 64, {"synset.formation": "1d"}),
}


def _get(cfg, dotted):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", sorted(SHEET))
def test_presets_equal_the_settings_sheet(name):
    model, metric, lr_img, n_data, factor, outer, expert_lr, weight_decay, batch_real, extra = SHEET[name]
    cfg = load_preset(name)
    assert cfg.data.dataset == name
    assert (cfg.expert.model, cfg.match.metric, cfg.match.lr_img) == (model, metric, lr_img)
    assert (cfg.expert.n_data, cfg.synset.factor, cfg.schedule.outer_iters) == (n_data, factor, outer)
    assert (cfg.expert.lr, cfg.expert.weight_decay, cfg.match.batch_real) == (expert_lr, weight_decay, batch_real)
    # Defaults shared by every row.
    assert cfg.schedule.inner_iters == 100 and cfg.synset.batch_syn_max == 128 and cfg.expert.momentum == 0.9
    assert cfg.match.mom_img == 0.5 and cfg.match.momentum_mode == "shared"
    for key, value in extra.items():
        assert _get(cfg, key) == value


def test_every_shipped_preset_loads():
    names = preset_names()
    assert {"mnist5k-demo", "smoke", *SHEET} <= set(names)
    for name in names:
        assert isinstance(load_preset(name), IDCConfig)


def test_dataset_rules_resolve_like_the_published_code():
    mnist = _resolve(load_preset("mnist"))
    assert (mnist.match_aug, mnist.expert_cutmix_prob, mnist.eval_cutmix_prob) == ("color_crop", 0.0, 0.0)
    assert mnist.init == "mix" and mnist.eval_augment == "color_crop_scale_rotate"  # misc/reproduce.py
    mnist_f1 = _resolve(apply_overrides(load_preset("mnist"), ["synset.factor=1"]))
    assert (mnist_f1.match_aug, mnist_f1.expert_cutmix_prob, mnist_f1.init) == ("color_crop_cutout", 0.5, "random")
    c10 = _resolve(load_preset("cifar10"))
    assert c10.match_aug == "color_crop_cutout" and c10.expert_aug == "color_crop"
    assert c10.eval_augment == "color_crop_flip_scale_rotate" and c10.eval_cutmix_prob == 0.5
    svhn1 = _resolve(apply_overrides(load_preset("svhn"), ["synset.ipc=1", "synset.factor=1"]))
    assert svhn1.eval_cutmix_prob == 0.0 and svhn1.eval_augment == "color_crop_cutout_scale_rotate"
    speech = _resolve(load_preset("speech"))
    assert (speech.match_aug, speech.expert_aug, speech.eval_augment) == ("none", "none", "none")
    inet = _resolve(load_preset("imagenet10"))
    assert inet.expert_cutmix_prob == 1.0 and inet.eval_epochs == 1000  # 90 formed per class
    assert _resolve(load_preset("imagenet100")).eval_epochs == 600  # int(2/3 * 1000) rounded down to 100s
    assert _resolve(load_preset("cifar10")).eval_epochs == 1000


def test_explicit_values_win_over_dataset_rules():
    cfg = apply_overrides(load_preset("mnist"), ["match.aug=color_crop_cutout", "expert.cutmix_prob=0.25"])
    r = _resolve(cfg)
    assert (r.match_aug, r.expert_cutmix_prob) == ("color_crop_cutout", 0.25)
    assert cfg.match.lr_img == 1e-4  # nominal value kept under its own name


def test_lr_img_scaling():
    assert effective_lr_img(5e-3, 10, 32, 32) == pytest.approx(5e-3)
    assert effective_lr_img(5e-3, 50, 32, 32) == pytest.approx(2.5e-2)
    assert effective_lr_img(3e-3, 10, 224, 224) == pytest.approx(3e-3)
    assert effective_lr_img(1e-3, 20, 64, 32) == pytest.approx(8e-3)
    assert _resolve(apply_overrides(load_preset("cifar10"), ["synset.ipc=50"])).lr_img_scaled == pytest.approx(2.5e-2)


@pytest.mark.parametrize(
    "override,message",
    [
        ("synset.ipc=0", "synset.ipc must be at least 1, got 0"),
        ("synset.factor=0", "synset.factor must be at least 1"),
        ("match.metric=l3", "match.metric 'l3' is unknown"),
        ("synset.ipx=3", "unknown key 'synset.ipx'"),
        ("foo.bar=1", "unknown key 'foo'"),
        ("synset.ipc=ten", "'synset.ipc' must be an integer"),
        ("match.bias=maybe", "'match.bias' must be true or false"),
    ],
)
def test_bad_values_give_one_clear_line(override, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(load_preset("cifar10"), [override])
    text = str(info.value)
    assert message in text and "\n" not in text


@pytest.mark.parametrize(
    "override,message",
    [
        ("synset.factor=40", "larger than the image side 32"),
        ("expert.model=vgg11", "unknown model"),
        ("eval.models=[convnet3,lenet]", "unknown model"),
        ("match.aug=color_warp", "match.aug"),
        ("synset.formation=zoom", "synset.formation 'zoom' is unknown"),
        ("expert.norm=layer", "expert.norm 'layer' is unknown"),
    ],
)
def test_values_impossible_for_the_dataset_engine_or_models_are_refused_by_the_plan(override, message):
    """The config is a leaf: these need the dataset spec, the engine's formations or the model
    registry, so check (called by build_plan at the start of every run) refuses them."""
    cfg = apply_overrides(load_preset("cifar10"), [override])  # the config alone cannot tell
    with pytest.raises(ConfigError) as info:
        build_plan(cfg, get_spec("cifar10"))
    text = str(info.value)
    assert message in text and "\n" not in text
    with pytest.raises(ConfigError):
        check(cfg, get_spec("cifar10"))


def test_override_needs_equals_sign():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(load_preset("smoke"), ["synset.ipc"])


def test_yaml_round_trip(tmp_path: Path):
    cfg = apply_overrides(load_preset("cifar10"), ["synset.ipc=50", "eval.models=[convnet3,resnet10]"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_yaml(path) == cfg
    assert from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_bad_yaml_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("synset: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("synset: {ipc: 2, colour: red}\n")
    with pytest.raises(ConfigError, match="unknown key 'synset.colour'"):
        load_yaml(unknown)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'cifar11'"):
        load_preset("cifar11")


# Effective lr_img = lr_img * (ipc / 10) * (size / base)^2, base 28 only for MNIST (and mnist5k,
# tiny), 32 for FashionMNIST as for CIFAR/SVHN (published argument.py), 64 speech, 224 ImageNet.
EFFECTIVE_LR_IMG = {
    "cifar10": 5e-3, "cifar100": 5e-3, "svhn": 5e-3, "mnist": 1e-4,
    "fashion": 1e-4 * (28 / 32) ** 2,  # 7.66e-5 at ipc 10
    "imagenet10": 3e-3, "imagenet100": 1e-3, "speech": 3e-3,
    "mnist5k-demo": 1e-2 * 0.1, "smoke": 1e-2 * 0.1,  # ipc 1
}


def test_effective_lr_img_of_every_preset():
    assert set(EFFECTIVE_LR_IMG) == set(preset_names())
    got = {name: _resolve(load_preset(name)).lr_img_scaled for name in preset_names()}
    assert got == pytest.approx(EFFECTIVE_LR_IMG, rel=1e-12)
    assert f"{got['fashion']:.3g}" == "7.66e-05"


@pytest.mark.parametrize("preset,overrides,formation", [
    ("imagenet10", ["synset.ipc=20"], "bounded"),  # factor 3, ipc 20: switched on (misc/reproduce.py)
    ("imagenet100", ["synset.ipc=50", "synset.factor=4"], "bounded"),
    ("imagenet10", [], "uniform"),  # ipc 10
    ("imagenet10", ["synset.ipc=20", "synset.factor=2"], "uniform"),
    ("imagenet10", ["synset.ipc=20", "synset.formation=uniform"], "uniform"),  # explicit wins
    ("cifar10", ["synset.ipc=50", "synset.factor=3"], "uniform"),  # only the ImageNet branch switches
    ("speech", [], "1d"),
])
def test_bounded_formation_switches_on_as_published(preset, overrides, formation):
    cfg = apply_overrides(load_preset(preset), overrides)
    assert _resolve(cfg).formation == formation
    assert build_plan(cfg, get_spec(cfg.data.dataset)).match.formation == formation


def test_bounded_epochs_count_formed_samples_up_to_the_bound():
    # argument.py: ipc_epoch(ipc, factor, bound=batch_syn_max) counts min(ipc * f^2, bound) per class.
    cfg = apply_overrides(load_preset("imagenet10"), ["synset.ipc=6", "synset.formation=bounded", "synset.bound=53"])
    assert _resolve(cfg).eval_epochs == 1000  # min(54, 53) = 53 > 50 (whole factors per sample would count 48)
    assert _resolve(apply_overrides(cfg, ["synset.bound=50"])).eval_epochs == 1500  # 50


def test_published_normalisation_by_default_corrected_on_request():
    from idc_ray.evaluation.protocol import plan_tasks

    published = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # data.py, CIFAR-100 too
    corrected = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
    for name in ("cifar10", "cifar100"):
        spec = get_spec(name)
        cfg = load_preset(name)
        plan = build_plan(cfg, spec)
        match, expert = plan.match, plan.expert
        task = plan_tasks(cfg, spec, "set", models=("convnet3",), repeat=1)[0]
        assert (match.mean, match.std) == (expert.mean, expert.std) == (task.mean, task.std) == published
        fixed = apply_overrides(cfg, ["data.stats=corrected"])
        plan = build_plan(fixed, spec)
        match, expert = plan.match, plan.expert
        task = plan_tasks(fixed, spec, "set", models=("convnet3",), repeat=1)[0]
        assert match.std == expert.std == task.std == corrected[name]
    with pytest.raises(ConfigError, match="data.stats 'measured' is unknown"):
        apply_overrides(load_preset("cifar10"), ["data.stats=measured"])
    with pytest.raises(ConfigError, match="synset.init_select 'last' is unknown"):
        apply_overrides(load_preset("cifar10"), ["synset.init_select=last"])


def test_coerce_is_the_one_type_check_of_a_dotted_field():
    from idc_ray.config import coerce

    assert coerce("match.lr_img", "1e-4") == 1e-4 and isinstance(coerce("match.lr_img", 1), float)
    assert coerce("eval.models", "convnet3, resnet10") == ("convnet3", "resnet10")
    assert coerce("expert.pretrained", None) is None
    for key, value, message in [
        ("synset.ipc", 0.5, "'synset.ipc' must be an integer, got 0.5"),
        ("match.lr_img", "fast", "'match.lr_img' must be a number, got 'fast'"),
        ("match.colour", 1, "unknown key 'match.colour'; valid keys: match.objective, match.metric"),
        ("match", 1, "'match' is a section; give one of its keys, e.g. match."),
        ("synset.ipc.x", 1, "unknown key 'synset.ipc.x'"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            coerce(key, value, "where")
        assert "\n" not in str(info.value) and str(info.value).startswith("where: ")
