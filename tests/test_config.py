"""Config defaults, validation errors that name the key, `--set` overrides, YAML reading and stage hashes."""
from __future__ import annotations

import copy
import datetime

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdsweep import preflight
from kdsweep.config import Config, load_config, read_yaml
from kdsweep.errors import ConfigError
from kdsweep.hashes import config_hash, pruned_settings, student_settings, teacher_settings


def _error(source, overrides=None) -> str:
    """The one-line error of a config: from the schema, else from the machine checks `run` and `plan` make first."""
    with pytest.raises(ConfigError) as info:
        preflight.check(load_config(source, overrides))
    return str(info.value)


# --- defaults: the reference recipe ----------------------------------------------------------------------------

def test_defaults_are_the_reference_recipe():
    cfg = load_config({})
    t, s = cfg.teacher, cfg.student
    assert (t.arch, t.weights, t.epochs, t.lr, t.weight_decay, t.batch_size) == (
        "resnet18", "imagenet", 3, 3e-4, 1e-4, 128)
    assert (s.arch, s.weights, s.epochs, s.lr, s.weight_decay, s.batch_size) == (
        "mobilenet_v3_small", "none", 8, 3e-4, 1e-4, 128)
    # reference: "KL(T=4.0) + CE (alpha=0.9) + label smoothing=0.05", grid axes are lists
    assert cfg.kd.temperature == [4.0] and isinstance(cfg.kd.temperature, list)
    assert cfg.kd.alpha == [0.9] and isinstance(cfg.kd.alpha, list)
    assert cfg.kd.label_smoothing == 0.05
    p = cfg.prune
    assert (p.method, p.scope, p.recovery_epochs, p.round_to) == (["l1_unstructured"], "layer", 2, 8)
    assert cfg.quantize.method == ["none"] and cfg.quantize.stages == ["student", "pruned"]
    assert cfg.measure.runtimes == ["torch", "onnxruntime"] and cfg.measure.devices is None
    assert isinstance(p.amount, list) and all(0.2 <= a <= 0.3 for a in p.amount)  # reference: "suggested: 20-30%"
    d = cfg.data
    assert (d.dataset, d.image_size, d.normalize, d.augment, d.download, d.verify) == (
        "cifar10", 224, "imagenet", ["flip"], True, True)
    assert (cfg.measure.warmup, cfg.measure.iters) == (20, 200)
    assert cfg.seeds == [0]


def test_default_config_object_equals_loaded_empty_dict():
    assert load_config({}) == Config()


@pytest.mark.parametrize("key,value,expected", [
    ("temperature", 2, [2.0]),
    ("alpha", 0.5, [0.5]),
])
def test_scalar_kd_axis_becomes_one_value_list(key, value, expected):
    cfg = load_config({"kd": {key: value}})
    assert getattr(cfg.kd, key) == expected


def test_scalar_prune_amount_and_seeds_become_lists():
    cfg = load_config({"prune": {"amount": 0.5}, "seeds": 3})
    assert cfg.prune.amount == [0.5]
    assert cfg.seeds == [3]


def test_list_axes_are_kept():
    cfg = load_config({"kd": {"temperature": [2, 4, 6], "alpha": [0.5, 0.7, 0.9]}, "prune": {"amount": [0.2, 0.3, 0.5]},
                       "seeds": [0, 1]})
    assert cfg.kd.temperature == [2.0, 4.0, 6.0]
    assert cfg.kd.alpha == [0.5, 0.7, 0.9]
    assert cfg.prune.amount == [0.2, 0.3, 0.5]
    assert cfg.seeds == [0, 1]


def test_partial_section_keeps_other_defaults():
    cfg = load_config({"teacher": {"epochs": 1}})
    assert cfg.teacher.epochs == 1
    assert (cfg.teacher.arch, cfg.teacher.weights, cfg.teacher.lr) == ("resnet18", "imagenet", 3e-4)


# --- bad configs name the key ----------------------------------------------------------------------------------

