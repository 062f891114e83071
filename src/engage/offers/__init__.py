"""Next-best offer: the message catalog, the policy that picks a message, and how both are judged.

``catalog`` (messages marketers edit; the rule language in ``rules``, template text in
``templates``), ``policy`` (eligibility, contact cap, exploration: the probabilities serving
draws from), ``outcomes`` (what followed a decision), ``evaluation`` (off-policy values and the
baselines a policy is judged against) and ``training`` (the uplift fit, pure: the MLflow record is
``engage.training.offers``). The modules sit on different layers, so names are imported from their
module on first use: importing the catalog does not import LightGBM.
"""

from engage.exports import lazy_exports

_EXPORTS = {
    "CAP_DAYS": "catalog",
    "Catalog": "catalog",
    "CatalogError": "catalog",
    "Message": "catalog",
    "catalog_from_dict": "catalog",
    "load_catalog": "catalog",
    "Rule": "rules",
    "parse_rule": "rules",
    "Placeholder": "templates",
    "compile_template": "templates",
    "render": "templates",
    "render_many": "templates",
    "action_probabilities": "policy",
    "allowed_arms": "policy",
    "attach_outcomes": "outcomes",
    "Estimate": "evaluation",
    "compare_policies": "evaluation",
    "doubly_robust": "evaluation",
    "ips": "evaluation",
    "oracle_value": "evaluation",
    "single_arm_policy": "evaluation",
    "snips": "evaluation",
    "true_value": "evaluation",
    "uniform_policy": "evaluation",
    "OfferFit": "training",
    "evaluate_logged_policy": "training",
    "fit_offers": "training",
    "fit_offers_from_table": "training",
    "offer_table": "training",
    "policy_dr_value": "training",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
