"""The options of one upscale, defined once.

``OPTIONS`` is read by every route: /model/predict builds its Flask-RESTX parser and Swagger
parameters from it, the page's route parses its form with ``parse_options`` too, /model/metadata
publishes ``describe_options`` (the page builds its controls from that), and ``sr-upscale`` makes
its flags with ``add_cli_flags``. A value therefore means the same everywhere (``ensemble=yes`` is
true on every route, ``ensemble=maybe`` a 400 on every route).

This module imports nothing heavy (no TensorFlow, no Keras), so ``sr-upscale --help`` stays fast.
An option's allowed values may depend on the server (the models it offers) and on the model
asked for: ``Option.choices`` is then a function of the ``OptionContext`` and the model.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from core.errors import InvalidInput
from core.formats import JPEG_FULL_COLOUR_QUALITY, MAX_SIDE, OUTPUT_FORMATS
from core.models.levels import DENOISE_LEVELS, NO_DENOISE

FITS = ("contain", "cover", "fill")
# The output formats that quality applies to: png is lossless.
QUALITY_FORMATS = ("jpeg", "webp")
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
# Plain decimals only: Python's float() would also take "nan", "inf", "1e3" and "1_0", and float() and int()
# take any script's digits ("٣"), as would \d, hence [0-9].
DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")
WHOLE = re.compile(r"[0-9]+")
# The longest side any output format holds. A target beyond it could never be answered, and bounding it keeps
# the size arithmetic in floats: a 309-digit width would overflow them.
MAX_TARGET_SIDE = max(MAX_SIDE.values())
# A value quoted back in a message is cut to this many characters: a text field may hold 500 kB, and the
# message also goes into the request's log line.
QUOTED_CHARACTERS = 40


@dataclass(frozen=True)
class OptionContext:
    """What the allowed values depend on: the models this server (or this CLI) offers."""

    models: tuple[str, ...]
    default_model: str
    # Each model's denoise levels at any of its scales (which level exists at which scale: /model/metadata).
    denoise_levels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


Choices = tuple[str, ...] | Callable[[OptionContext, str | None], tuple[str, ...]]


@dataclass(frozen=True)
class Option:
    name: str
    kind: str  # "number", "integer", "choice" or "boolean"
    help: str
    default: object = None
    minimum: float | None = None
    maximum: float | None = None
    choices: Choices = ()
    # Other spellings accepted for a choice, e.g. jpg for jpeg; choices are matched in any case.
    aliases: Mapping[str, str] = field(default_factory=dict)
    # Default shown to people when ``default`` is None because the server decides it.
    default_text: str | None = None

    def allowed_choices(self, context: OptionContext, model: str | None) -> tuple[str, ...]:
        return self.choices(context, model) if callable(self.choices) else self.choices

    def allowed(self, context: OptionContext, model: str | None = None) -> str:
        """What this option accepts, in words, for error messages and help."""
        if self.kind == "boolean":
            return f"true or false ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)})"
        if self.kind == "choice":
            aliases = "".join(f" ({alias} for {name})" for alias, name in self.aliases.items())
            return "one of " + ", ".join(self.allowed_choices(context, model)) + aliases
        noun = "a number" if self.kind == "number" else "a whole number"
        return f"{noun} from {_number(self.minimum)} to {_number(self.maximum)}"

    def read(self, text: str, context: OptionContext, model: str | None) -> object:
        """The typed value of ``text``; ValueError when it is not allowed."""
        text = text.strip()
        if self.kind == "boolean":
            word = text.lower()
            if word not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError(text)
            return word in TRUE_WORDS
        if self.kind == "choice":
            word = self.aliases.get(text.lower(), text.lower())
            if word not in self.allowed_choices(context, model):
                raise ValueError(text)
            return word
        if not (DECIMAL if self.kind == "number" else WHOLE).fullmatch(text):
            raise ValueError(text)
        # The range is checked on the decimal as written: a float would round 8.0000000000000000001 onto 8.
        if not self.minimum <= Decimal(text) <= self.maximum:
            raise ValueError(text)
        return float(text) if self.kind == "number" else int(text)

    def describe(self, context: OptionContext) -> dict[str, object]:
        """This option for /model/metadata: type, range or choices, default, help."""
        entry: dict[str, object] = {"name": self.name, "type": self.kind, "help": self.help,
                                    "default": self._default(context), "allowed": self.allowed(context)}
        if self.kind in ("number", "integer"):
            entry.update(minimum=self.minimum, maximum=self.maximum)
        if self.kind == "choice":
            entry["choices"] = list(self.allowed_choices(context, None))
            if callable(self.choices):
                entry["choices_by_model"] = {model: list(self.allowed_choices(context, model))
                                             for model in context.models}
            if self.aliases:
                entry["aliases"] = dict(self.aliases)
        return entry

    def _default(self, context: OptionContext) -> object:
        return context.default_model if self.name == "model" else self.default

    def swagger(self) -> dict[str, object]:
        """The Swagger (OpenAPI 2) schema of this parameter."""
        schema: dict[str, object] = {"type": {"number": "number", "integer": "integer",
                                              "boolean": "boolean"}.get(self.kind, "string")}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.kind == "choice" and not callable(self.choices):
            schema["enum"] = list(self.choices)
        return schema

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def default_words(self) -> str:
        """The default as help text shows it: the value, or what the server decides."""
        return self.default_text or _show(self.default)


def _number(value: float) -> str:
    # A whole value in full: "g" alone writes 2147483647 as 2.14748e+09.
    return str(int(value)) if value == int(value) else f"{value:g}"


def _offered_models(context: OptionContext, model: str | None) -> tuple[str, ...]:
    return context.models


def _denoise_levels(context: OptionContext, model: str | None) -> tuple[str, ...]:
    """The model's levels; with no model, every level some offered model has."""
    if model is not None:
        return context.denoise_levels.get(model, (NO_DENOISE,))
    offered = {level for levels in context.denoise_levels.values() for level in levels} | {NO_DENOISE}
    return tuple(level for level in DENOISE_LEVELS if level in offered)


