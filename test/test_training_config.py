"""training/config.py and the launch configs: values of the wrong type, held-out sources by name,
the DeepSpeed ZeRO-3 recipe's accelerate config. No model is loaded here."""
import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # training/ is a top-level folder beside svlm_ros/
    sys.path.insert(0, str(ROOT))

from training.build_dataset import dataset_config  # noqa: E402
from training.config import load_train_config  # noqa: E402
from training.dataset import split_sources  # noqa: E402


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("data: datasets/robot\nlearning_rate: 1.0e-4\n")
    return path


def set_values(*items):
    """--set NAME=VALUE as `svlm train` reads it (each value through YAML, an empty one null)."""
    from svlm_ros.params import parse_assignments

    return parse_assignments(items, example="max_steps=10", empty=None)


def test_numbers_in_every_spelling_are_read_as_their_fields_type(config_file):
    config = load_train_config(str(config_file), set_values("learning_rate=1e-5", "epochs=2", "max_steps=7",
                                                            "warmup_ratio=.5", "adam_epsilon=1E-8"))
    assert config.learning_rate == 1e-5 and isinstance(config.learning_rate, float)
    assert config.epochs == 2.0 and isinstance(config.epochs, float)
    assert config.max_steps == 7 and config.warmup_ratio == 0.5 and config.adam_epsilon == 1e-8
    # A `model:` section that names only the model keeps TrainConfig's fp32 master weights.
    assert load_train_config(str(config_file), {"model": {"model": "tiny-random"}}).model.dtype == "float32"


@pytest.mark.parametrize("item, expected", [
    ("epochs=ten", "epochs: expected a number, got 'ten'"),
    ("max_steps=2.5", "max_steps: expected an integer or null, got 2.5"),
    ("lora=true", "lora: expected a mapping with keys ['enabled'"),
    ("lora.r=big", "lora.r: expected an integer, got 'big'"),
    ("freeze_vision=1", "freeze_vision: expected true or false, got 1"),
    ("mixed_precision=no", "mixed_precision: expected a string, got false (bool); YAML reads an unquoted"),
    ("eval_sources=heldout", "eval_sources: expected a list of strings, got 'heldout'"),
    ("model.device=0", "model.device: expected a string, got 0"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_key_value_and_type(config_file, item, expected):
    with pytest.raises(ValueError) as error:
        load_train_config(str(config_file), set_values(item))
    assert f"training config {config_file}: {expected}" in str(error.value)


def test_the_dataset_section_is_type_checked_too(config_file):
    config_file.write_text('data: x\ndataset: {window_seconds: "24"}\n')
    with pytest.raises(ValueError, match=r"dataset\.window_seconds: expected an integer, got '24' \(a string\)"):
        dataset_config(str(config_file), argparse.Namespace())


def test_the_train_command_reports_a_bad_value_without_a_traceback(config_file, capsys):
    from svlm_ros.cli import main as svlm

    assert svlm(["train", "--config", str(config_file), "--set", "epochs=ten"]) == 2
    assert "epochs: expected a number, got 'ten'" in capsys.readouterr().err


def test_shipped_configs_are_valid(tmp_path):
    for name in ("reference_8gpu", "lora_1gpu", "shapes_cpu"):
        path = str(ROOT / "training" / "configs" / f"{name}.yaml")
        assert load_train_config(path).learning_rate > 0
        assert dataset_config(path, argparse.Namespace()).window_seconds == 24


def test_eval_sources_name_bags_not_any_part_of_their_path():
    sources = [f"/home/ls/bags/train{k}" for k in range(16)] + ["/home/ls/bags/heldout", "/home/ls/clips/walk.mcap"]
    assert split_sources(sources, 0.0, ["heldout"]) == {"/home/ls/bags/heldout"}
    assert split_sources(sources, 0.0, ["walk"]) == split_sources(sources, 0.0, ["walk.mcap"]) == \
        {"/home/ls/clips/walk.mcap"}
    assert split_sources(sources, 0.0, ["train1*"]) == {f"/home/ls/bags/train{k}" for k in (1, 10, 11, 12, 13, 14, 15)}
    with pytest.raises(ValueError, match=r"eval_sources: 'ls' names none of the dataset's 18 sources"):
        split_sources(sources, 0.0, ["ls"])


LAUNCH_CHECK = r"""
import json, os, sys
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_deepspeed_cmd_env

# What `accelerate launch --config_file FILE -m training.train ...` does before it starts the
# processes (accelerate.commands.launch.launch_command), then what each process's Accelerator does
# with the environment it is given (DeepSpeedPlugin from it, mixed precision from the trainer).
args = launch_command_parser().parse_args(["--config_file", sys.argv[1], "-m", "training.train", "--config", "x"])
args, defaults, precision_from_config = _validate_launch_command(args)
fields = list(defaults.deepspeed_config) + (["mixed_precision"] if precision_from_config else [])
args.deepspeed_fields_from_accelerate_config = ",".join(fields)
_, env = prepare_deepspeed_cmd_env(args)
os.environ.update(env)
from accelerate.utils import DeepSpeedPlugin
plugin = DeepSpeedPlugin()
plugin.set_mixed_precision(sys.argv[2])
print(json.dumps({"processes": args.num_processes, "config": plugin.deepspeed_config}, default=str))
"""


@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_the_zero3_launch_config_passes_accelerates_own_checks(precision):
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-c", LAUNCH_CHECK, "training/configs/accelerate_zero3.yaml", precision],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    launched = json.loads(done.stdout.splitlines()[-1])
    config = launched["config"]
    assert launched["processes"] == 8 and config["zero_optimization"]["stage"] == 3
    # The training config's mixed_precision decides bf16 (zero3.json leaves it "auto").
    assert config["bf16"]["enabled"] is (precision == "bf16")
    assert config["train_micro_batch_size_per_gpu"] == config["gradient_accumulation_steps"] == "auto"


def test_the_old_previous_text_keys_say_where_the_cut_is_set_now():
    from training.config import DatasetConfig, from_dict

    with pytest.raises(ValueError, match=r"previous_sink_tokens: .*cache\.sink_tokens.*--params"):
        from_dict(DatasetConfig, {"previous_sink_tokens": 8})
