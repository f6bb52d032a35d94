"""GET /model/metadata and the Swagger document."""
from __future__ import annotations

from flask_restx.schemas import validate

from core.containers import ACCEPTED_FORMATS
from core.models import precision
from core.models.specs import SPECS
from core.options import OPTIONS


def test_metadata_has_the_max_fields_and_models(client):
    response = client.get("/model/metadata")
    assert response.status_code == 200
    body = response.json
    assert body["id"] == "max-image-super-resolution-generator"
    for key in ("name", "description", "type", "source", "license"):
        assert body[key]
    assert body["default_model"] == "srgan"
    models = {m["id"]: m for m in body["models"]}
    assert set(models) == {"srgan", "srresnet"}
    assert models["srgan"]["default"] is True
    assert models["srgan"]["parameters"] == 1_554_883
    assert models["srgan"]["license"] and models["srgan"]["use_when"]


def test_metadata_publishes_every_pixel_limit_as_the_server_has_it(client, service, monkeypatch):
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_ensemble_pixels": 123}))
    assert client.get("/model/metadata").json["limits"] == {
        "max_upload_bytes": service.settings.max_upload_bytes, "max_input_pixels": service.settings.max_input_pixels,
        "max_output_pixels": service.settings.max_output_pixels, "max_ensemble_pixels": 123}


def test_metadata_says_each_models_precision(client):
    """PRECISION=auto (the tests' setting): bf16 exactly for the models measured to allow it, on a CPU with it."""
    models = {m["id"]: m for m in client.get("/model/metadata").json["models"]}
    for name, entry in models.items():
        expected = "bf16" if SPECS[name].bf16_ok and precision.native_bf16() else "f32"
        assert entry["precision"] == expected


def test_swagger_ui_and_document(client):
    page = client.get("/")
    assert page.status_code == 200 and b"swagger" in page.data.lower()
    document = client.get("/swagger.json").json
    assert {"/model/metadata", "/model/predict"} <= set(document["paths"])
    parameters = {p["name"]: p for p in document["paths"]["/model/predict"]["post"]["parameters"]}
    assert parameters["image"]["type"] == "file" and parameters["image"]["in"] == "formData"
    assert parameters["image"]["required"] is True  # as in the original MAX document
    assert not any(parameters[option.name].get("required") for option in OPTIONS)
    assert parameters["scale"]["maximum"] == 8  # each option's range and default: tests/api/test_inputs.py


def test_the_swagger_document_is_valid_openapi_2_and_lists_each_status_a_route_answers(client):
    document = client.get("/swagger.json").json
    assert validate(document)  # raises naming the first error against the OpenAPI 2.0 schema
    predict = document["paths"]["/model/predict"]["post"]["responses"]
    compressed = client.post("/model/predict", data=b"x", headers={"Content-Encoding": "gzip"})
    assert str(compressed.status_code) in predict and {"200", "400", "413", "415", "503"} <= set(predict)
    metadata = document["paths"]["/model/metadata"]["get"]["responses"]
    unreadable_mask = client.get("/model/metadata", headers={"X-Fields": "{id"})
    assert {"200", str(unreadable_mask.status_code)} <= set(metadata)

def test_metadata_publishes_the_accepted_upload_formats(client):
    """The page's file chooser reads them here: every format the server sniffs, with its media type."""
    published = client.get("/model/metadata").json["input_formats"]
    assert [entry["format"] for entry in published] == list(ACCEPTED_FORMATS)
    by_format = {entry["format"]: entry for entry in published}
    assert by_format["JPEG"]["content_type"] == "image/jpeg"
    assert {".jpg", ".jpeg"} <= set(by_format["JPEG"]["suffixes"])
    assert by_format["TIFF"]["suffixes"] == [".tif", ".tiff"]