def test_unknown_key_has_did_you_mean_hint():
    msg = _error({"kd": {"temprature": [4]}})
    assert "'kd.temprature'" in msg
    assert "did you mean 'kd.temperature'" in msg


def test_unknown_top_level_key_is_named():
    msg = _error({"teachr": {"epochs": 1}})
    assert "'teachr'" in msg and "'teacher'" in msg


def test_unknown_key_without_close_match_lists_known_keys():
    msg = _error({"prune": {"zzzzzz": 1}})
    assert "'prune.zzzzzz'" in msg and "recovery_epochs" in msg


@pytest.mark.parametrize("raw,key", [
    ({"kd": {"alpha": 1.5}}, "kd.alpha"),
    ({"kd": {"alpha": [0.5, -0.1]}}, "kd.alpha"),
    ({"prune": {"amount": 1.0}}, "prune.amount"),
    ({"kd": {"temperature": 0}}, "kd.temperature"),
    ({"kd": {"label_smoothing": 1.0}}, "kd.label_smoothing"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset"),
    ({"teacher": {"arch": "vgg16x"}}, "teacher.arch"),
    ({"student": {"arch": "resnet5000"}}, "student.arch"),
    ({"kd": {"alpha": []}}, "kd.alpha"),
    ({"kd": {"temperature": []}}, "kd.temperature"),
    ({"prune": {"amount": []}}, "prune.amount"),
    ({"seeds": []}, "seeds"),
    ({"kd": {"alpha": [0.5, 0.5]}}, "kd.alpha"),
    ({"teacher": {"epochs": "x"}}, "teacher.epochs"),
    ({"teacher": {"lr": 0}}, "teacher.lr"),
    ({"student": {"lr": -1e-3}}, "student.lr"),
    ({"student": {"batch_size": 0}}, "student.batch_size"),
    ({"data": {"image_size": 4}}, "data.image_size"),
    ({"student": {"epochs": -1}}, "student.epochs"),
    ({"prune": {"recovery_epochs": -1}}, "prune.recovery_epochs"),
    ({"data": {"augment": ["flip", "rotate"]}}, "data.augment"),
    ({"measure": {"iters": 0}}, "measure.iters"),
    ({"name": "has space"}, "name"),
    ({"prune": {"method": "l2_structured"}}, "prune.method"),
    ({"prune": {"method": []}}, "prune.method"),
    ({"prune": {"round_to": 0}}, "prune.round_to"),
    ({"quantize": {"method": ["none", "int4"]}}, "quantize.method"),
    ({"quantize": {"stages": ["latency"]}}, "quantize.stages"),
    ({"quantize": {"calib_batches": 0}}, "quantize.calib_batches"),
    ({"measure": {"runtimes": ["torch", "tvm"]}}, "measure.runtimes"),
    ({"measure": {"runtimes": []}}, "measure.runtimes"),
    ({"measure": {"devices": ["tpu"]}}, "measure.devices"),
])
def test_bad_value_raises_config_error_naming_key(raw, key):
    msg = _error(raw)
    assert f"'{key}'" in msg
    assert "\n" not in msg  # one line


def test_wrong_type_message_shows_the_value():
    msg = _error({"teacher": {"epochs": "x"}})
    assert "'x'" in msg


def test_missing_root_without_download_names_data_root(tmp_path):
    missing = tmp_path / "nowhere"
    msg = _error({"data": {"dataset": "cifar10", "root": str(missing), "download": False}})
    assert "'data.root'" in msg and str(missing) in msg
    # with download allowed, or for an offline dataset, a missing root is fine
    cfg = load_config({"data": {"dataset": "cifar10", "root": str(missing), "download": True}})
    preflight.check(cfg)
    assert cfg.data.root == str(missing)
    cfg = load_config({"data": {"dataset": "digits", "root": str(missing), "download": False}})
    preflight.check(cfg)
    assert cfg.data.dataset == "digits"


def test_existing_root_without_download_is_accepted(tmp_path):
    cfg = load_config({"data": {"dataset": "cifar100", "root": str(tmp_path), "download": False}})
    preflight.check(cfg)
    assert cfg.data.root == str(tmp_path)


def test_the_schema_checks_no_machine_and_preflight_does(tmp_path):
    # what validating a config never does (every trial and `kdsweep status` re-validate one): read the disk or ask
    # torchvision, torch-pruning or the installed runtimes; preflight, run once by `run` and `plan`, does
    raw = {"data": {"dataset": "cifar10", "root": str(tmp_path / "no"), "download": False},
           "student": {"arch": "resnet181"}, "teacher": {"weights": str(tmp_path / "no.pt")}}
    cfg = load_config(raw)
    assert (cfg.student.arch, cfg.data.root) == ("resnet181", str(tmp_path / "no"))
    with pytest.raises(ConfigError, match=r"^config key 'student.arch': .*did you mean resnet18"):
        preflight.check(cfg)


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_missing_weights_path_names_the_key(tmp_path, stage):
    missing = tmp_path / "w.pt"
    msg = _error({stage: {"weights": str(missing)}})
    assert f"'{stage}.weights'" in msg and str(missing) in msg
    missing.write_bytes(b"x")  # any existing file passes validation (its content is checked when loaded)
    cfg = load_config({stage: {"weights": str(missing)}})
    preflight.check(cfg)
    assert getattr(cfg, stage).weights == str(missing)


# --- --set overrides -------------------------------------------------------------------------------------------

def test_override_list_value():
    cfg = load_config({"kd": {"alpha": [0.5, 0.7]}}, overrides=["kd.alpha=[0.9]"])
    assert cfg.kd.alpha == [0.9]


def test_override_scalar_keeps_other_keys_of_the_section():
    cfg = load_config({"teacher": {"lr": 1e-3}}, overrides=["teacher.epochs=1"])
    assert cfg.teacher.epochs == 1
    assert cfg.teacher.lr == 1e-3
    assert (cfg.teacher.arch, cfg.teacher.weights, cfg.teacher.batch_size) == ("resnet18", "imagenet", 128)


def test_override_value_is_parsed_as_yaml():
    cfg = load_config({}, overrides=["kd.temperature=[2, 4, 6]", "data.download=false", "seeds=[1,2]",
                                     "data.dataset=digits"])
    assert cfg.kd.temperature == [2.0, 4.0, 6.0]
    assert cfg.data.download is False
    assert cfg.seeds == [1, 2]


def test_later_override_wins_and_source_dict_is_not_mutated():
    raw = {"kd": {"alpha": [0.5]}}
    before = copy.deepcopy(raw)
    cfg = load_config(raw, overrides=["kd.alpha=0.7", "kd.alpha=0.8"])
    assert cfg.kd.alpha == [0.8]
    assert raw == before


def test_override_on_yaml_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("teacher:\n  epochs: 5\n  lr: 0.001\nkd:\n  alpha: [0.5, 0.9]\n")
    cfg = load_config(path, overrides=["teacher.epochs=1", "kd.alpha=[0.9]"])
    assert (cfg.teacher.epochs, cfg.teacher.lr, cfg.kd.alpha) == (1, 0.001, [0.9])


def test_override_on_config_object():
    base = load_config({"teacher": {"epochs": 5}})
    cfg = load_config(base, overrides=["student.epochs=2"])
    assert (cfg.teacher.epochs, cfg.student.epochs) == (5, 2)
    assert load_config(base) is base


def test_override_without_equals_sign():
    msg = _error({}, overrides=["kd.alpha"])
    assert "KEY=VALUE" in msg and "kd.alpha" in msg


def test_override_with_bad_value_names_the_key():
    msg = _error({}, overrides=["kd.alpha=1.5"])
    assert "'kd.alpha'" in msg
    msg = _error({}, overrides=["kd.alpha=[0.5"])  # not valid YAML
    assert "kd.alpha" in msg


def test_override_into_a_scalar_is_an_error():
    msg = _error({}, overrides=["teacher.epochs.x=1"])
    assert "teacher.epochs" in msg


def test_override_unknown_key_has_hint():
    msg = _error({}, overrides=["kd.temprature=4"])
    assert "'kd.temperature'" in msg


# --- YAML files ------------------------------------------------------------------------------------------------

def test_name_defaults_to_file_stem(tmp_path):
    path = tmp_path / "my_exp-1.yaml"
    path.write_text("kd:\n  alpha: 0.7\n")
    cfg = load_config(path)
    assert cfg.name == "my_exp-1"
    assert cfg.kd.alpha == [0.7]
    path.write_text("name: other\n")
    assert load_config(str(path)).name == "other"


def test_empty_yaml_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    cfg = load_config(path)
    assert cfg.name == "empty"
    assert cfg.teacher.epochs == load_config({}).teacher.epochs


def test_non_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kd: [1, 2\nteacher: {\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert str(path) in str(info.value)
    assert str(path) in _error(path)


def test_binary_file_names_the_file(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    assert str(path) in _error(path)


def test_yaml_list_file_names_the_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    msg = _error(path)
    assert str(path) in msg and "mapping" in msg


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_path_names_the_file(tmp_path, kind):
    path = tmp_path / "cfg.yaml"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert str(path) in str(info.value)
    assert str(path) in _error(str(path))


# --- hashes ----------------------------------------------------------------------------------------------------

def test_config_hash_is_key_order_independent_and_value_sensitive():
    a = {"stage": "teacher", "seed": 0, "nested": {"x": 1, "y": [1, 2]}}
    b = {"nested": {"y": [1, 2], "x": 1}, "seed": 0, "stage": "teacher"}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) == config_hash(copy.deepcopy(a))
    assert config_hash(a) != config_hash({**a, "seed": 1})
    assert config_hash(a) != config_hash({**a, "nested": {"x": 1, "y": [2, 1]}})
    h = config_hash(a)
    assert isinstance(h, str) and len(h) >= 8 and int(h, 16) >= 0


def _hashes(cfg, seed=0, t=4.0, a=0.9, p=0.3) -> dict:
    return {
        "teacher": config_hash(teacher_settings(cfg, seed)),
        "student": config_hash(student_settings(cfg, seed, t, a)),
        "baseline": config_hash(student_settings(cfg, seed, None, 0.0)),
        "pruned": config_hash(pruned_settings(cfg, seed, t, a, p)),
        "pruned_baseline": config_hash(pruned_settings(cfg, seed, None, 0.0, p)),
    }


def _changed(a: dict, b: dict) -> set:
    return {k for k in a if a[k] != b[k]}


def test_hashes_are_stable_across_loads():
    assert _hashes(load_config({})) == _hashes(load_config({}))


def test_teacher_change_leaves_no_kd_baseline_alone():
    base = _hashes(load_config({}))
    other = _hashes(load_config({}, overrides=["teacher.epochs=1"]))
    assert _changed(base, other) == {"teacher", "student", "pruned"}


def test_recovery_change_only_changes_pruned():
    base = _hashes(load_config({}))
    other = _hashes(load_config({}, overrides=["prune.recovery_epochs=1"]))
    assert _changed(base, other) == {"pruned", "pruned_baseline"}


def test_student_change_leaves_teacher_alone():
    base = _hashes(load_config({}))
    other = _hashes(load_config({}, overrides=["student.epochs=2"]))
    assert _changed(base, other) == {"student", "baseline", "pruned", "pruned_baseline"}


def test_data_location_changes_nothing(tmp_path):
    base = _hashes(load_config({}))
    other = _hashes(load_config({"data": {"root": str(tmp_path), "verify": False, "download": False}}))
    assert _changed(base, other) == set()


def test_data_content_changes_everything():
    base = _hashes(load_config({}))
    other = _hashes(load_config({"data": {"image_size": 32}}))
    assert _changed(base, other) == set(base)


def test_grid_coordinates_change_the_right_hashes():
    cfg = load_config({})
    base = _hashes(cfg)
    assert _changed(base, _hashes(cfg, seed=1)) == set(base)
    assert _changed(base, _hashes(cfg, t=2.0)) == {"student", "pruned"}
    assert _changed(base, _hashes(cfg, a=0.5)) == {"student", "pruned"}
    assert _changed(base, _hashes(cfg, p=0.5)) == {"pruned", "pruned_baseline"}


# --- property: mutations never give anything but ConfigError ----------------------------------------------------

_KNOWN_KEYS = ["name", "seeds", "data", "teacher", "student", "kd", "prune", "measure", "resources", "dataset", "root",
               "download", "verify", "image_size", "normalize", "augment", "train_limit", "test_limit", "split_seed",
               "arch", "weights", "epochs", "lr", "weight_decay", "batch_size", "schedule", "bn_momentum",
               "temperature", "alpha", "label_smoothing", "teacher_logits", "amount", "method", "scope",
               "recovery_epochs", "recovery_lr", "recalibrate_bn", "latency_device", "warmup", "iters",
               "cpus_per_trial", "gpus_per_trial"]
_keys = st.one_of(st.sampled_from(_KNOWN_KEYS), st.text(max_size=12))
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**20, max_value=10**20), st.floats(allow_nan=True),
    st.text(max_size=30), st.sampled_from(["cifar10", "digits", "synthetic", "resnet18", "mobilenet_v3_small",
                                           "imagenet", "none", "flip", "crop", "layer", "global", "./data", ""]),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_keys, inner, max_size=4)), max_leaves=12)


