"""The options schema on its own: parsing text, the CLI flags it makes, and the docs that print it."""
from __future__ import annotations

import argparse
import re

import pytest

from core.errors import InvalidInput
from core.options import (BY_NAME, MAX_TARGET_SIDE, OPTIONS, OptionContext, UpscaleOptions, add_cli_flags,
                          cli_values, markdown_table, parse_options)
from scripts import options_table
from tests.conftest import ROOT

CONTEXT = OptionContext(("srgan", "srresnet"), "srgan")


def test_nothing_sent_gives_the_defaults_and_the_default_model():
    assert parse_options({}, CONTEXT) == UpscaleOptions(model="srgan")
    assert parse_options({name: "" for name in BY_NAME}, CONTEXT) == UpscaleOptions(model="srgan")  # empty = not sent


def test_text_becomes_typed_values():
    parsed = parse_options({"model": "SRResNet", "scale": " 2.5 ", "strength": ".25", "format": "JPG",
                            "quality": "70", "ensemble": "Yes"}, CONTEXT)
    assert parsed == UpscaleOptions(model="srresnet", scale=2.5, strength=0.25, output_format="jpeg", quality=70,
                                    ensemble=True)
    assert parse_options({"width": "300", "height": "200", "fit": "COVER"}, CONTEXT) == UpscaleOptions(
        model="srgan", width=300, height=200, fit="cover")


def test_a_target_side_stops_at_the_longest_side_an_output_format_holds():
    assert (BY_NAME["width"].maximum, BY_NAME["height"].maximum) == (MAX_TARGET_SIDE, MAX_TARGET_SIDE)
    assert parse_options({"width": str(MAX_TARGET_SIDE)}, CONTEXT).width == MAX_TARGET_SIDE
    with pytest.raises(InvalidInput, match=f"height must be a whole number from 1 to {MAX_TARGET_SIDE}, not '"):
        parse_options({"height": str(MAX_TARGET_SIDE + 1)}, CONTEXT)


def test_choices_may_depend_on_the_context_and_the_model():
    context = OptionContext(("srgan",), "srgan")
    with pytest.raises(InvalidInput, match="model must be one of srgan, not 'srresnet'"):
        parse_options({"model": "srresnet"}, context)
    assert BY_NAME["model"].describe(CONTEXT)["choices_by_model"] == {"srgan": ["srgan", "srresnet"],
                                                                     "srresnet": ["srgan", "srresnet"]}


DENOISING = OptionContext(("srgan", "realcugan"), "srgan", {"srgan": ("none",), "realcugan": ("none", "1", "3")})


@pytest.mark.parametrize("sent, named", [
    ({"ensemble": "yes"}, "ensemble='yes' changes only the model's output, and with strength='0' no model runs"),
    ({"model": "realcugan", "denoise": "3"}, "denoise='3' changes only the model's output, and with strength='0'"),
    ({"model": "realcugan", "denoise": "1", "ensemble": "on"},
     "ensemble='on' and denoise='1' change only the model's output, and with strength='0' no model runs (the answer "
     "is the Lanczos enlargement alone): send a strength above 0, or leave them out"),
])
@pytest.mark.parametrize("strength", ["0", "0.0"])
def test_options_of_the_model_alone_are_refused_where_no_model_runs(sent, named, strength):
    with pytest.raises(InvalidInput, match=re.escape(named.replace("'0'", repr(strength)))):
        parse_options({**sent, "strength": strength}, DENOISING)
    # The web page's route runs the model at any strength: its answer carries the model's output too.
    assert parse_options({**sent, "strength": strength}, DENOISING, with_layers=True).strength == 0


def test_their_defaults_and_an_invalid_strength_are_not_named_with_them():
    assert parse_options({"strength": "0", "ensemble": "false", "model": "realcugan", "denoise": "none"},
                         DENOISING).ensemble is False
    with pytest.raises(InvalidInput) as refused:
        parse_options({"strength": "none", "ensemble": "true"}, DENOISING)
    assert refused.value.message == "strength must be a number from 0 to 1, not 'none'"


def test_cli_flags_are_the_schema_and_parse_the_same_way():
    parser = argparse.ArgumentParser()
    add_cli_flags(parser, CONTEXT)
    args = parser.parse_args(["--scale", "1.5", "--strength", "0.5", "--ensemble", "--format", "webp"])
    assert parse_options(cli_values(args), CONTEXT) == UpscaleOptions(model="srgan", scale=1.5, strength=0.5,
                                                                       ensemble=True, output_format="webp")
    flags = {action.dest for action in parser._actions} - {"help"}
    assert flags == {option.name for option in OPTIONS}


@pytest.mark.parametrize("document", ["README.md", "docs/inputs.md"])
def test_the_docs_hold_the_schemas_table(document):
    # scripts/options_table.py prints it; paste its output when an option changes.
    assert options_table.markdown_table is markdown_table
    assert markdown_table() in (ROOT / document).read_text()
