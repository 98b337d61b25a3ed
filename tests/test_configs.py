"""Every config in configs/ and its tiny variant: parses into the typed sections, fits its own data
shapes, and builds a U-Net of the parameter count the README states (counted from shapes only,
nnx.eval_shape: nothing is allocated, so the 1.17B-parameter UCF-101 model is counted on a laptop).
Bad values, unknown keys (in the config and on the command line), a batch larger than the dataset
or than this machine's memory: each refused in one line before anything is built."""

import dataclasses
import importlib

import jax
import pytest

from vdm_jax.config import ConfigError, ExperimentConfig, check_overrides, validate_experiment
from vdm_jax.data import DatasetInfo
from vdm_jax.model import count_params, vdm_bair_config, vdm_ucf101_config
from vdm_jax.parallel import host

# Exact counts; the README's config table rounds them.
PARAMS = {
    "default": 334_435,
    "moving_mnist": 30_559_169,
    "bair": 137_318_979,
    "ucf101": 1_165_696_003,
    "default_dit": 433_484,
    "ucf101_dit": 935_224_752,
    "cascade_tsr": 340_115,
    "cascade_ssr": 323_603,
}
CONFIGS = ("default", "moving_mnist", "bair", "ucf101", "default_dit", "ucf101_dit", "cascade_tsr",
           "cascade_ssr")
# configs/cascade_pod.py: one variant per stage; its docstring states these.
POD_PARAMS = {"base": 603_215_107, "tsr": 457_969_923, "ssr": 292_435_971}


def experiment(name: str, variant: str = "") -> ExperimentConfig:
  return ExperimentConfig.from_config_dict(importlib.import_module(f"configs.{name}").get_config(variant))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("variant", ["", "tiny"])
def test_config_fits_its_data_and_prediction_agrees(name, variant):
  exp = experiment(name, variant)
  frames = exp.data.num_frames + exp.data.image_frames
  exp.model.validate(frames, exp.data.resolution, exp.data.resolution)
  assert exp.model.prediction == exp.diffusion.prediction
  if variant == "tiny":
    assert (exp.data.num_frames, exp.data.resolution) == (8, 16)
    assert count_params(exp.model) < 250_000
    assert exp.train.num_steps <= 10 and exp.train.checkpoint_every < exp.train.num_steps


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_counts(name):
  assert count_params(experiment(name).model) == PARAMS[name]


def test_ucf101_and_bair_configs_are_the_published_architectures():
  """configs/ucf101.py and configs/bair.py build exactly VDM's U-Nets (model/config.py)."""
  fields = ("base_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "head_dim",
            "emb_dim", "image_size", "num_classes", "cond_channels", "prediction")
  for name, published in (("ucf101", vdm_ucf101_config()), ("bair", vdm_bair_config())):
    model = experiment(name).model
    assert {f: getattr(model, f) for f in fields} == {f: getattr(published, f) for f in fields}, name
    assert count_params(model) == count_params(dataclasses.replace(published, conv_impl=model.conv_impl))
  ucf = experiment("ucf101")
  assert (ucf.model.dropout, ucf.optim.learning_rate, ucf.optim.b2, ucf.train.global_batch_size,
          ucf.optim.ema_decay) == (0.1, 3e-4, 0.99, 128, 0.9999)
  bair = experiment("bair")
  assert (bair.train.cond_frames, bair.data.num_frames, bair.diffusion.prediction,
          bair.optim.weight_decay) == (1, 16, "v", 0.01)


def test_the_pod_cascade_stages_have_their_stated_sizes_and_chain():
  stages = {v: experiment("cascade_pod", v) for v in POD_PARAMS}
  assert {v: count_params(e.model) for v, e in stages.items()} == POD_PARAMS
  base, tsr, ssr = stages["base"], stages["tsr"], stages["ssr"]
  assert base.data.num_frames * tsr.cascade.temporal_factor == tsr.data.num_frames == ssr.data.num_frames
  assert base.data.frame_stride == tsr.data.frame_stride * tsr.cascade.temporal_factor
  assert tsr.data.resolution * ssr.cascade.spatial_factor == ssr.data.resolution
  assert (base.model.lowres_channels, tsr.model.lowres_channels, ssr.model.lowres_channels) == (0, 3, 3)


def test_unknown_variant_is_an_error():
  with pytest.raises(ValueError, match="variants"):
    experiment("default", "huge")