def _valid_base() -> dict:
    return load_config({"data": {"dataset": "digits"}}).model_dump(mode="json")


@st.composite
def _mutated(draw) -> tuple[dict, list[str]]:
    raw = _valid_base()
    for _ in range(draw(st.integers(0, 6))):
        # walk down to a random dict in the tree
        node = raw
        while True:
            subs = [k for k, v in node.items() if isinstance(v, dict)]
            if not subs or draw(st.booleans()):
                break
            node = node[draw(st.sampled_from(sorted(subs)))]
        op = draw(st.sampled_from(["set", "delete", "nest"]))
        if op == "delete" and node:
            del node[draw(st.sampled_from(sorted(node)))]
        elif op == "nest":
            key = draw(st.sampled_from(sorted(node))) if node and draw(st.booleans()) else draw(_keys)
            node[key] = {draw(_keys): node.get(key, draw(_values))}
        else:
            key = draw(st.sampled_from(sorted(node))) if node and draw(st.booleans()) else draw(_keys)
            node[key] = draw(_values)
    overrides = draw(st.lists(st.one_of(
        st.text(max_size=20),
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["kd.alpha", "teacher.epochs", "seeds", "data",
                                                              "prune.amount", "kd", "x.y.z", ".", "a..b"]),
                  st.text(max_size=15)),
    ), max_size=2))
    return raw, overrides


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_config_mutations_give_an_error_or_a_plan(case):
    from kdsweep.plan import describe, make_plan

    raw, overrides = case
    try:
        cfg = load_config(raw, overrides)
        plan = make_plan(cfg)  # a ConfigError here too (max_variants below the plan's size) is a fine answer
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(cfg, Config)
        kd = sum(a > 0 for a in cfg.kd.alpha) * len(cfg.kd.temperature) * len(cfg.seeds)
        assert len(plan) == 2 * len(cfg.seeds) + kd * (1 + len(cfg.prune.amount))
        assert len({v.key for v in plan}) == len(plan)
        assert f"{len(plan)} variants" in describe(plan, cfg)


