"""Example family, part 1 of 2: a plain autoencoder's params section (would be src/genlab/models/ae/params.py).

Adding a family is this file, family.py beside it and one line in genlab.models.REGISTRY:
    "ae": (AEConfig, "genlab.models.ae.family:AE"),
tests/test_family_contract.py::test_a_new_family_is_two_files_and_a_registry_line registers it that way.
"""

from __future__ import annotations

from dataclasses import dataclass

from genlab.core.schema import MAX_WIDTH, FamilyConfig, between, key, positive


@dataclass(frozen=True)
class AEConfig(FamilyConfig):
    hidden: int = key(256, between(1, MAX_WIDTH))
    latent_dim: int = key(8, between(1, MAX_WIDTH))
    lr: float = key(1e-3, positive(), doc="Adam")
