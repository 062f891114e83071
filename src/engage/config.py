"""One typed, frozen configuration object for every job.

Built once at the edge (``cli.py``) from ``conf/default.yaml`` plus flags and passed down;
nothing below reads files or the environment for settings. Every field has a default so
``EngageConfig()`` alone is a working configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PACKAGE_CONF_DIR = Path(__file__).parent / "conf"
DEFAULT_CONFIG_PATH = PACKAGE_CONF_DIR / "default.yaml"
DEFAULT_CATALOG_PATH = PACKAGE_CONF_DIR / "messages.yaml"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SimulateConfig(_Frozen):
    users: int = Field(5_000, gt=0)
    days: int = Field(180, gt=0)
    start: str = "2024-01-01"
    campaign_every_days: int = Field(7, gt=0)
    timing: bool = False
    """Users get time zones, weekly rhythms and channel responsiveness; campaigns randomize the send
    hour and the channel (``engage.datasets._sim_timing``). Off: the simulator's output as before."""


class ValidationConfig(_Frozen):
    reference_time: str | None = None
    """Events stamped after this instant are quarantined (ISO 8601; None = no check)."""


class FeatureConfig(_Frozen):
    windows: tuple[int, ...] = (7, 28, 90)
    cart_abandon_hours: int = Field(24, gt=0)
    engaged_session_seconds: int = Field(10, ge=0)
    engine: Literal["polars", "spark"] = "polars"
    in_memory_events: int = Field(20_000_000, ge=0)
    """A lazy input (e.g. a Parquet scan) of at most this many events is read once and held; larger
    ones stream from the source in every pass, in bounded memory (0 = always stream)."""


class LabelConfig(_Frozen):
    definition: Literal["inactivity", "cancel_event"] = "inactivity"
    horizon_days: int = Field(30, gt=0)
    lookback_days: int = Field(90, gt=0)
    lead_days: int = Field(0, ge=0)
    qualifying_events: tuple[str, ...] | None = None
    """Event types that count as activity for the inactivity label (None = any event)."""
    cancel_event: str | None = None
    every_days: int = Field(28, gt=0)
    min_churned: int = Field(1_000, ge=0)
    min_retained: int = Field(1_000, ge=0)


class ChurnModelConfig(_Frozen):
    n_estimators: int = Field(600, gt=0)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(7, gt=1)
    max_depth: int = Field(4, ge=-1)
    """Small, shallow trees: they beat logistic regression on the small real logs (Online Retail II,
    CDNOW) where 31 leaves overfit, lose nothing on the simulator, and make ``pred_contrib`` (reason
    codes, cost ~ trees x leaves x depth) several times cheaper. -1 = unlimited depth."""
    min_child_samples: int = Field(50, gt=0)
    monotone_recency: bool = False
    """Constrain risk to never fall as days since the last event / session / purchase grow."""
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    early_stopping_rounds: int = Field(50, gt=0)
    validation_snapshots: int = Field(1, gt=0)
    calibration: Literal["isotonic", "platt"] = "platt"
    """Platt (2 parameters) on the calibration snapshot: isotonic overfits a one-snapshot set of a few
    thousand rows and cost up to 0.014 logloss on the real logs; on the simulator both give ECE < 0.01."""
    promote_margin: float = 0.0
    btyd_features: bool = True
    """Give the churn model the BTYD P(alive) and expected purchases in the label horizon (fitted
    point in time per snapshot; at scoring time from the bundle's value model). Out-of-time AUC with
    and without (benchmarks/churn_real.py): CDNOW 0.696 vs 0.689 (DeLong +0.007 [+0.002, +0.011]),
    Online Retail II 0.733 vs 0.730 (+0.003 [-0.001, +0.006])."""
    reasons_top_k: int = Field(3, gt=0)
    risk_bands: tuple[float, ...] = (0.3, 0.6)
    """Upper bounds of the low and medium bands; above the last is high."""


