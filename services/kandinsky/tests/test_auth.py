"""Optional Bearer auth (KANDINSKY_API_KEY): everything but GET /health and GET / needs it."""

import pytest

pytest.importorskip("torch", reason="torch is not installed: run services/kandinsky/scripts/test.sh")
pytest.importorskip("diffusers", reason="diffusers is not installed: run services/kandinsky/scripts/test.sh")

from tests.conftest import wait_ready  # noqa: E402

KEY = "s3cret-key"
FAST = {"prompt": "a boat", "num_inference_steps": 2, "width": 64, "height": 64}
UNAUTHORIZED = {"detail": "Invalid or missing API key"}


@pytest.fixture(scope="module")
def locked(make_client):
    client = make_client(KANDINSKY_API_KEY=KEY)
    wait_ready(client)
    return client


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}],
    ids=["none", "wrong-key", "no-scheme", "basic"],
)
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/generate"), ("POST", "/reload"), ("GET", "/docs"), ("GET", "/openapi.json")]
)
def test_protected_routes_answer_401_without_the_key(locked, headers, method, path):
    response = locked.request(method, path, json=FAST, headers=headers)
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_key_opens_generate(locked):
    response = locked.post("/generate", json=FAST, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"


def test_health_and_root_stay_public(locked):
    assert locked.get("/health").json()["status"] == "healthy"
    assert locked.get("/").json()["service"] == "Kandinsky 2.2"


def test_without_a_key_configured_no_header_is_needed(client):
    assert client.get("/openapi.json").status_code == 200
