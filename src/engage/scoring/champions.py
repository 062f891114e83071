"""The one place scoring models are loaded: which registered version serves each role, then loading.

A model reference names a role (``churn`` required, ``offers`` and ``timing`` optional), the
registered model and version it came from, and a URI MLflow loads it from: ``models:/name/version``
for the registry, or the local MLflow model folder inside the Bento store (the Bento module resolves
those). Batch jobs, the service and ``engage build`` all go through :func:`registry_refs` and
:func:`load_scoring_models`, so ``model_versions`` (and with it every decision id) is spelled the
same way everywhere. Loading reads each model's files (``state.json`` and LightGBM's boosters,
``engage.tracking.load_estimator``), the same ones its MLflow pyfunc reads, without running the
model's code. The Bento packs every registered champion, timing included (``engage.serving.service``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from engage import tracking
from engage.config import EngageConfig
from engage.models.bundle import ChurnBundle, OfferBundle
from engage.offers.catalog import load_catalog
from engage.scoring.core import ScoringModels
from engage.timing.sendtime import TimingModel

__all__ = [
    "CHURN",
    "OFFERS",
    "TIMING",
    "ModelRef",
    "load_champions",
    "load_scoring_models",
    "registry_refs",
    "roles",
]

logger = logging.getLogger(__name__)

Bundle = TypeVar("Bundle", ChurnBundle, OfferBundle, TimingModel)
CHURN = "churn"
OFFERS = "offers"
TIMING = "timing"


@dataclass(frozen=True)
class ModelRef:
    """Where one scoring model comes from: its role, registered name and version, and a loadable URI."""

    role: str
    name: str
    version: str
    uri: str

    @property
    def label(self) -> str:
        """``name/version``: the value of ``model_versions[role]`` in every score and decision."""
        return f"{self.name}/{self.version}"


def roles(config: EngageConfig) -> dict[str, str]:
    """Role -> registered model name, the churn model first (it is required)."""
    return {
        CHURN: config.tracking.churn_model_name,
        OFFERS: config.tracking.offer_model_name,
        TIMING: config.timing.model_name,
    }


def registry_refs(config: EngageConfig, alias: str = tracking.CHAMPION) -> list[ModelRef]:
    """The versions behind ``alias`` in ``config.tracking.uri``; a missing offers or timing model is
    skipped (a log line says so: without timing, scores carry no send time).

    A missing churn model is a LookupError that says what to run.
    """
    tracking.configure(config.tracking.uri)
    refs: list[ModelRef] = []
    for role, name in roles(config).items():
        version = tracking.alias_version(name, alias)
        if version is None:
            if role == CHURN:
                raise LookupError(
                    f"no {name}@{alias} in {config.tracking.uri}: run `engage train churn` first"
                )
            logger.info(
                "no %s@%s in %s: scoring without the %s model (`engage train %s` registers one)",
                name,
                alias,
                config.tracking.uri,
                role,
                role,
            )
            continue
        refs.append(ModelRef(role=role, name=name, version=version, uri=f"models:/{name}/{version}"))
    return refs


def load_scoring_models(config: EngageConfig, refs: Sequence[ModelRef]) -> ScoringModels:
    """Load every referenced model and the message catalog into one :class:`ScoringModels`."""
    by_role = {ref.role: ref for ref in refs}
    if CHURN not in by_role:
        raise LookupError(f"no {config.tracking.churn_model_name} model to score with")
    churn = _loaded(by_role[CHURN], ChurnBundle)
    offers = _loaded(by_role[OFFERS], OfferBundle) if OFFERS in by_role else None
    timing = _loaded(by_role[TIMING], TimingModel) if TIMING in by_role else None
    return ScoringModels(
        churn=churn,
        catalog=load_catalog(config.offers.catalog_path),
        offers=offers,
        versions={role: ref.label for role, ref in by_role.items()},
        timing=timing,
    )


def _loaded(ref: ModelRef, kind: type[Bundle]) -> Bundle:
    """The model behind ``ref``, checked to be the bundle its role needs."""
    bundle = tracking.load_estimator(ref.uri)
    if not isinstance(bundle, kind):
        raise TypeError(
            f"{ref.uri}: the {ref.role} model is a {type(bundle).__name__}, not a {kind.__name__}"
        )
    return bundle


def load_champions(config: EngageConfig, alias: str = tracking.CHAMPION) -> ScoringModels:
    """The registered churn, offers and timing models behind ``alias`` (offers and timing optional)
    and the catalog."""
    return load_scoring_models(config, registry_refs(config, alias))
