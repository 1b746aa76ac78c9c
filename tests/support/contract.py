"""Check our responses against the contract's own OpenAPI documents."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema

SPEC_DIR = Path(__file__).resolve().parents[1] / "contract_openapi"
WRITE_PATH = "/projects/{projectIdOrName}/integrations/{integrationId}/objects/{objectName}"


@cache
def write_spec() -> dict[str, Any]:
    return dict(json.loads((SPEC_DIR / "write.json").read_text()))


@cache
def platform_spec() -> dict[str, Any]:
    return dict(json.loads((SPEC_DIR / "api.bundled.json").read_text()))


def write_examples() -> dict[str, dict[str, Any]]:
    """The request examples the contract says we must accept, by name."""
    body = write_spec()["paths"][WRITE_PATH]["post"]["requestBody"]["content"]["application/json"]
    return {name: example["value"] for name, example in body["examples"].items()}


def assert_write_response(response: httpx.Response) -> None:
    """The write endpoint's response matches the contract for its status and media type."""
    responses = write_spec()["paths"][WRITE_PATH]["post"]["responses"]
    spec = responses.get(str(response.status_code), responses["default"])
    media = response.headers["content-type"].split(";")[0]
    assert media in spec["content"], f"{response.status_code} answered as {media}"
    if media == "text/plain":
        assert response.text.strip(), "a 400 must name the problem"
        assert "\n" not in response.text.strip(), "a 400 is one line"
        return
    _validate(response.json(), spec["content"][media]["schema"])


def assert_platform_schema(instance: Any, schema_name: str) -> None:
    """Validate against `#/components/schemas/<name>` of the platform API."""
    spec = platform_spec()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    _validate(instance, schema)


@cache
def notifications_spec() -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((SPEC_DIR / "notifications.yaml").read_text()))


def assert_notification_schema(instance: Any, schema_name: str) -> None:
    """Validate against `#/components/schemas/<name>` of the notification payloads."""
    spec = notifications_spec()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    _validate(instance, schema)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert_platform_schema(body, "ApiProblem")
    assert body["status"] == status
    return body


def _validate(instance: Any, schema: dict[str, Any]) -> None:
    # OpenAPI 3.0 schemas are JSON Schema draft 4 (boolean exclusiveMaximum and all).
    jsonschema.validate(instance, schema, cls=jsonschema.Draft4Validator)
