"""Shared fixtures. `make test` runs these against PostgreSQL, Redis and moto's S3 server over HTTP.

Django imports stay inside the fixtures so that pure unit tests also run without Django
(``pytest -p no:django tests/unit/assets/test_media.py``).
"""

import boto3
import pytest


@pytest.fixture(scope="session", autouse=True)
def s3():
    """A boto3 client on the test bucket's endpoint (None without S3); creates the bucket once per run."""
    from django.conf import settings

    if not settings.configured or not settings.USE_S3:
        return None
    client = boto3.client(
        "s3",
        endpoint_url=settings.AWS_S3_ENDPOINT_URL,
        aws_access_key_id=settings.AWS_ACCESS_KEY_ID,
        aws_secret_access_key=settings.AWS_SECRET_ACCESS_KEY,
        region_name=settings.AWS_S3_REGION_NAME,
    )
    existing = {bucket["Name"] for bucket in client.list_buckets()["Buckets"]}
    if settings.AWS_STORAGE_BUCKET_NAME not in existing:
        client.create_bucket(Bucket=settings.AWS_STORAGE_BUCKET_NAME)
    return client


@pytest.fixture
def bucket(s3):
    """The S3 client, for tests that look into the bucket; they need `make test`'s S3 server."""
    if s3 is None:
        pytest.skip("needs the S3 endpoint that `make test` starts")
    return s3


def client_for(user):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def user(db):
    from tests.support.factories import UserFactory

    return UserFactory()


@pytest.fixture
def api(user):
    """An API client authenticated as ``user`` with a token, as the quickstart's curl commands are."""
    return client_for(user)


@pytest.fixture
def stranger_api(db):
    """A second user, who must never see the first one's boxes or assets."""
    from tests.support.factories import UserFactory

    return client_for(UserFactory())


@pytest.fixture
def box(user):
    from tests.support.factories import BoxFactory

    return BoxFactory(owner=user)
