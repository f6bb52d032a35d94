"""How both image routes read their form: every field is taken as sent or refused with a 400 naming it.

Nothing here reaches the network: each form is refused before the image is decoded, or the image is 8x8.
"""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from werkzeug.datastructures import MultiDict

from tests.core.test_images import pattern, save

ROUTES = ("/model/predict", "/app/upscale")
TINY = save(Image.fromarray(pattern(8, 8)))


def image_part(data: bytes = TINY, name: str = "tiny.png") -> tuple[io.BytesIO, str]:
    return io.BytesIO(data), name


def send(client, route: str, fields: list[tuple[str, object]], query: str = ""):
    return client.post(route + query, data=MultiDict(fields), content_type="multipart/form-data")


def refused(response, *fragments: str) -> str:
    assert response.status_code == 400, (response.status_code, response.data[:200])
    assert response.is_json and set(response.json) == {"message"}
    message = response.json["message"]
    assert all(fragment in message for fragment in fragments), message
    return message


def output_size(response) -> str:
    """The answer's size on either route: a header of /model/predict, the result event of the page's stream."""
    assert response.status_code == 200, response.data[:300]
    if response.mimetype != "application/x-ndjson":
        return response.headers["X-Output-Size"]
    result = json.loads(response.data.splitlines()[-1])
    assert result["event"] == "result", result
    return f"{result['width']}x{result['height']}"


# --- The image ----------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_a_second_image_is_refused_not_dropped(client, route):
    response = send(client, route, [("image", image_part()), ("image", image_part(name="other.png"))])
    refused(response, "2 files were sent in the field 'image'", "one image per request")


@pytest.mark.parametrize("route", ROUTES)
def test_an_image_sent_as_a_text_field_says_how_to_send_a_file(client, route):
    # curl -F image=<photo.png sends the file's bytes as a text field, -F image=@photo.png as a file.
    response = send(client, route, [("image", "not a file part")])
    refused(response, "image was sent as a text field, not a file", "curl -F image=@photo.png")


@pytest.mark.parametrize("route", ROUTES)
def test_an_image_named_in_the_query_is_refused(client, route):
    response = send(client, route, [("image", image_part())], query="?image=photo.png")
    refused(response, "image was sent in the query string")


@pytest.mark.parametrize("headers, data, fragment", [
    ({"Content-Type": "application/json"}, b'{"scale": 2}', "(multipart/form-data); the request's body is application/json"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"scale=2",
     "the request's body is application/x-www-form-urlencoded"),
    ({}, TINY, "the request's body has no Content-Type"),
    ({"Content-Type": "multipart/form-data"}, b"--b\r\n", "the Content-Type multipart/form-data has no boundary"),
    ({"Content-Type": 'multipart/form-data; boundary=""'}, b"--\r\n", "multipart/form-data has no boundary parameter, "
                                                                       "or an empty one"),
])
def test_a_body_that_is_not_a_multipart_form_is_named(client, headers, data, fragment):
    for route in ROUTES:
        refused(client.post(route, data=data, headers=headers), "no image: send the file as the multipart form field "
                "'image'", fragment)


def multipart(*parts: tuple[bytes, bytes], boundary: bytes = b"b", closed: bool = True) -> bytes:
    """A multipart body written by hand: each part's Content-Disposition parameters and its bytes."""
    body = b"".join(b"--" + boundary + b"\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\n" + data
                    + b"\r\n" for disposition, data in parts)
    return body + (b"--" + boundary + b"--\r\n" if closed else b"")