class ValueConfig(_Frozen):
    """Predicted customer value in every score (BTYD purchase counts x Gamma-Gamma spend)."""

    horizon_days: int = Field(365, gt=0)
    """``predicted_purchases`` and ``predicted_revenue`` count this many days after as_of."""
    model: Literal["mbgnbd", "bgnbd"] = "mbgnbd"
    """The BTYD count model: MBG/NBD lets one-time buyers drop out (BG/NBD keeps them alive)."""


class OfferConfig(_Frozen):
    catalog_path: str = str(DEFAULT_CATALOG_PATH)
    attribution_days: int = Field(7, gt=0)
    learner: Literal["t", "x", "s"] = "x"
    n_estimators: int = Field(100, gt=0)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(3, gt=1)
    min_child_samples: int | None = Field(None, gt=0)
    """None = sized to the data (an eighth of the smallest arm's training rows, within [50, 5000]).

    Uplift is a small difference of two noisy rates: shallow, well-populated leaves win here."""
    effect_num_leaves: int | None = Field(2, gt=1)
    effect_n_estimators: int | None = Field(150, gt=0)
    effect_learning_rate: float | None = Field(0.02, gt=0)
    """The X-learner's effect regressions (None = as the outcome models): stumps, each arm's effect
    an additive function of the features, while the outcome models keep 3-leaf trees (stumps there
    cost 27 points of the oracle's gain with outcomes read from the events at 20,000 users)."""
    shrink_folds: int = Field(2, ge=0)
    """Cross-fitted shrinkage of each arm's uplift toward its doubly robust average (0 = off, else
    the number of folds, at least 2): an arm whose heterogeneity is noise is served at its average."""
    effect_domain: Literal["eligible", "all"] = "eligible"
    """Where each message's effect is learned (and shrunk): ``eligible`` = the rows its catalog
    ``eligible_if`` admits, the only rows the policy sends it on; ``all`` = every logged row.
    Simulator, 5,000 users, seeds 42/1/2/3/4: 0.921 of the oracle's increment vs 0.859 (``all``)."""
    personalize: Literal["significant", "always"] = "significant"
    """``significant``: serve the per-user ranking only when its gain over serving every arm at its
    average effect (the best single arm) is above 0 out of fold (paired DR, 95% CI; needs
    ``shrink_folds`` >= 2), else serve the average effects; ``always``: the per-user ranking."""
    promote_margin: float = 0.0


class PolicyConfig(_Frozen):
    exploration: Literal["epsilon", "softmax", "none"] = "epsilon"
    epsilon: float = Field(0.05, ge=0, le=1)
    epsilon_decay: float = Field(0.0, ge=0)
    """Exploration decays as served batches accumulate: batch k (1 = the first policy served after
    randomized data) explores ``epsilon * k ** -epsilon_decay`` (``offers.policy.decayed_epsilon``);
    0 keeps ``epsilon``. The chosen arm's propensity is logged either way. Applied by the closed loop
    (``engage demo --rounds``), which knows its round; a single ``engage score`` run or the service
    explores at ``epsilon`` as configured (a scheduler running its own loop sets it per run)."""
    epsilon_min: float = Field(0.0, ge=0, le=1)
    """The floor of the decayed epsilon, so every allowed arm keeps a probability above 0."""
    temperature: float = Field(0.1, gt=0)
    holdout_pct: float = Field(0.05, ge=0, lt=1)
    max_per_7d: int = Field(2, ge=0)
    value_weighting: bool = False
    """Scale each message's expected benefit (not its cost) by the user's predicted revenue over
    the mean buyer's (``engage.offers.policy.value_weighted_gains``): coupons go to valuable users."""
    cap_counts: Literal["decisions", "sent"] = "decisions"
    """What the service's contact cap and cooldowns count: every decision it answered
    (``decisions``) or only those reported ``sent`` through ``/feedback`` or ``engage feedback
    import`` (``sent``: for callers that report what they send)."""


