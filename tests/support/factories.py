import factory
from django.contrib.auth import get_user_model

from apps.ai_providers.models import AIModel, AIProvider
from apps.assets.models import Asset
from apps.boxes.models import Box


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "correct horse battery staple")

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class BoxFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Box

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"Box {n}")


class AssetFactory(factory.django.DjangoModelFactory):
    """An asset row without a stored file (for listing and filtering tests)."""

    class Meta:
        model = Asset

    box = factory.SubFactory(BoxFactory)
    asset_type = Asset.AssetType.IMAGE
    source = Asset.Source.GENERATION
    status = Asset.Status.PENDING
    prompt_text = factory.Sequence(lambda n: f"prompt {n}")


class AIProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AIProvider

    name = factory.Sequence(lambda n: f"Provider {n}")
    kind = "kie"
    base_url = "https://api.example.test"
    api_key = "sk-live-0123456789abcdef-SECRET"


class AIModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AIModel

    provider = factory.SubFactory(AIProviderFactory)
    name = factory.Sequence(lambda n: f"model-{n}")
    model_type = AIModel.ModelType.IMAGE
    api_endpoint = "/api/v1/jobs/createTask"
    request_schema = factory.LazyFunction(lambda: {"model": "google/nano-banana", "input": {"prompt": "<<prompt>>"}})
    parameters_schema = factory.LazyFunction(
        lambda: {
            "aspect_ratio": {"type": "select", "label": "Aspect ratio", "default": "1:1", "options": ["1:1", "16:9"]}
        }
    )