OPTIONS: tuple[Option, ...] = (
    Option("model", "choice", "Which model runs; /model/metadata describes each", choices=_offered_models,
           default_text="the server's default model"),
    Option("scale", "number", "Output size as a multiple of the input's: round(width x scale) by "
           "round(height x scale); the default applies when neither width nor height is sent, "
           "and scale cannot be combined with them",
           default=4, minimum=1, maximum=8),
    Option("width", "integer", "Target width in pixels; alone, the height follows the input's aspect ratio",
           minimum=1, maximum=MAX_TARGET_SIDE),
    Option("height", "integer", "Target height in pixels; alone, the width follows the input's aspect ratio",
           minimum=1, maximum=MAX_TARGET_SIDE),
    Option("fit", "choice", "With both width and height: contain (the largest size with the input's aspect "
           "ratio inside them), cover (exactly that size, the centre cropped) or fill (exactly that size, stretched)",
           default="contain", choices=FITS),
    Option("strength", "number", "How much of the model's output: strength x model + (1 - strength) x a "
           "Lanczos enlargement of the input. At 0 no model runs, and ensemble and denoise, which would change "
           "nothing, are refused with it; the web page's route, whose answer carries the model's output too, runs "
           "the model at any strength",
           default=1, minimum=0, maximum=1),
    Option("format", "choice", "Output format (any case)", default="png", choices=tuple(OUTPUT_FORMATS),
           aliases={"jpg": "jpeg"}),
    Option("quality", "integer", f"Quality for {' and '.join(QUALITY_FORMATS)} (refused with png, which is lossless); from "
           f"{JPEG_FULL_COLOUR_QUALITY}, jpeg keeps colour at full resolution (4:4:4), below it at half (4:2:0)",
           default=90, minimum=1, maximum=100),
    Option("ensemble", "boolean", "Average the 8 flips and rotations: a little better, 8x slower", default=False),
    Option("denoise", "choice", "How hard a model with denoise levels (realcugan) cleans noise and compression: "
           "none, conservative (keeps the most detail), then 1 to 3; /model/metadata lists each model's levels "
           "per scale", default=NO_DENOISE, choices=_denoise_levels),
)
BY_NAME = {option.name: option for option in OPTIONS}
DEFAULT_SCALE = float(BY_NAME["scale"].default)
# The options that change only the model's output: where no model runs they would change nothing.
MODEL_ONLY = ("ensemble", "denoise")