# --- inputs that once escaped as other exception types ------------------------------------------------------

def test_yaml_date_value_is_a_config_error(tmp_path):
    path = tmp_path / "dated.yaml"
    path.write_text("seeds: 2024-01-01\n")
    assert isinstance(yaml.safe_load(path.read_text())["seeds"], datetime.date)
    assert "'seeds'" in _error(path)


@pytest.mark.parametrize("raw", [
    {"data": {"dataset": "cifar10", "download": False, "root": "r" * 5000}},
    {"teacher": {"weights": "w" * 5000}},
])
def test_overlong_path_is_a_config_error(raw):
    _error(raw)


@pytest.mark.parametrize("override,key", [("kd.temperature=.nan", "kd.temperature"),
                                          ("kd.temperature=.inf", "kd.temperature"),
                                          ("student.lr=.inf", "student.lr")])
def test_non_finite_values_are_rejected(override, key):
    try:
        load_config({}, overrides=[override])
    except ConfigError as exc:
        assert f"'{key}'" in str(exc)
    else:
        raise AssertionError(f"{override} was accepted")


# --- compression and runtime axes ------------------------------------------------------------------------------

def test_prune_and_quantize_methods_are_axes_and_scalars_still_work():
    cfg = load_config({"prune": {"method": "l1_structured"}, "quantize": {"method": "int8", "stages": "teacher"}})
    assert cfg.prune.method == ["l1_structured"] and cfg.quantize.method == ["int8"]
    assert cfg.quantize.stages == ["teacher"]
    both = load_config({}, ["prune.method=[l1_unstructured, l1_structured]", "quantize.method=[none, int8]"])
    assert both.prune.method == ["l1_unstructured", "l1_structured"] and both.quantize.method == ["none", "int8"]


