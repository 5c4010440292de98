"""Everything that writes boxes."""

from django.db import transaction

from apps.assets.storage import delete_files_on_commit

from .models import Box


def box_create(*, owner, name: str, description: str = "") -> Box:
    box = Box(owner=owner, name=name, description=description)
    box.full_clean()
    box.save()
    return box


def box_update(*, box: Box, **fields) -> Box:
    for field, value in fields.items():
        setattr(box, field, value)
    box.full_clean()
    box.save()
    return box


@transaction.atomic
def box_delete(*, box: Box) -> None:
    """Delete the box, its assets and, once that commits, every stored file of those assets."""
    names = list(box.assets.exclude(file="").values_list("file", flat=True))
    box.delete()
    delete_files_on_commit(names)