def runs_model(strength: float, with_layers: bool) -> bool:
    """Whether the network runs: strength 0 is the Lanczos enlargement alone, unless the answer carries the
    model's output too (``with_layers``: the web page's answer, whose slider blends the two)."""
    return strength > 0 or with_layers


@dataclass(frozen=True)
class UpscaleOptions:
    """Typed options. ``scale`` None means the default scale unless ``width`` or ``height`` is given."""

    model: str | None = None
    scale: float | None = None
    width: int | None = None
    height: int | None = None
    fit: str = "contain"
    strength: float = 1.0
    output_format: str = "png"
    quality: int = 90
    ensemble: bool = False
    denoise: str = NO_DENOISE

    @property
    def target(self) -> bool:
        return self.width is not None or self.height is not None


# Where each option lands in UpscaleOptions, when its field is named differently.
FIELDS = {"format": "output_format"}


def parse_options(values: Mapping[str, str | None], context: OptionContext,
                  with_layers: bool = False) -> UpscaleOptions:
    """The options sent as text (a form, a query, CLI flags); one 400 naming every bad field.

    A field sent empty counts as not sent; the model not sent is the context's default model. ``with_layers``:
    the answer carries the model's output at any strength (the web page's route), as ``runs_model`` says.
    """
    sent = {option.name: values.get(option.name) for option in OPTIONS}
    sent = {name: text for name, text in sent.items() if text is not None and text.strip() != ""}
    problems: list[str] = []
    typed: dict[str, object] = {}
    model = _read_one(BY_NAME["model"], sent, context, None, typed, problems)
    if "model" not in sent:
        model = typed["model"] = context.default_model  # the other options' allowed values are then its
    for option in OPTIONS[1:]:
        _read_one(option, sent, context, model, typed, problems)
    problems += combination_problems(sent)
    problems += _quality_problems(sent, typed)
    problems += _model_only_problems(sent, typed, with_layers)
    if problems:
        raise InvalidInput("; ".join(problems))
    return UpscaleOptions(**{FIELDS.get(name, name): value for name, value in typed.items()})


def form_fields(options: UpscaleOptions) -> dict[str, str]:
    """``options`` as /model/predict's form fields, which ``parse_options`` reads back to the same options:
    the model, and each other option not at its default (a default the server would apply anyway)."""
    fields = {}
    for option in OPTIONS:
        value = getattr(options, FIELDS.get(option.name, option.name))
        if value is not None and (option.name == "model" or value != option.default):
            fields[option.name] = _show(value)
    return fields


def _read_one(option: Option, sent: dict[str, str], context: OptionContext, model: str | None,
              typed: dict[str, object], problems: list[str]) -> object:
    if option.name not in sent:
        return None
    try:
        typed[option.name] = option.read(sent[option.name], context, model)
    except ValueError:
        with_model = f" with model {model}" if callable(option.choices) and option.name != "model" else ""
        problems.append(f"{option.name} must be {option.allowed(context, model)}{with_model}, "
                        f"not {quoted(sent[option.name])}")
        return None
    return typed[option.name]


def combination_problems(sent: Mapping[str, str]) -> list[str]:
    """Options that are each valid but do not go together."""
    problems = []
    targets = [name for name in ("width", "height") if name in sent]
    if "scale" in sent and targets:
        given = ", ".join(f"{name}={quoted(sent[name])}" for name in ["scale", *targets])
        problems.append(f"scale cannot be combined with width or height (sent {given}): "
                        f"send either scale or a target size")
    if "fit" in sent and len(targets) < 2:
        problems.append(f"fit applies only when both width and height are sent (sent fit={quoted(sent['fit'])}"
                        f"{''.join(f', {name}={quoted(sent[name])}' for name in targets)})")
    return problems


