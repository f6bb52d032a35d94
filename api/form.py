"""The form of both image routes, /model/predict and the page's /app/upscale, read one way.

Werkzeug reads a form leniently: a second image, a field sent twice, an option in both the query and the
form, a misspelt field and an option sent as a file all arrive without complaint, and a route that reads
``request.values`` takes the first value it finds and drops the rest. Here each of them is a 400 that names
it, so that nothing a client sent is silently ignored. So is a body Werkzeug cannot parse, which it would
drop whole without a word (``FormRequest``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import IO

from flask import Request
from werkzeug.formparser import FormDataParser

from core.errors import InvalidInput
from core.options import OPTIONS, quoted
from core.upload import SpooledUpload, Upload

IMAGE_FIELD = "image"
OPTION_NAMES = tuple(option.name for option in OPTIONS)
MULTIPART = "multipart/form-data"
# Unknown fields named in a message, at most: a form may have a thousand.
NAMED_FIELDS = 10


class KeepingFormDataParser(FormDataParser):
    """Werkzeug's form parser, which keeps the error that makes it drop a form instead of dropping it unsaid."""

    error: ValueError | None = None

    def parse(self, stream: IO[bytes], mimetype: str, content_length: int | None,
              options: dict[str, str] | None = None) -> tuple[IO[bytes], object, object]:
        self.silent = False  # silent, Werkzeug's default, drops the error with the form; it is kept here instead
        try:
            return super().parse(stream, mimetype, content_length, options)
        except ValueError as error:  # a body cut off, never closed, with another boundary, or headers not UTF-8
            self.error = error
            return stream, self.cls(), self.cls()


class FormRequest(Request):
    """The app's request: as Flask's, and it says why a multipart body could not be read (``form_error``)."""

    form_data_parser_class = KeepingFormDataParser
    _parser: KeepingFormDataParser | None = None

    def make_form_data_parser(self) -> FormDataParser:
        self._parser = super().make_form_data_parser()
        return self._parser

    @property
    def form_error(self) -> ValueError | None:
        """Why Werkzeug could not parse the form, once it has tried; None when it could or has not tried."""
        return self._parser.error if self._parser else None


@dataclass(frozen=True)
class Form:
    """The image, in the file werkzeug spooled it to (core/upload.py), and each option's text as sent (an option not
    sent is absent)."""

    image: Upload
    options: dict[str, str]


def read_form(request: FormRequest) -> Form:
    """The image and the options of ``request``; one 400 naming every field that cannot be taken as sent."""
    problems = [*_unknown_fields(request), *_options_sent_as_files(request), *_repeated_options(request)]
    image = _image(request, problems)
    if problems:
        raise InvalidInput("; ".join(problems))
    return Form(image, {name: values[0] for name in OPTION_NAMES if (values := _given(request, name))})


def _image(request: FormRequest, problems: list[str]) -> Upload:
    files = request.files.getlist(IMAGE_FIELD)
    if request.form_error is not None and request.mimetype_params.get("boundary"):  # without one, _no_image says so
        problems.append(_unreadable_body(request))
    if IMAGE_FIELD in request.args:
        problems.append(f"{IMAGE_FIELD} was sent in the query string; send the image as the multipart file "
                        f"field '{IMAGE_FIELD}'")
    if IMAGE_FIELD in request.form:
        # What curl's -F image=<photo.png sends (a text field), where -F image=@photo.png sends the file.
        problems.append(f"{IMAGE_FIELD} was sent as a text field, not a file: send it as a file part with a "
                        f"filename (curl -F {IMAGE_FIELD}=@photo.png)")
    if len(files) > 1:
        problems.append(f"{len(files)} files were sent in the field '{IMAGE_FIELD}'; send one image per request")
    if not files and not problems:
        problems.append(_no_image(request))
    return SpooledUpload(files[0].stream) if len(files) == 1 else b""


def _unreadable_body(request: FormRequest) -> str:
    delimiter = "--" + request.mimetype_params["boundary"]
    return (f"the request's body is not a multipart form that can be read ({request.form_error}): in one, each "
            f"part starts with the line {quoted(delimiter)}, the last ends with {quoted(delimiter + '--')}, and the "
            f"parts' headers are UTF-8; this body was cut off, never closed, written with another boundary, or a "
            f"name in it is not UTF-8")


def _no_image(request: Request) -> str:
    missing = f"no image: send the file as the multipart form field '{IMAGE_FIELD}'"
    if request.mimetype != MULTIPART:
        sent = f"is {request.mimetype}" if request.mimetype else "has no Content-Type"
        return f"{missing} ({MULTIPART}); the request's body {sent}"
    if not request.mimetype_params.get("boundary"):
        return f"{missing}; the Content-Type {MULTIPART} has no boundary parameter, or an empty one"
    return missing


def _unknown_fields(request: Request) -> list[str]:
    known = {IMAGE_FIELD, *OPTION_NAMES}
    sent = dict.fromkeys([*request.args, *request.form, *request.files])
    # Werkzeug files a part whose Content-Disposition has no name under None.
    nameless = [f"a part of the form has no name (its Content-Disposition needs name=\"{IMAGE_FIELD}\" or an "
                f"option's name)"] if None in sent else []
    unknown = [name for name in sent if name is not None and name not in known]
    if not unknown:
        return nameless
    # Field names are matched exactly, as the MAX contract's are: say so where only the case is off.
    hints = {name: lower for name in unknown if (lower := name.strip().lower()) in known}
    named = ", ".join(quoted(name) + (f" (did you mean {hints[name]}?)" if name in hints else "")
                      for name in unknown[:NAMED_FIELDS])
    more = f" and {len(unknown) - NAMED_FIELDS} more" if len(unknown) > NAMED_FIELDS else ""
    return [*nameless, f"unknown field{'s' * (len(unknown) > 1)} {named}{more}: the fields are "
                       f"{', '.join(sorted(known))}"]


def _options_sent_as_files(request: Request) -> list[str]:
    return [f"{name} was sent as a file; send it as a text field" for name in OPTION_NAMES if name in request.files]


def _given(request: Request, name: str) -> list[str]:
    """The values sent for option ``name``, in the query then the form; a blank one counts as not sent, as in
    ``parse_options`` (so ``?scale=`` beside a form's scale=2 is scale 2)."""
    return [value for value in request.values.getlist(name) if value.strip()]


def _repeated_options(request: Request) -> list[str]:
    """A field sent more than once with different values (in the form, the query, or one in each); values that
    differ only in the spaces around them are one value, as ``parse_options`` drops those spaces."""
    problems = []
    for name in OPTION_NAMES:
        values = _given(request, name)
        if len({value.strip() for value in values}) > 1:
            problems.append(f"{name} was sent {len(values)} times with different values "
                            f"({', '.join(map(quoted, values))}); send it once")
    return problems
