"""docs/openapi.json is the app's own schema, and what it promises holds: the error answers each
route gives are documented with their body, the job form says which fields are required,
`/v1/health` names the presets, and a 405 lists the path's methods in `Allow`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rs_edit.engine.presets import AUTO, PRESETS
from rs_edit.service.app import create_app, openapi_text
from rs_edit.service.config import ServiceConfig
from rs_edit.service.health import presets_status
from rs_edit.service.standin import standin
from rs_edit.service.submit import EDIT_PRESETS

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
UNKNOWN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(openapi_text())


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(tmp_path_factory.mktemp("openapi"), config=ServiceConfig(device="cpu"))
    with TestClient(app) as c:
        yield c


def test_docs_openapi_json_is_the_apps_schema():
    text = openapi_text()
    assert text == openapi_text(), "the schema is not the same twice (not deterministic)"
    assert SCHEMA_FILE.is_file(), "docs/openapi.json is missing: run scripts/write_openapi.py"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == text, (
        "docs/openapi.json and the app's schema disagree: regenerate it with "
        "`.venv/bin/python scripts/write_openapi.py` (and review the diff)"
    )


def test_every_operation_documents_its_errors_with_the_error_body(schema):
    expected = {
        ("get", "/v1/health"): set(),
        ("post", "/v1/jobs"): {"400", "413", "422", "429", "507"},
        ("get", "/v1/jobs"): {"422"},
        ("get", "/v1/jobs/{job_id}"): {"404", "422"},
        ("delete", "/v1/jobs/{job_id}"): {"404", "409", "422"},
        ("get", "/v1/jobs/{job_id}/events"): {"404", "422"},
        ("get", "/v1/jobs/{job_id}/result"): {"404", "409", "422"},
    }
    every_route = {"400", "401", "403", "413", "421", "500"}
    operations = {
        (method, path): op for path, item in schema["paths"].items() for method, op in item.items()
    }
    assert set(operations) == set(expected)
    for key, own in expected.items():
        responses = operations[key]["responses"]
        errors = {status for status in responses if status[0] in "45"}
        assert errors == every_route | own, key
        for status in errors:
            content = responses[status]["content"]
            assert content == {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
            }, (key, status)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    body = schema["components"]["schemas"]["ErrorDetail"]
    assert set(body["required"]) == {"code", "message"}


def test_job_form_says_what_is_required_and_allowed(schema):
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]
    assert body["required"] is True
    ref = body["content"]["multipart/form-data"]["schema"]["$ref"]
    form = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert form["required"] == ["image", "prompt"]
    props = form["properties"]
    assert props["preset"]["enum"] == list(EDIT_PRESETS) and props["preset"]["default"] == AUTO
    assert "reference" not in props["preset"]["enum"]  # bench only: refused by the API
    assert props["variants"]["minimum"] == 1 and props["variants"]["maximum"] == 8
    # A form has no null: optional fields are left out, their schema is their type.
    assert all("anyOf" not in prop for prop in props.values())
    assert props["seed"]["type"] == "integer" and props["mask"]["type"] == "string"
    # The example to look like: an upload like the mask, its polygons as text like the ROI.
    assert props["reference"]["type"] == "string" and "contentMediaType" in props["reference"]
    assert props["reference_roi"]["type"] == "string"
    weight = props["reference_weight"]
    assert weight["type"] == "number" and (weight["minimum"], weight["maximum"]) == (0, 1)


def test_health_names_the_presets(client):
    presets = client.get("/v1/health").json()["presets"]
    assert presets == {"default": "auto", "auto": "fast", "names": list(EDIT_PRESETS)}
    assert presets["names"][0] == "auto" and set(presets["names"][1:]) < set(PRESETS)
    assert presets_status("cuda")["auto"] == "balanced"
    assert client.get("/v1/health").json()["clip"]["default"]  # the clip entry stays


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/jobs", "GET, POST"),
        ("DELETE", "/v1/health", "GET"),
        ("POST", f"/v1/jobs/{UNKNOWN}", "DELETE, GET"),
        ("PATCH", f"/v1/jobs/{UNKNOWN}/result", "GET"),
        ("HEAD", f"/v1/jobs/{UNKNOWN}", "DELETE, GET"),
    ],
)
def test_405_lists_every_method_of_the_path(client, method, path, allow):
    r = client.request(method, path)
    assert r.status_code == 405
    assert r.headers["allow"] == allow
    if method != "HEAD":  # no body
        assert r.json()["error"]["code"] == "method_not_allowed"
        assert allow in r.json()["error"]["message"]


def test_form_values_out_of_range_are_400_wrong_types_422(tmp_path):
    app = create_app(tmp_path, config=ServiceConfig(device="cpu"), edit_fn=standin(1))
    image = {"image": ("x.tif", b"II*\x00", "image/tiff")}
    with TestClient(app) as c:
        r = c.post("/v1/jobs", files=image, data={"prompt": "x", "variants": "0", "dilate": "-1"})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == {
            "code": "bad_parameter",
            "message": "variants must be between 1 and 8, got '0'; "
            "dilate must be between 0 and 4096, got '-1'",
        }
        r = c.post("/v1/jobs", files=image, data={"prompt": "x", "variants": "0", "seed": "x"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        r = c.post("/v1/jobs", files=image, data={"prompt": "x", "preset": "reference"})
        assert r.status_code == 400 and "rs-edit bench" in r.json()["error"]["message"]


def test_real_answers_match_the_documented_models(tmp_path):
    """A job's life through the API, each answer read by the model the schema documents."""
    from service_helpers import rgb_tile, submit, wait

    from rs_edit.service.models import Health, Job, JobList

    tile = rgb_tile(tmp_path / "tile.tif", size=32)
    app = create_app(tmp_path / "data", config=ServiceConfig(device="cpu"), edit_fn=standin(1))
    with TestClient(app) as c:
        Health.model_validate(c.get("/v1/health").json(), strict=True)
        r = submit(c, tile, clip="tiny-random", variants=2)
        assert r.status_code == 201, r.text
        queued = Job.model_validate(r.json(), strict=True)
        assert r.headers["location"] == f"/v1/jobs/{queued.id}"
        done = Job.model_validate(wait(c, queued.id), strict=True)
        assert done.status == "succeeded" and len(done.results) == 2 and done.report
        listed = JobList.model_validate(c.get("/v1/jobs").json(), strict=True)
        assert [job.id for job in listed.jobs] == [queued.id]
        Job.model_validate(c.delete(f"/v1/jobs/{queued.id}").json(), strict=True)