def _quality_problems(sent: Mapping[str, str], typed: Mapping[str, object]) -> list[str]:
    """quality with png, which is lossless: it would change nothing. An invalid format is named already."""
    if "quality" not in sent or ("format" in sent and "format" not in typed):
        return []
    output_format = typed.get("format", BY_NAME["format"].default)
    if output_format in QUALITY_FORMATS:
        return []
    return [f"quality applies only to format {' or '.join(QUALITY_FORMATS)} (sent quality={quoted(sent['quality'])} "
            f"with format {output_format}, which is lossless); send no quality with {output_format}"]


def _model_only_problems(sent: Mapping[str, str], typed: Mapping[str, object], with_layers: bool) -> list[str]:
    """ensemble or a denoise level with a strength at which no model runs. An invalid strength is named already."""
    strength = typed.get("strength", BY_NAME["strength"].default)
    if runs_model(strength, with_layers):
        return []
    idle = [name for name in MODEL_ONLY if typed.get(name, BY_NAME[name].default) != BY_NAME[name].default]
    if not idle:
        return []
    given = " and ".join(f"{name}={quoted(sent[name])}" for name in idle)
    verb, pronoun = ("changes", "it") if len(idle) == 1 else ("change", "them")
    return [f"{given} {verb} only the model's output, and with strength={quoted(sent['strength'])} no model runs "
            f"(the answer is the Lanczos enlargement alone): send a strength above 0, or leave {pronoun} out"]


def quoted(text: str) -> str:
    """``text`` as a message quotes it: its repr, cut short when long."""
    if len(text) <= QUOTED_CHARACTERS:
        return repr(text)
    return f"{text[:QUOTED_CHARACTERS]!r}... ({len(text)} characters)"


def describe_options(context: OptionContext) -> list[dict[str, object]]:
    return [option.describe(context) for option in OPTIONS]


# --- The command line ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CliValue:
    """A value the command line adds to an option's choices, as its default: ``--format auto``."""

    value: str
    meaning: str


def add_cli_flags(parser: argparse.ArgumentParser, context: OptionContext,
                  added: Mapping[str, CliValue] | None = None) -> None:
    """One flag per option (``--scale 1.5``, ``--ensemble``); values stay text for ``parse_options``, but for the
    ``added`` values, which the command line reads itself."""
    for option in OPTIONS:
        if option.kind == "boolean":
            parser.add_argument(option.flag, action="store_const", const="true", help=option.help.replace("%", "%%"))
            continue
        extra = (added or {}).get(option.name)
        allowed = option.allowed(context) + (f", or {extra.value}: {extra.meaning}" if extra else "")
        text = f"{option.help}; {allowed} (default: {extra.value if extra else option.default_words})"
        parser.add_argument(option.flag, metavar=option.name.upper(), help=text.replace("%", "%%"))


def cli_values(args: argparse.Namespace) -> dict[str, str | None]:
    return {option.name: getattr(args, option.name) for option in OPTIONS}


def _show(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return _number(value)
    return "unset" if value is None else str(value)


# --- The documentation --------------------------------------------------------------------------


def markdown_table() -> str:
    """The options table of README.md and docs/inputs.md (tests check that both hold it unchanged)."""
    rows = ["| field | default | values | meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        default = option.default_text or ("unset" if option.default is None else f"`{_show(option.default)}`")
        # The models depend on the server's MODELS setting; /model/metadata lists them.
        allowed = "an id from /model/metadata" if option.name == "model" else option.allowed(DOCUMENTED)
        rows.append(f"| `{option.name}` | {default} | {allowed} | {option.help} |")
    return "\n".join(rows)


# No model named: a model-dependent choice shows every value (denoise: every level).
DOCUMENTED = OptionContext(models=(), default_model="", denoise_levels={"": DENOISE_LEVELS})