IMAGE_PART = (b'name="image"; filename="tiny.png"', TINY)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("body", [
    multipart(IMAGE_PART, closed=False),
    multipart(IMAGE_PART)[:len(TINY) // 2],
    multipart(IMAGE_PART, boundary=b"other"),
    multipart((b'name="image"; filename="caf\xe9.png"', TINY)),  # a Latin-1 file name: not UTF-8
    multipart(IMAGE_PART, (b'name="sc\xe4le"', b"2")),
], ids=["never-closed", "cut-off", "other-boundary", "latin-1-file-name", "latin-1-field-name"])
def test_a_multipart_body_that_cannot_be_read_is_named_not_taken_for_no_image(client, route, body):
    # Werkzeug drops the whole form silently on a body it cannot parse: the image was sent, so "no image" misled.
    response = client.post(route, data=body, content_type="multipart/form-data; boundary=b")
    message = refused(response, "the request's body is not a multipart form that can be read",
                      "each part starts with the line '--b', the last ends with '--b--', and the parts' headers "
                      "are UTF-8")
    assert "no image" not in message


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("disposition", ['form-data; filename="tiny.png"', 'form-data; name=""; filename="tiny.png"'])
def test_a_part_without_a_name_is_named_as_such(client, route, disposition):
    body = (f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + TINY
            + b"\r\n--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n")
    response = client.post(route, data=body, content_type="multipart/form-data; boundary=b")
    refused(response, "unknown field", "'x'")  # the other parts are still named
    if "name=" not in disposition:
        refused(response, "a part of the form has no name (its Content-Disposition needs name=\"image\"")


# --- Fields -------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_an_option_sent_twice_with_different_values_is_refused(client, route):
    twice = send(client, route, [("image", image_part()), ("scale", "2"), ("scale", "3")])
    refused(twice, "scale was sent 2 times with different values ('2', '3'); send it once")
    # Werkzeug's values put the query first: the form's value was dropped.
    query_and_form = send(client, route, [("image", image_part()), ("scale", "2")], query="?scale=3")
    refused(query_and_form, "scale was sent 2 times with different values ('3', '2')")


@pytest.mark.parametrize("route", ROUTES)
def test_an_option_sent_twice_with_the_same_value_is_that_value(client, route):
    response = send(client, route, [("image", image_part()), ("scale", "2")], query="?scale=2")
    assert output_size(response) == "16x16"


@pytest.mark.parametrize("route", ROUTES)
def test_copies_of_an_option_that_differ_only_in_spaces_are_one_value(client, route):
    # Spaces around a value are dropped (docs/inputs.md), so ' 2' in the form is the query's 2.
    response = send(client, route, [("image", image_part()), ("scale", " 2")], query="?scale=2")
    assert output_size(response) == "16x16"


@pytest.mark.parametrize("route", ROUTES)
def test_a_blank_copy_of_an_option_counts_as_not_sent(client, route):
    response = send(client, route, [("image", image_part()), ("scale", ""), ("scale", "2")], query="?scale=%20")
    assert output_size(response) == "16x16"


@pytest.mark.parametrize("route", ROUTES)
def test_unknown_fields_are_refused_naming_each_and_the_fields(client, route):
    response = send(client, route, [("image", image_part()), ("scael", "2"), ("Scale", "2")], query="?cache=1")
    message = refused(response, "unknown fields 'cache', 'scael', 'Scale' (did you mean scale?): the fields are "
                                "denoise, ensemble, fit, format, height, image, model, quality, scale, strength, width")
    assert "scael' (did you mean" not in message


def test_a_thousand_unknown_fields_are_counted_not_all_named(client):
    fields = [("image", image_part()), *((f"field{number}", "x") for number in range(900))]
    message = refused(send(client, "/model/predict", fields), "unknown fields 'field0', 'field1'", "'field9' and 890 more:")
    assert "field10" not in message and len(message) < 400


@pytest.mark.parametrize("route", ROUTES)
def test_an_option_sent_as_a_file_is_refused(client, route):
    response = send(client, route, [("image", image_part()), ("scale", (io.BytesIO(b"2"), "scale.txt"))])
    refused(response, "scale was sent as a file; send it as a text field")


def test_every_problem_of_a_form_is_named_in_one_message(client):
    response = send(client, "/model/predict",
                    [("image", image_part()), ("image", image_part()), ("scale", "2"), ("scale", "3"), ("x", "1")])
    refused(response, "unknown field 'x'", "scale was sent 2 times", "2 files were sent in the field 'image'")


@pytest.mark.parametrize("route", ROUTES)
def test_a_long_value_is_quoted_cut_short(client, route):
    response = send(client, route, [("image", image_part()), ("width", "9" * 100_000)])
    message = refused(response, f"width must be a whole number from 1 to 2147483647, not '{'9' * 40}'... "
                                f"(100000 characters)")
    assert len(message) < 200


# --- quality ------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("fields", [[("quality", "50")], [("quality", "90"), ("format", "PNG")]])
def test_quality_with_png_is_refused_not_ignored(client, route, fields):
    response = send(client, route, [("image", image_part()), *fields])
    refused(response, "quality applies only to format jpeg or webp", "with format png, which is lossless")


@pytest.mark.parametrize("route", ROUTES)
def test_quality_with_a_format_that_has_one_is_taken(client, route):
    response = send(client, route, [("image", image_part()), ("quality", "50"), ("format", "webp")])
    assert output_size(response) == "32x32"


def test_quality_with_an_invalid_format_names_the_format_only(client):
    message = refused(send(client, "/model/predict", [("image", image_part()), ("quality", "50"), ("format", "gif")]),
                      "format must be one of png, jpeg, webp")
    assert "quality" not in message


def test_the_uploads_file_name_is_never_echoed_in_the_answer(client):
    """The answer names no file (as the original's, which set no Content-Disposition): a hostile name cannot
    split or fill a header."""
    name = 'a"b\r\nX-Evil: 1; \u00e9\u6f22.png'
    response = send(client, "/model/predict", [("image", image_part(name=name))])
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert "Content-Disposition" not in response.headers and "X-Evil" not in response.headers
    assert not any("Evil" in value or "\u00e9" in value for _, value in response.headers.items())
