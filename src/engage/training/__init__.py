"""Training runs: fit, then record in MLflow, register and promote through a champion gate.

``churn`` (snapshots -> churn model -> metrics, plots, the AUC gate), ``offers`` (an offers fit
recorded and gated on DR policy value) and ``registry`` (run -> register -> promote, once for
both). Names are imported from their module on first use, so importing one training does not
import the other's libraries.
"""

from engage.exports import lazy_exports

_EXPORTS = {
    "ChurnFit": "churn",
    "ChurnTrainingResult": "churn",
    "build_churn_table": "churn",
    "champion_gate": "churn",
    "fit_churn": "churn",
    "train_churn": "churn",
    "OfferTrainingResult": "offers",
    "offer_figures": "offers",
    "offers_champion_gate": "offers",
    "train_offers": "offers",
    "Dataset": "registry",
    "Gate": "registry",
    "Registered": "registry",
    "record_and_promote": "registry",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
