"""Next-best-offer quality against the simulator's truth: learned policy as a share of the oracle.

    .venv/bin/python benchmarks/offers.py [--sizes 5000,20000,100000] [--days 180] [--seed 42]
        [--n-boot 50] [--set num_leaves=3 --set learner=t ...]
        [--compare effect_domain=all,personalize=always]

For each size: simulates ``users`` over ``days`` (``engage.datasets.simulate``, seeded), builds the
offer table (exposures with point-in-time features and attributed outcomes), fits the multi-arm
uplift model with the ``EngageConfig`` defaults (``--set key=value`` overrides ``config.offers``
fields; ``None`` / ``null`` for None) and judges it on the held-out rows with the simulator's true
conversion probabilities. ``--seed`` seeds the simulation and ``config.seed`` (split, trees, bootstrap).
``--compare`` fits a second configuration (comma-separated overrides) on the same table and split,
so two settings are judged side by side on identical data (``--compare ""`` turns it off; the
default compares with the settings before: each arm's effect learned on every row, not only where
the arm is eligible, and the per-user ranking served without the out-of-fold check).

Prints per size: seconds for simulate / table / fit, training rows, the true increment over sending
nothing (``none``) of the learned policy, the greedy policy and the best single arm, each as a share
of the oracle's increment, ``(value - none) / (oracle - none)``; the oracle increment; the DR estimate
of the learned policy with its bootstrap CI; the best single arm's DR value; whether the learned
policy reaches the bar (>= 0.90 of the oracle increment). Then a compact table of all sizes, with
``os.getloadavg()`` (the cores are shared).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from machine import load  # a sibling script (benchmarks/ is the script's path[0])

from engage.config import EngageConfig, OfferConfig
from engage.datasets.simulate import simulate
from engage.offers.catalog import load_catalog
from engage.offers.training import fit_offers, offer_table

BAR = 0.90  # learned policy: at least this share of the oracle's increment over `none`


@dataclass
class Result:
    """The figures of one size."""

    users: int
    label: str
    sim_s: float
    table_s: float
    fit_s: float
    rows_train: int
    learned: float
    greedy: float
    best_single: float
    oracle_inc: float
    dr: float
    dr_low: float
    dr_high: float
    best_single_dr: float

    @property
    def met(self) -> bool:
        return self.learned >= BAR


def _rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings to ``config.offers`` updates (``None`` / ``null`` -> None); keys checked."""
    fields = set(OfferConfig.model_fields)
    over: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("offers.")
        if not sep or key not in fields:
            known = ", ".join(sorted(fields))
            raise SystemExit(f"--set {item!r}: expected key=value with key one of {known}")
        over[key] = None if value.strip() in ("None", "null") else value.strip()
    return over


def make_config(seed: int, overrides: dict[str, Any]) -> EngageConfig:
    """``EngageConfig`` defaults with ``seed`` and validated ``config.offers`` overrides."""
    base = EngageConfig()
    offers = OfferConfig.model_validate(base.offers.model_dump() | overrides)  # pydantic coerces strings
    return base.model_copy(update={"seed": seed, "offers": offers})


def run_size(users: int, days: int, seed: int, configs: dict[str, EngageConfig], n_boot: int) -> list[Result]:
    """Simulate, build the offer table, fit each configuration with the truth; the figures of one size."""
    config = next(iter(configs.values()))
    tick = time.perf_counter()
    data = simulate(users, days, seed=seed)
    sim_s = time.perf_counter() - tick
    tick = time.perf_counter()
    table = offer_table(data.events, data.exposures, config, users=data.users)
    table_s = time.perf_counter() - tick
    truth = data.truth.to_pandas()
    catalog = load_catalog(config.offers.catalog_path)
    del data
    return [
        _judge(users, label, cfg, table, truth, catalog, n_boot, sim_s, table_s)
        for label, cfg in configs.items()
    ]


