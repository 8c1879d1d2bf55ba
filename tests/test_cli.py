"""lmexp/cli.py's helpers, unit by unit: the options of evaluate, generate and prepare, their
--help, the checkpoint a user hands in, and whether a command line starts a sweep. The commands
end to end are in tests/test_bad_inputs.py and tests/test_startup.py."""

import zipfile

import pytest

from lmexp.cli import apply_overrides, command_help, compose, existing_checkpoint, option_value, starts_a_sweep
from lmexp.config import load_settings, plain_config
from lmexp.errors import ConfigError, UserError


def test_an_option_typed_with_an_exponent_is_a_number():
    # YAML 1.1 reads 1e-1 as text: generate's temperature=1e-1 was refused as "must be a number"
    assert option_value("temperature", "1e-1", 1.0) == 0.1
    assert option_value("temperature", "2E3", 1.0) == 2000.0


def test_help_of_a_command_without_run_config_settings_offers_none():
    # lmexp.generate reads groups=(): its --help must not offer "any setting of the run config"
    text = command_help({"ckpt": None, "prompt": ""}, ())
    assert "any setting" not in text
    assert "and any setting of data, tokenizer" in command_help({}, ("data", "tokenizer"))
    assert "any setting of the run config" in command_help({}, None)


def test_a_run_folder_passed_as_ckpt_names_its_last_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"\x80")
    with pytest.raises(UserError, match=f"pass ckpt={tmp_path}/checkpoints/last.ckpt"):
        existing_checkpoint(tmp_path)


def test_an_empty_checkpoint_file_is_told_as_empty(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"")
    with pytest.raises(UserError, match=r"\(it is empty\)"):
        existing_checkpoint(tmp_path / "x.ckpt")


def test_a_zip_checkpoint_cut_short_is_told_before_torch_reads_it(tmp_path):
    """Told from the file's bytes, before torch is imported, and with the reason."""
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as z:
        z.writestr("archive/data.pkl", b"x" * 4096)
    data = whole.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="it is a zip archive cut short"):
        existing_checkpoint(tmp_path / "cut.ckpt")


def test_hydra_mode_run_given_with_plus_plus_keeps_a_sweeping_preset_one_run():
    """experiment=scaling sweeps without -m; hydra.mode=RUN in any of Hydra's spellings keeps it one run."""
    assert starts_a_sweep(["experiment=scaling"])
    assert not starts_a_sweep(["experiment=scaling", "++hydra.mode=RUN"])


def test_a_group_removed_with_a_tilde_composes_without_it():
    """``~logger`` deletes the logger group (Hydra's delete): not refused as 'logger=None is not an option'."""
    cfg = compose(["~logger"])
    assert cfg.get("logger") is None


def test_a_stored_config_takes_a_setting_added_with_plus():
    """evaluate/resume apply ``+trainer.NAME=VALUE`` to a checkpoint's config: a key it lacks, added, not refused."""
    stored = plain_config(compose([]))
    cfg = apply_overrides(stored, ["+trainer.detect_anomaly=true"])
    assert load_settings(cfg).trainer.kwargs()["detect_anomaly"] is True


@pytest.mark.parametrize("override, meant", [("embedding_size=64", "model.embedding_size"),
                                             ("stride=256", "eval.stride")])
def test_a_setting_given_without_its_group_is_told_its_group_not_a_similar_name(override, meant):
    """A setting one level down is what was meant (model.embedding_size), not a group whose name is
    close (embedding, trainer)."""
    with pytest.raises(ConfigError, match=f"did you mean {meant}\\?"):
        compose([override])