# Every value check runs before anything is built: the section dataclasses (from_config_dict) or
# validate_experiment against a dataset's facts, here made up (no data, no model, no compile).
BAD_VALUES = {
    "log_every_0": ({"train": {"log_every": 0}}, r"train\.log_every=0 is out of range: it must be >= 1"
                    r"; change --config\.train\.log_every"),
    "checkpoint_every_0": ({"train": {"checkpoint_every": 0}}, r"train\.checkpoint_every=0 .* >= 1"),
    "sample_every_negative": ({"train": {"sample_every": -1}}, r"train\.sample_every=-1 .* >= 0 \(0: "),
    "num_steps_0": ({"train": {"num_steps": 0}}, r"train\.num_steps=0 .* >= 1 \(the steps to train"),
    "num_steps_negative": ({"train": {"num_steps": -5}}, r"train\.num_steps=-5 .* >= 1"),
    "batch_0": ({"train": {"global_batch_size": 0}}, r"train\.global_batch_size=0 .* >= 1"),
    "class_dropout": ({"train": {"class_dropout": 1.5}}, r"train\.class_dropout=1\.5 .* in \[0, 1\]"),
    "cond_dropout": ({"train": {"cond_dropout": -0.1}}, r"train\.cond_dropout=-0\.1 .* in \[0, 1\]"),
    "seed": ({"train": {"seed": -1}}, r"train\.seed=-1 .* >= 0"),
    "learning_rate_nan": ({"optim": {"learning_rate": float("nan")}}, r"optim\.learning_rate=nan .* > 0"),
    "b2": ({"optim": {"b2": 1.0}}, r"optim\.b2=1\.0 .* in \[0, 1\)"),
    "grad_accum": ({"optim": {"grad_accum_steps": 0}}, r"optim\.grad_accum_steps=0 .* >= 1"),
    "num_frames": ({"data": {"num_frames": 0}}, r"data\.num_frames=0 .* >= 1; change --config\.data"),
    "frame_stride": ({"data": {"frame_stride": 0}}, r"data\.frame_stride=0 .* >= 1"),
    "resolution": ({"data": {"resolution": -16}}, r"data\.resolution=-16 .* >= 1"),
    "image_frames": ({"data": {"image_frames": -1}}, r"data\.image_frames=-1 .* >= 0"),
    "dotdot_name": ({"data": {"name": "folder/../../.."}}, r"data\.name='folder/\.\./\.\./\.\.': .*one "
                    "plain folder name"),
    "max_to_keep": ({"checkpoint": {"max_to_keep": 0}}, r"checkpoint\.max_to_keep=0 .* >= 1"),
    "num_samples": ({"sample": {"num_samples": 0}}, r"sample\.num_samples=0 .* >= 1"),
    "fps": ({"sample": {"fps": 0}}, r"sample\.fps=0 .* >= 1"),
    "sampler_steps": ({"sample": {"num_steps": 0}}, r"config\.sample: num_steps must be >= 1"),
    "mesh_0": ({"mesh": {"data": 0}}, r"mesh\.data=0 .* >= 1, or -1"),
    "mesh_two_fills": ({"mesh": {"data": -1, "fsdp": -1}}, r"at most one size may be -1"),
    "model_dropout": ({"model": {"dropout": 1.5}}, r"config\.model: ModelConfig\.dropout=1\.5"),
    "dit_patch": ({"model": {"backbone": "dit", "patch_size": 3}}, r"Frame size 16x16 does not divide into "
                  r"3x3 patches; change model\.patch_size"),
    "dit_heads": ({"model": {"backbone": "dit", "hidden_size": 40}}, r"40 channels do not split into heads "
                  r"of head_dim=16; change head_dim or hidden_size"),
    "diffusion_p_std": ({"diffusion": {"p_std": 0.0}}, r"diffusion\.p_std=0\.0 .* > 0"),
    "cascade_factor_0": ({"cascade": {"spatial_factor": 0}}, r"cascade\.spatial_factor=0 .* >= 1"),
    "cascade_aug_range": ({"cascade": {"aug_level_min": 0.6}}, r"aug_level_min=0\.6 > aug_level_max"),
    "cascade_no_lowres_channels": ({"cascade": {"temporal_factor": 2}},
                                   r"set model\.lowres_channels=3 \(the data's channels\), got 0"),
    "lowres_channels_without_factor": ({"model": {"lowres_channels": 3}},
                                       r"model\.lowres_channels=3 needs a super-resolution stage"),
    "batch_over_dataset": ({"train": {"global_batch_size": 64}}, r"train\.global_batch_size=64 is "
                           r"larger than the 40 training examples .*at most 40"),
}


