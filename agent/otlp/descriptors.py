"""What the stages need to know of protobuf field descriptors, across protobuf releases."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor


def is_repeated(field: Any) -> bool:
    # ``is_repeated`` in current protobuf releases, which have dropped ``label``; ``label`` in older ones.
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)