class TrackingConfig(_Frozen):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "engage"
    churn_model_name: str = "engage-churn"
    offer_model_name: str = "engage-offers"


class ServeConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(3000, gt=0, lt=65536)
    max_users_per_request: int = Field(1_000, gt=0)
    max_request_bytes: int = Field(4 * 1024 * 1024, gt=0)
    """Largest ``/score`` or ``/explain`` body (413 beyond), checked at the HTTP edge before parsing:
    4 MiB holds the user cap with ids only, or about 25,000 inline events."""
    max_inline_events: int = Field(20_000, gt=0)
    """Inline events over all users of one request (413 beyond), checked before any feature work: a
    request at the cap costs about 0.4 s and 45 MB (parsing and features, 2-core host); 20 users x
    10,000 events cost 3.5 s and 400 MB before this limit."""
    max_future_minutes: float = Field(5.0, ge=0)
    """How far a request's ``as_of`` (and a logged decision time) may lie ahead of the server's clock:
    clock skew between hosts, not scheduling. 5 minutes is the usual skew tolerance (Kerberos'
    default) and tiny next to any cooldown (days), so a future-dated decision moves a cooldown by at
    most that much; contacts dated further ahead are ignored."""
    max_past_days: int = Field(3_650, gt=0)
    """How far back a request's ``as_of`` may lie (replays and back-tests of past decisions)."""
    stop_seconds: float = Field(30.0, gt=0)
    """``engage serve``: how long the server may take to stop after SIGTERM/SIGINT before SIGKILL."""
    feature_snapshot_path: str = "models/feature_snapshot.parquet"
    decision_log_dir: str = "models/decisions"
    feedback_log_dir: str = "models/feedback"
    """Where ``/feedback`` and ``engage feedback import`` append what happened to decisions."""
    feedback_max_age_days: int = Field(30, gt=0)
    """How far back a feedback ``ts`` may lie (422 beyond): also how long reports are remembered for
    idempotency and decisions for matching."""
    workers: int = Field(1, gt=0)
    """Worker processes of the service (``engage serve --workers``): each loads the models and the
    snapshot (memory x N) and writes its own decision log file; BentoML's own config still wins."""
    resources: dict[str, str] = {}
    """BentoML service resources (``cpu``, ``memory``, ``gpu``): what a deployment reserves."""
    require_snapshot: bool = True
    """``/readyz`` answers 503 until the feature snapshot is loaded; false for a service that only
    scores users sent with their events (ids alone are then cold starts)."""
    online_store: str = "local"
    """Where contact history, feedback idempotency keys and (with ``online_features``) feature rows
    live: ``local`` (this host's decision and feedback logs and the Parquet snapshot; one replica)
    or ``redis://host:port/db`` (shared by every worker and replica; ``ENGAGE_ONLINE_STORE``)."""
    online_prefix: str = "engage:"
    """Prefix of every key engage writes in the Redis store (several deployments can share one)."""
    online_timeout_ms: float = Field(50.0, gt=0)
    """Longest wait for the Redis store per call: beyond it (or when unreachable) ``/score`` answers
    risk and reasons but sends nothing (``contact store unavailable``) rather than risk a cap."""
    online_features: bool = False
    """Read feature rows from the Redis store (``engage online load``) instead of the snapshot file;
    the file, when present, still answers while the store is unreachable."""
    online_feature_ttl_days: float = Field(14.0, gt=0)
    """How long a feature row loaded into the Redis store lives (a user not rescored ages out)."""