def tiny_dict(**sections) -> dict:
  config = importlib.import_module("configs.default").get_config("tiny").to_dict()
  for name, values in sections.items():
    config[name].update(values)
  return config


def made_up_info(exp: ExperimentConfig, num_train_examples: int = 40) -> DatasetInfo:
  return DatasetInfo(name=exp.data.name, num_classes=exp.model.num_classes, num_frames=20,
                     channels=exp.model.in_channels, resolution=(32, 32),
                     num_train_examples=num_train_examples, num_eval_examples=8)


def check(config: dict) -> None:
  """What the trainer checks before building anything, on 8 devices and one process."""
  exp = ExperimentConfig.from_config_dict(config)
  validate_experiment(exp, made_up_info(exp), 8, 1)


def test_the_tiny_config_passes_every_check():
  check(tiny_dict())


def test_one_flag_switches_a_config_to_the_dit():
  """--config.model.backbone=dit on configs/default.py: the U-Net fields stay and are not checked; the
  DiT fields' defaults are configs/default_dit.py's model."""
  check(tiny_dict(model={"backbone": "dit"}))
  check_overrides(["--config.model.backbone=dit", "--config.model.dit_attention=full"])
  config = importlib.import_module("configs.default").get_config()
  config.model.backbone = "dit"
  assert count_params(ExperimentConfig.from_config_dict(config).model) == PARAMS["default_dit"]


@pytest.fixture
def compilations():
  """Programs lowered for XLA during the test (lowering happens on persistent-cache hits too)."""
  events = []
  def listen(event, duration_secs, **kwargs):
    if event.endswith(("/jaxpr_to_mlir_module_duration", "/backend_compile_duration")):
      events.append(event)
  jax.monitoring.register_event_duration_secs_listener(listen)
  yield events
  jax.monitoring.unregister_event_duration_listener(listen)


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_bad_values_are_refused_in_one_line_naming_what_to_change(name, compilations):
  sections, message = BAD_VALUES[name]
  with pytest.raises(ConfigError, match=message) as err:
    check(tiny_dict(**sections))
  assert "\n" not in str(err.value)
  assert not compilations


def test_the_compilation_listener_sees_a_compilation(compilations):
  jax.jit(lambda x: x * 3 + 1)(jax.numpy.arange(7.0))
  assert compilations


def test_unknown_keys_name_the_nearest_known_key():
  with pytest.raises(ConfigError, match=r"config\.train has unknown keys \['num_step'\] \(did you mean "
                     r"'num_steps'\?\); known keys: \['checkpoint_every', "):
    check(tiny_dict(train={"num_step": 3}))
  config = tiny_dict()
  config["trian"] = {}
  with pytest.raises(ConfigError, match=r"unknown sections \['trian'\] \(did you mean 'train'\?\)"):
    check(config)


@pytest.mark.parametrize("args, message", [
    (["--config.train.bogus=1"], r"^config\.train has unknown keys \['bogus'\] \(nearest: '\w+'\); "
     r"known keys: \[.*'log_every'.*\]$"),
    (["--config=c.py", "--noconfig.train.progres_bar"], r"did you mean 'progress_bar'\?"),
    (["--config.trian.num_steps", "3"], r"^config has unknown sections \['trian'\] \(did you mean "),
])
def test_command_line_overrides_of_unknown_keys_are_refused(args, message):
  with pytest.raises(ConfigError, match=message):
    check_overrides(args)


def test_command_line_overrides_of_known_keys_pass():
  check_overrides(["--config=configs/default.py:tiny", "--config.train.num_steps=3",
                   "--noconfig.train.progress_bar", "--config.model.channel_mult", "1",
                   "--workdir=x", "--", "--config.not.checked"])


def test_a_batch_this_machine_cannot_hold_is_refused(monkeypatch):
  monkeypatch.setattr(host, "host_memory_bytes", lambda: 2**20)  # 1 MiB
  with pytest.raises(ConfigError, match=r"training with train\.global_batch_size=8 \(0\.0 GiB per host "
                     r"batch.* more than 90% of this machine's 0\.0 GiB; lower "
                     r"--config\.train\.global_batch_size"):
    check(tiny_dict())
