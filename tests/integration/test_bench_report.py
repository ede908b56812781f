"""bench/bench.py's verdicts on issue 16's targets: the paired ratios, the median's interval
and its coverage, and the rule paths judged rep by rep.  No proxy runs: the results are made
up here, with answers worked out by hand."""

import importlib.util
import os

spec = importlib.util.spec_from_file_location(
    "bench", os.path.join(os.path.dirname(__file__), "..", "..", "bench", "bench.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def path(rates):
    return {"runs": [{"msgs_per_s": r} for r in rates],
            "median_msgs_per_s": sorted(rates)[len(rates) // 2]}


def test_interval_of_13_reps_is_the_3rd_to_the_11th_ratio():
    # P(X <= 2) = 92/8192 <= 0.025 < P(X <= 3) = 378/8192 for X ~ Binomial(13, 1/2).
    a = path([100.0 + i for i in range(13)])
    b = path([100.0] * 13)
    low, high, coverage, at_one, n = bench.median_interval(a, b, "msgs_per_s")
    assert (low, high) == (1.02, 1.10)
    assert abs(coverage - (1 - 2 * 92 / 8192)) < 1e-12
    assert (at_one, n) == (13, 13)


def test_five_reps_give_the_whole_range_and_say_it_covers_less_than_95():
    a = path([90.0, 95.0, 100.0, 105.0, 110.0])
    b = path([100.0] * 5)
    r = bench.median_interval(a, b, "msgs_per_s")
    assert r[:2] == (0.9, 1.1) and r[3:] == (3, 5)
    assert bench.fmt_interval(r) == "median's 93% interval 0.90-1.10, 3 of 5 reps >= 1.00"


def test_rule_path_judged_rep_by_rep_not_by_two_medians():
    # The load moved between reps.  Rep by rep the rules path keeps within 0.97 of smtptap in
    # four reps of five (median 0.97: met), but the two medians, 2400 against 3000, are 0.8
    # apart: the old verdict on the medians said NOT met.
    smtptap = path([3000.0, 3000.0, 3000.0, 2400.0, 2400.0])
    rules = path([2900.0, 2900.0, 2400.0, 2350.0, 2350.0])
    assert rules["median_msgs_per_s"] / smtptap["median_msgs_per_s"] == 0.8
    mode = {"paths": {"smtptap": smtptap, "smtptap-rules": rules}}
    res = {"throughput": {"one": mode, "many": mode},
           "config": {"paths": ["smtptap", "smtptap-rules"]}, "idle": {"paths": {}}}
    key = "100 rules >= 0.9 x smtptap, one/session"
    assert bench.targets(res)[key].startswith("met "), bench.targets(res)[key]
    # Three reps of five at 0.67: the rep-by-rep median falls under 0.9.
    for run in rules["runs"][:3]:
        run["msgs_per_s"] = 2000.0
    assert bench.targets(res)[key].startswith("NOT met "), bench.targets(res)[key]
