"""What a dataset loader hands to `prepare`: the source splits plus what the manifest records about them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from genlab.data.splits import Split


@dataclass(frozen=True)
class RawData:
    train: Split
    test: Optional[Split]  # None: no official test split, `prepare` carves one with data.test_fraction
    max_value: int
    source: str  # the location actually read: official URLs, mirror or folder
    source_md5: dict[str, str]  # every source file verified, name -> md5
    classes: list[str]
    extra: dict[str, Any] = field(default_factory=dict)  # dataset-specific manifest entries