def test_a_runtime_that_is_not_installed_is_an_error_naming_the_key(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else real(name, *a))
    msg = _error({}, ["measure.runtimes=[torch, tensorrt]"])
    assert msg.startswith("config key 'measure.runtimes'") and "tensorrt" in msg and "\n" not in msg


def test_int8_needs_onnxruntime_in_the_runtimes():
    msg = _error({}, ["quantize.method=[none, int8]", "measure.runtimes=[torch]"])
    assert msg.startswith("config key 'quantize.method'") and "onnxruntime" in msg


def test_devices_and_latency_device_are_not_both_given():
    msg = _error({}, ["measure.devices=[cpu]", "measure.latency_device=cuda"])
    assert msg.startswith("config key 'measure.devices'")
    assert load_config({}, ["measure.devices=[cpu, cuda]"]).measure.devices == ["cpu", "cuda"]


def test_hashes_of_earlier_experiments_are_unchanged():
    """Pinned before prune.method became an axis: older experiments resume without retraining."""
    from kdsweep.plan import make_plan

    from .conftest import SMOKE

    by_key = {v.key: v.config_hash for v in make_plan(load_config(SMOKE))}
    assert {k: by_key[k] for k in ("teacher-s0", "baseline-s0", "student-T4-a0.9-s0", "pruned-T4-a0.9-p0.5-s0")} == {
        "teacher-s0": "e65e4a225cc7b32a", "baseline-s0": "6d19550372392ddb",
        "student-T4-a0.9-s0": "cd9ead34c67b1454", "pruned-T4-a0.9-p0.5-s0": "3175be2038769589"}


def test_structured_round_to_changes_only_structured_hashes():
    cfg, other = load_config({}), load_config({}, ["prune.round_to=16"])
    for method, changes in (("l1_unstructured", False), ("l1_structured", True)):
        a = config_hash(pruned_settings(cfg, 0, 4.0, 0.9, 0.5, method))
        b = config_hash(pruned_settings(other, 0, 4.0, 0.9, 0.5, method))
        assert (a != b) == changes
    assert config_hash(pruned_settings(cfg, 0, 4.0, 0.9, 0.5, "l1_structured")) != config_hash(
        pruned_settings(cfg, 0, 4.0, 0.9, 0.5))
