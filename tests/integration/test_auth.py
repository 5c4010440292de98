import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db


def test_token_endpoint_returns_a_token_that_authenticates(client, user):
    response = client.post(
        "/api/auth/token/",
        {"username": user.username, "password": "correct horse battery staple"},
        content_type="application/json",
    )

    assert response.status_code == 200
    token = response.json()["token"]
    assert Token.objects.get(key=token).user == user
    assert client.get("/api/boxes/", HTTP_AUTHORIZATION=f"Token {token}").status_code == 200


def test_token_endpoint_rejects_a_wrong_password(client, user):
    response = client.post(
        "/api/auth/token/", {"username": user.username, "password": "nope"}, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert not Token.objects.exists()


def test_token_endpoint_names_missing_fields(client):
    response = client.post("/api/auth/token/", {}, content_type="application/json")

    assert response.status_code == 400
    assert set(response.json()["error"]["details"]) == {"username", "password"}


def test_drf_create_token_command_creates_a_token(user, capsys):
    call_command("drf_create_token", user.username)

    assert Token.objects.get(user=user).key in capsys.readouterr().out


def test_session_authentication_works_for_a_logged_in_user(client, user):
    client.force_login(user)

    assert client.get("/api/boxes/").status_code == 200
