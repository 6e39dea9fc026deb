"""The CLI flags of ``pretrain`` / ``finetune`` are generated from the configs: every field has a
reason and a flag, a flag sets its field, old flag names and old (flat) config JSON still work."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path

import pytest

from audiomaepp.cli.config_flags import leaf_types
from audiomaepp.cli.main import build_parser, main
from audiomaepp.cli.pretrain import MODEL_FLAGS
from audiomaepp.finetune import FinetuneConfig, FinetuneLoop
from audiomaepp.model import AudioMAEConfig
from audiomaepp.settings import ConfigTree, literal_choices, reason
from audiomaepp.training import LoopConfig, TrainConfig

from .conftest import tiny_config

FIXTURES = Path(__file__).parent / "fixtures"
COMMANDS = {"pretrain": TrainConfig, "finetune": FinetuneConfig}


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _leaf_fields(cls: type[ConfigTree]) -> dict[str, dataclasses.Field]:
    out: dict[str, dataclasses.Field] = {}
    sections = cls.sections()
    for f in dataclasses.fields(cls):
        out.update(_leaf_fields(sections[f.name]) if f.name in sections else {f.name: f})
    return out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_config_field_has_a_reason_and_a_flag(command):
    cls = COMMANDS[command]
    dests = {a.dest for a in _subparser(command)._actions}
    fields = _leaf_fields(cls)
    assert len(fields) > 30
    for name, f in fields.items():
        assert reason(f), f"{cls.__name__}: field {name!r} has no reason (knob(default, reason))"
        assert name in dests, f"{command}: config field {name!r} has no flag"
    if command == "pretrain":
        model_fields = {f.name: f for f in dataclasses.fields(AudioMAEConfig)}
        for name in MODEL_FLAGS:
            assert reason(model_fields[name]) and f"model.{name}" in dests, name


def _other_value(name: str, tp, default):
    """A valid value of type ``tp`` other than ``default``: (words after the flag, or the bool
    itself for --x / --no-x; the value --print-config must show). None for dict fields."""
    choices = literal_choices(tp)
    if choices is not None:
        value = next(c for c in choices if c is not None and c != default)
        return [value], value
    union = isinstance(tp, types.UnionType)
    base = next(a for a in typing.get_args(tp) if a is not type(None)) if union else tp
    origin = typing.get_origin(base)
    if base is bool:
        return not default, not default
    if base is int:
        value = 2 if default is None else default + 1
        return [str(value)], value
    if base is float:
        value = 0.5 if not default else default / 2
        return [repr(value)], value
    if origin is tuple:
        return ["0.5", "0.625"], [0.5, 0.625]
    if origin is list:
        return ["a", "b"], ["a", "b"]
    if origin is dict:
        return None  # the KEY=VALUE flags: checked on their own below
    value = "small" if name == "preset" else f"given-{name}"
    return [value], value


@pytest.mark.parametrize("command", COMMANDS)
def test_print_config_after_each_flag_shows_its_value(command, capsys):
    """One flag per field (each to a non-default value); --print-config shows every one of them."""
    cls = COMMANDS[command]
    actions = {a.dest: a for a in _subparser(command)._actions}
    defaults = _flat(cls().to_dict())
    flags, want = [], {}
    for name, tp in leaf_types(cls).items():
        got = _other_value(name, tp, defaults[name])
        if got is None:
            continue
        words, want[name] = got
        options = actions[name].option_strings
        if isinstance(words, bool):
            flags.append(options[0] if words else options[1])  # --x / --no-x
        else:
            flags += [options[0], *words]
    dict_flag = ["--model-set", "depth=3", "--model-set", "block=vanilla"]
    assert main([command, *flags, *dict_flag, "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    flat = _flat(printed)
    for name, value in want.items():
        assert value != defaults[name], name
        assert flat[name] == value, (name, flat[name], value)
    dict_field = "model" if command == "pretrain" else "model_overrides"
    assert flat[dict_field] == {"depth": 3, "block": "vanilla"}
    assert cls.from_dict(printed).to_dict() == printed  # the printed JSON reads back as is


def _flat(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        out.update(v if k == "loop" else {k: v})
    return out


def test_help_shows_each_recipes_own_default_and_reason():
    def help_of(command: str, dest: str) -> str:
        return next(a.help for a in _subparser(command)._actions if a.dest == dest)

    loop = {f.name: f for f in dataclasses.fields(LoopConfig)}
    ft_loop = {f.name: f for f in dataclasses.fields(FinetuneLoop)}
    for name in ("epochs", "batch_size", "blr"):
        pre, fine = help_of("pretrain", name), help_of("finetune", name)
        assert f"[default: {getattr(LoopConfig(), name)}]" in pre
        ft_default = getattr(FinetuneLoop(), name)  # None: left to the fine-tuning recipe
        assert f"[default: {'none' if ft_default is None else ft_default}]" in fine
        assert reason(loop[name]) in pre and reason(ft_loop[name]) in fine
        assert pre != fine  # fine-tuning's recipe states its own default and reason
    assert help_of("pretrain", "device") == help_of("finetune", "device")  # one shared field


# the flags of the hand-written parsers these replaced (tests, README and docs use them)
OLD_FLAGS = {
    "pretrain": "--preset --block --decoder-block --encoder-rope --decoder-rope --swiglu-norm "
    "--norm-pix-loss --mask-ratio --model-set --data --out --samples-per-epoch --num-workers "
    "--shuffle-buffer --epochs --max-steps --stop-after --warmup-epochs --warmup-steps "
    "--batch-size --per-device-batch --lr --blr --min-lr --weight-decay --clip-grad --device "
    "--precision --compile --fused-adamw --seed --save-every --keep-last --log-every --viz-every "
    "--resume --max-nonfinite --peak-tflops --tensorboard --progress --export --config "
    "--print-config",
    "finetune": "--model --task --out --prediction-type --folds --model-set --pooling "
    "--linear-probe --drop-path --epochs --warmup-epochs --max-steps --stop-after --batch-size "
    "--per-device-batch --lr --blr --min-lr --layer-decay --weight-decay --clip-grad "
    "--samples-per-epoch --label-smoothing --mixup --mixup-alpha --freq-mask --time-mask "
    "--weighted-sampling --eval-every --device --precision --compile --fused-adamw "
    "--num-workers --seed --save-every --log-every --resume --progress --config --print-config",
}


@pytest.mark.parametrize("command", COMMANDS)
def test_the_old_flag_names_still_exist(command):
    options = {o for a in _subparser(command)._actions for o in a.option_strings}
    missing = set(OLD_FLAGS[command].split()) - options
    assert not missing, missing


def test_optional_numbers_take_none_and_bad_values_exit_2(tmp_path, capsys):
    file = tmp_path / "cfg.json"
    file.write_text(json.dumps({"loop": {"max_steps": 9, "lr": 1e-3}}))
    assert main(["pretrain", "--config", str(file), "--max-steps", "none", "--print-config"]) == 0
    loop = json.loads(capsys.readouterr().out)["loop"]
    assert loop["max_steps"] is None and loop["lr"] == 1e-3  # the file's lr is kept
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--device", "tpu", "--print-config"])
    assert exc.value.code == 2
    assert main(["pretrain", "--batch-size", "0", "--print-config"]) == 2  # the config's check


# ---- config JSON: nested now, flat in earlier versions ------------------------------------------
@pytest.mark.parametrize(
    "cls, fixture",
    [(TrainConfig, "train_config_v1.json"), (FinetuneConfig, "finetune_config_v1.json")],
)
def test_flat_json_of_the_previous_version_reads_into_the_nested_config(cls, fixture):
    """The fixtures were written by the previous (flat) TrainConfig / FinetuneConfig.to_json."""
    flat = json.loads((FIXTURES / fixture).read_text())
    cfg = cls.from_json(FIXTURES / fixture)
    now = _flat(cfg.to_dict())
    assert {k: now[k] for k in flat} == flat  # every old field kept its value
    added = {k: v for k, v in now.items() if k not in flat}
    # fine-tuning gained the loop fields it used to leave at TrainConfig's defaults
    implicit = {k: getattr(LoopConfig(), k) for k in ("eps", "peak_tflops", "warmup_steps")}
    heads = ("head", "head_hidden", "head_dropout", "head_init_std", "head_lr_scale", "recipe")
    implicit |= {k: getattr(FinetuneConfig(), k) for k in heads}  # the head and recipe fields
    assert added == ({} if cls is TrainConfig else implicit)
    assert cls.from_dict(cfg.to_dict()) == cfg == cls.from_dict(json.loads(cfg.to_json()))
    assert type(cfg.loop) is (LoopConfig if cls is TrainConfig else FinetuneLoop)


def test_partial_and_mixed_json_keep_each_recipes_defaults(tmp_path):
    ft = FinetuneConfig.from_dict({"epochs": 3, "loop": {"seed": 4}, "pooling": "cls"})
    assert (ft.loop.epochs, ft.loop.seed, ft.loop.batch_size) == (3, 4, FinetuneLoop().batch_size)
    assert ft.loop.blr != LoopConfig().blr  # fine-tuning's default, not pretraining's
    with pytest.raises(ValueError, match="both flat and in loop"):
        FinetuneConfig.from_dict({"epochs": 3, "loop": {"epochs": 4}})
    with pytest.raises(ValueError, match="unknown FinetuneConfig field"):
        FinetuneConfig.from_dict({"epoch": 3})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"loop": {"nope": 1}}))
    with pytest.raises(ValueError, match="bad.json.*unknown FinetuneLoop field"):
        FinetuneConfig.from_json(bad)
    with pytest.raises(TypeError, match="FinetuneLoop"):
        FinetuneConfig(loop=LoopConfig())  # pretraining's recipe by mistake
    assert ft.replace(epochs=5, pooling="mean").loop.epochs == 5  # flat names in replace


def test_field_names_are_unique_across_each_tree():
    for cls in COMMANDS.values():
        names = cls.flat_names()  # raises on a duplicate
        assert set(names) == set(leaf_types(cls))


def test_a_run_of_the_flat_config_era_resumes(shard_dir, tmp_path):
    """A run folder as the previous version left it (flat ``train_config.json`` and flat
    ``train_config`` in the checkpoint's ``state.json``) resumes from its own config file."""
    from audiomaepp.training import list_checkpoints, read_metrics

    run = tmp_path / "run"
    cfg = tiny_config(shard_dir, run, max_steps=4, save_every=2, stop_after=2)
    flat = _flat(cfg.to_dict())
    (tmp_path / "v1.json").write_text(json.dumps(flat))
    assert main(["pretrain", "--config", str(tmp_path / "v1.json")]) == 0
    (checkpoint,) = list_checkpoints(run)
    state = json.loads((checkpoint / "state.json").read_text())
    state["train_config"] = flat
    (checkpoint / "state.json").write_text(json.dumps(state))
    (run / "train_config.json").write_text(json.dumps(flat))
    flags = ["--config", str(run / "train_config.json"), "--resume", "auto", "--stop-after", "none"]
    assert main(["pretrain", *flags]) == 0
    assert json.loads((run / "result.json").read_text())["finished"]
    assert sorted(r["step"] for r in read_metrics(run) if "loss" in r) == [1, 2, 3, 4]


def test_evaluate_ft_flags_are_the_fine_tuning_recipes_fields():
    base = ["evaluate", "--tasks", "t", "--models", "m", "--out", "o", "--mode", "finetune"]
    args = build_parser().parse_args([*base, "--ft-epochs", "3"])
    assert (args.ft_epochs, args.ft_batch_size) == (3, None)  # None: the recipe's (or --ft-config)
    helps = {a.dest: a.help for a in _subparser("evaluate")._actions}
    assert f"[default: {FinetuneLoop().batch_size}]" in helps["ft_batch_size"]
    assert helps["ft_epochs"].startswith(reason(dataclasses.fields(FinetuneLoop)[0]))