class MonitorConfig(_Frozen):
    """``engage monitor``: when drift and miscalibration warn or alert (alert = exit code 1)."""

    psi_warn: float = Field(0.1, ge=0)
    psi_alert: float = Field(0.25, ge=0)
    """The usual PSI conventions: below 0.1 no real shift, 0.1-0.25 moderate, 0.25 and up a shift."""
    bins: int = Field(10, gt=1)
    """Quantile bins of a numeric feature, cut on the reference (deciles)."""
    epsilon: float = Field(1e-4, gt=0, lt=1)
    """Share given to an empty bin, so a bin empty on one side adds a finite term."""
    ece_warn: float = Field(0.05, ge=0)
    ece_alert: float = Field(0.10, ge=0)
    """Expected calibration error of a week's served risk against its realized churn."""
    min_week_rows: int = Field(1_000, gt=0)
    """A week is judged on calibration only with this many labelled rows (ECE of fewer is noise: a
    perfectly calibrated model shows about 0.03 on 1,000 rows)."""


class WebhookConfig(_Frozen):
    """``engage export --webhook``: where audiences are posted and how hard to try (README, "Audiences")."""

    url: str | None = None
    """The receiver (https; plain http only to a loopback address). None = no webhook delivery."""
    secret_env: str = "ENGAGE_WEBHOOK_SECRET"
    """Name of the environment variable holding the HMAC secret: the secret itself never sits in YAML."""
    batch_size: int = Field(500, gt=0)
    max_retries: int = Field(5, ge=0)
    """Retries of one batch after a 5xx, 408, 429, timeout or dropped connection (then the run stops;
    a re-run resumes)."""
    backoff_seconds: float = Field(0.5, ge=0)
    """First retry waits about this long, doubling each retry (half fixed, half seeded jitter)."""
    max_backoff_seconds: float = Field(30.0, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)


class ExportConfig(_Frozen):
    webhook: WebhookConfig = WebhookConfig()


class SparkConfig(_Frozen):
    """The Spark session engage builds when none is given (``--engine spark``; ``engage.spark``).

    A session passed in (Databricks, EMR, ``spark-submit``, Spark Connect) is used as it is."""

    master: str = "local[2]"
    """Where the job runs: ``local[N]``, ``spark://host:7077``, ``yarn``, ... (``--master``)."""
    remote: str | None = None
    """A Spark Connect server (``sc://host:15002``): the session is a Connect client (wins over master)."""
    conf: dict[str, str] = {
        "spark.driver.host": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "4",
    }
    """Settings handed to the session builder (``spark.conf`` keys; a loopback driver by default)."""
    partitions: int = Field(4, gt=0)
    """Partitions of the scoring stage (the DataFrame API has no defaultParallelism to ask)."""