def _judge(
    users: int,
    label: str,
    config: EngageConfig,
    table: Any,
    truth: Any,
    catalog: Any,
    n_boot: int,
    sim_s: float,
    table_s: float,
) -> Result:
    """Fit one configuration on the table and turn its metrics into a ``Result``."""
    tick = time.perf_counter()
    fit = fit_offers(table.copy(), config, catalog, truth=truth, n_boot=n_boot)
    fit_s = time.perf_counter() - tick
    m = fit.metrics
    none = m["true_none_value"]
    oracle_inc = m["oracle_policy_value"] - none
    return Result(
        users=users,
        label=label,
        sim_s=sim_s,
        table_s=table_s,
        fit_s=fit_s,
        rows_train=int(m["rows_train"]),
        learned=(m["true_policy_value"] - none) / oracle_inc,
        greedy=(m["true_greedy_policy_value"] - none) / oracle_inc,
        best_single=(m["true_best_single_arm_value"] - none) / oracle_inc,
        oracle_inc=oracle_inc,
        dr=m["policy_value_dr"],
        dr_low=m["policy_value_dr_ci_low"],
        dr_high=m["policy_value_dr_ci_high"],
        best_single_dr=m["best_single_arm_value"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=None, help="one size (same as --sizes N)")
    parser.add_argument("--sizes", default="5000,20000,100000", help="comma-separated user counts")
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n-boot", type=int, default=50, help="bootstrap draws for the DR CI")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config.offers override"
    )
    parser.add_argument(
        "--compare",
        default="effect_domain=all,personalize=always",
        help="comma-separated config.offers overrides of a second fit on the same data ('' = none)",
    )
    args = parser.parse_args()
    sizes = [args.users] if args.users else [int(v) for v in args.sizes.split(",")]
    overrides = parse_overrides(args.set)
    config = make_config(args.seed, overrides)
    configs = {"current": config}
    if args.compare:
        compare = overrides | parse_overrides([v for v in args.compare.split(",") if v])
        configs["compare"] = make_config(args.seed, compare)
        print(f"compare: {compare}")
    offers = config.offers.model_dump(exclude={"catalog_path"})
    print(
        f"offers benchmark: sizes {', '.join(f'{n:,}' for n in sizes)} users x {args.days} days, "
        f"seed {args.seed}, n_boot {args.n_boot}; config.offers {offers}"
        + (f" (overrides: {', '.join(overrides)})" if overrides else "")
    )
    results = []
    for r in (r for users in sizes for r in run_size(users, args.days, args.seed, configs, args.n_boot)):
        results.append(r)
        print(f"{r.users:,} users, {r.label}:")
        print(
            f"  time: simulate {r.sim_s:.1f} s, table {r.table_s:.1f} s, fit {r.fit_s:.1f} s; "
            f"rows_train {r.rows_train:,}; {load()}"
        )
        print(
            f"  true increment over none, share of oracle: learned {r.learned:.3f}, "
            f"greedy {r.greedy:.3f}, best single arm {r.best_single:.3f}; oracle increment {r.oracle_inc:.4f}"
        )
        print(
            f"  DR learned {r.dr:.4f} [{r.dr_low:.4f}, {r.dr_high:.4f}], "
            f"best single arm DR {r.best_single_dr:.4f}"
        )
        print(f"  bar learned >= {BAR:.2f} of oracle: {'met' if r.met else 'MISSED'}")
    print()
    print(
        f"{'users':>8} {'config':>8} {'rows':>8} {'learned':>8} {'greedy':>7} {'best1':>6} {'orc_inc':>8} "
        f"{'dr':>7} {'dr_ci':>17} {'best1_dr':>8} {'fit_s':>6}  bar"
    )
    for r in results:
        print(
            f"{r.users:>8,} {r.label:>8} {r.rows_train:>8,} {r.learned:>8.3f} {r.greedy:>7.3f} "
            f"{r.best_single:>6.3f} "
            f"{r.oracle_inc:>8.4f} {r.dr:>7.4f} [{r.dr_low:.4f},{r.dr_high:.4f}] {r.best_single_dr:>8.4f} "
            f"{r.fit_s:>6.1f}  {'met' if r.met else 'MISSED'}"
        )
    print(f"peak RSS: {_rss():.2f} GB; {load()}")


if __name__ == "__main__":
    main()