class TimingConfig(_Frozen):
    """Send time and channel per user (``engage.timing``; ``engage train timing``)."""

    window_hours: int = Field(24, ge=1, le=168)
    """The send window after ``as_of`` in which each user's best hour is sought (up to 7 days)."""
    quiet_hours: dict[str, tuple[int, int]] = {"push": (22, 8)}
    """Per channel, local hours [start, end) in which nothing is sent (22-8: no push at night)."""
    epsilon: float = Field(0.1, ge=0, le=1)
    """Share of sends explored at a uniformly drawn allowed hour (the propensity is logged)."""
    prior_strength: float = Field(40.0, gt=0)
    """Pseudo-activity-hours of the user's prior (their posterior mix of the population's rhythms)
    added to their own counts; a user's own counts move it where they disagree."""
    tune: bool = True
    """Choose prior_strength and smoothing_kappa on a grid by the held-out log-likelihood of the last
    ``validation_days`` of activity before as_of (``engage.timing.tuning``; the simulator picks 40 and
    8, Online Retail II 10 and 8); the values here are the fallback when nothing is held out."""
    validation_days: int = Field(28, gt=0)
    rhythms: int = Field(12, ge=1)
    """Rhythm profiles in the population's mixture (``engage.timing.prior``; 12, 24, 48 tie)."""
    smoothing_kappa: float = Field(8.0, ge=0)
    """Von Mises concentration of the kernel over neighbouring hours of the day (0 = flat)."""
    daytype_weight: float = Field(0.3, ge=0, le=1)
    """Share of an hour's estimate read from days of its kind (weekday/weekend), the rest from all days."""
    same_day_weight: float = Field(0.0, ge=0, le=1)
    """Share read from that very day of the week (a customer who orders on Thursdays)."""
    channel_prior_strength: float = Field(5.0, gt=0)
    """Pseudo-sends at the population's open rate added to each user's channel rates."""
    min_events_to_infer_zone: int = Field(5, ge=1)
    """A user without a valid stated zone needs this many active hours to infer one (else UTC)."""
    sparse_events: int = Field(3, ge=0)
    """Below this many active hours a user's send time is stated as the population's."""
    fixed_hour_utc: int = Field(9, ge=0, le=23)
    """The one-hour-for-everybody baseline the evaluation compares against."""
    holdout_days: int = Field(90, gt=0)
    """Real data: ``as_of`` this many days before the last event; the next purchase after it is the target."""
    model_name: str = "engage-timing"
    promote_margin: float = 0.0

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours_leave_an_hour(cls, value: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        from engage.schemas import CHANNELS

        for channel, (start, end) in value.items():
            if channel not in CHANNELS:
                raise ValueError(f"quiet_hours.{channel}: unknown channel (channels: {', '.join(CHANNELS)})")
            if not (0 <= start <= 23 and 0 <= end <= 23):
                raise ValueError(f"quiet_hours.{channel}: hours must be 0-23, got {start}-{end}")
            if start == end:
                raise ValueError(f"quiet_hours.{channel}: {start}-{end} leaves no allowed hour")
        return value


class EngageConfig(_Frozen):
    seed: int = 42
    simulate: SimulateConfig = SimulateConfig()
    validation: ValidationConfig = ValidationConfig()
    features: FeatureConfig = FeatureConfig()
    labels: LabelConfig = LabelConfig()
    churn: ChurnModelConfig = ChurnModelConfig()
    offers: OfferConfig = OfferConfig()
    policy: PolicyConfig = PolicyConfig()
    tracking: TrackingConfig = TrackingConfig()
    serve: ServeConfig = ServeConfig()
    monitor: MonitorConfig = MonitorConfig()
    export: ExportConfig = ExportConfig()
    value: ValueConfig = ValueConfig()
    timing: TimingConfig = TimingConfig()
    spark: SparkConfig = SparkConfig()


class ConfigError(ValueError):
    """A configuration file or override that cannot be used, with the file and field named."""


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


ENVIRONMENT_KEYS = {"tracking.uri": "MLFLOW_TRACKING_URI", "tracking.experiment": "MLFLOW_EXPERIMENT_NAME"}
"""Config keys MLflow's standard environment variables set (``MLFLOW_REGISTRY_URI``: engage.tracking)."""


def _from_environment(file_tree: dict[str, Any]) -> dict[str, str]:
    """``ENVIRONMENT_KEYS`` whose variable is set and which the user's own config file does not set."""
    found: dict[str, str] = {}
    for dotted, variable in ENVIRONMENT_KEYS.items():
        node: Any = file_tree
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if os.environ.get(variable) and node is None:
            found[dotted] = os.environ[variable]
    return found


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> EngageConfig:
    """Read a YAML file (default: the packaged ``default.yaml``) and apply dotted-key overrides.

    ``overrides={"labels.horizon_days": 14}`` sets one field; unknown keys are errors. Precedence,
    highest first: ``overrides`` (command flags, ``--set``), MLflow's environment variables
    (``ENVIRONMENT_KEYS``), the user's config file, the packaged ``default.yaml``.
    """
    source = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    raw: dict[str, Any] = {}
    if path is not None or source.exists():
        try:
            raw = yaml.safe_load(source.read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"{source}: config file not found") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
    extra: dict[str, Any] = {}
    for dotted, value in {**_from_environment(raw if path is not None else {}), **(overrides or {})}.items():
        _set_dotted(extra, dotted, value)
    try:
        return EngageConfig.model_validate(_deep_merge(raw, extra))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{source}: {problems}") from exc
