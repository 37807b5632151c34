"""properties.checker's two phases: the cover phase (one fault of every kind, aimed where it
hurts most, shortened by a fixed ladder) and the parallel prefetch (``jobs``), whose results
must not depend on how many processes ran them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hailan_sim.models import default_scenario
from hailan_sim.models.faults import FAULT_KINDS
from hailan_sim.models.loader import load_scenario
from hailan_sim.properties import invariants as inv
from hailan_sim.properties.alphabet import cover_faults
from hailan_sim.properties.checker import CPU_PARTS, _shorter, check, check_duration, fault_horizon
from hailan_sim.properties.strategies import with_faults

SMALL = Path(__file__).parent / "scenarios" / "small.yaml"


def _check_scenario(scenario):
    scenario = scenario.with_run(warmup_s=min(scenario.run.warmup_s, 10.0))
    return scenario.with_run(duration_s=check_duration(scenario))


def test_cover_faults_one_of_every_kind_where_it_hurts_most():
    sc = _check_scenario(default_scenario().with_profile("seed"))
    horizon = fault_horizon(sc)
    faults = cover_faults(sc, horizon)
    assert [f.kind for f in faults[:len(FAULT_KINDS)]] == list(FAULT_KINDS)
    # Then roles (issue 10 item 6): one instance of every other service that has several,
    # lost for good (every service of the default scenario has two or three).
    extra = faults[len(FAULT_KINDS):]
    assert [(f.kind, f.instance, f.restart) for f in extra] == [
        ("crash_instance", f"{s.name}-0", False) for s in sc.services if s.name != "auth-service"]
    with_faults(sc, faults)  # every target exists: the scenario validates with all of them
    for f in faults:
        assert horizon[0] <= f.start_s and f.start_s + f.duration_s <= horizon[1]
    by = {f.kind: f for f in faults[:len(FAULT_KINDS)]}
    # auth-service has the most transitive dependents of the twelve services ...
    assert by["crash_service"].service == "auth-service" and by["error_rate"].target == "auth-service"
    assert by["slow"].target == "ai-service"  # the busiest: its LLM slots run at about 50%
    assert by["crash_instance"].instance == "auth-service-0" and by["crash_instance"].restart is False
    assert (by["partition"].a, by["partition"].b) == ("user-service", "auth-service")
    # ... redis is the component everything uses; the gateway and the registry are left out.
    assert by["infra_outage"].component == "redis"
    # node-b1 runs the most (13 instances and rabbitmq): skewing its clock hurts most; the
    # node crash that never restarts takes node-a1 (13 instances, no shared component).
    assert by["clock_skew"].node == "node-b1"
    assert by["crash_node"].node == "node-a1" and by["crash_node"].restart is False
    assert by["load_spike"].endpoint == "browse_products"  # the busiest endpoint


def test_cover_faults_honour_kinds_and_targets():
    sc = _check_scenario(default_scenario())
    h = fault_horizon(sc)
    only = cover_faults(sc, h, kinds=["crash_instance", "partition", "key_rotation"],
                        targets=["product-service", "inventory-service", "product-service-1"])
    # key_rotation names nothing, so a target filter leaves it out (as the strategies do).
    assert [(f.kind, getattr(f, "instance", None) or (f.a, f.b)) for f in only] == [
        ("crash_instance", "product-service-1"), ("partition", ("product-service", "inventory-service"))]
    with pytest.raises(ValueError, match="not a fault kind"):
        cover_faults(sc, h, kinds=["meteor"])


def test_shorter_ladder():
    sc = _check_scenario(default_scenario())
    f = cover_faults(sc, fault_horizon(sc), kinds=["hang"])[0]
    assert [g.duration_s for g in _shorter(f)] == [1.0, f.duration_s / 2]
    assert _shorter(f.model_copy(update={"duration_s": 1.5})) == [f.model_copy(update={"duration_s": 1.0})]
    assert _shorter(f.model_copy(update={"duration_s": None})) == []


@pytest.fixture(scope="module")
def small_reports():
    sc = _check_scenario(load_scenario(SMALL))
    kw = dict(max_examples=3, max_faults=1, n_seeds=2, seed=0)
    return check(sc, jobs=1, **kw), check(sc, jobs=2, **kw), sc


def test_cover_phase_fires_every_kind_the_scenario_can_have(small_reports):
    one, _, sc = small_reports
    kinds = [f.kind for f in cover_faults(sc, fault_horizon(sc))]
    assert "registry_outage" not in kinds  # small.yaml has no registry
    assert set(kinds) <= set(one.fault_kinds_fired)
    assert len(set(kinds)) == len(FAULT_KINDS) - 1


def test_results_do_not_depend_on_jobs(small_reports):
    one, two, _ = small_reports
    assert [r.to_dict() | {"seconds_to_find": None} for r in one.invariants] == \
           [r.to_dict() | {"seconds_to_find": None} for r in two.invariants]
    assert one.fault_kinds_fired.keys() == two.fault_kinds_fired.keys()


def test_the_report_says_where_its_cpu_went(small_reports):
    """``cpu_s``: each part is the CPU time of the process that did it (a worker's too),
    ``total`` this process's and its reaped workers', ``rest`` the difference (issue 12:
    where the time goes). A part is spent exactly when its work was done: a re-run of a
    counterexample when there is one, of a sampled example when one was sampled."""
    one, two, _ = small_reports
    for report in (one, two):
        c, d = report.cpu_s, report.determinism
        assert list(c) == [*CPU_PARTS, "rest", "total"]
        assert c["total"] == pytest.approx(sum(c[k] for k in CPU_PARTS) + c["rest"])
        assert c["examples: simulation"] > 0 and c["examples: invariants"] > 0
        assert c["baselines"] > 0 and c["re-runs: baselines"] > 0 and d["baselines"] == 2
        assert (c["re-runs: counterexamples"] > 0) == (d["counterexamples"] > 0)
        assert (c["re-runs: examples"] > 0) == (d["examples"] > 0)
        # A re-run (no log kept) costs about a simulation: a baseline's is not a tenth of it.
        assert c["re-runs: baselines"] > 0.3 * c["baselines"]
        # The parts are measured where they ran and the total from the processes' usage, so
        # the rest (Hypothesis, forks, pickling, imports) is never much below zero; the
        # simulations and invariants are most of the check.
        assert -0.02 * c["total"] < c["rest"] < 0.5 * c["total"], c
    assert one.determinism["counterexamples"] > 0  # what the assertions above rely on
    # jobs=1: everything ran in this process, within the check's wall time.
    assert one.cpu_s["total"] <= one.wall_s * 1.05 + 0.5


def test_a_cover_counterexample_is_the_shortest_that_still_violates(small_reports):
    one, _, sc = small_reports
    covers = cover_faults(sc, fault_horizon(sc))
    by_cover = [r for r in one.invariants if r.found_by == "cover"]
    assert by_cover, "small.yaml under the spec's defaults breaks some invariant with one fault"
    for r in by_cover:
        (f,) = r.faults
        full = next(c for c in covers if f.model_copy(update={"duration_s": c.duration_s}) == c)
        assert f.model_copy(update={"duration_s": full.duration_s}) == full
        # It violates, with the hash the report gives ...
        record = inv.Record.from_scenario(with_faults(sc, [f]).with_run(seed=r.seed), rerun=False)
        assert record.result.event_log_sha256 == r.replay_hash
        assert not inv.get(r.name)(record).holds
        # ... and no shorter rung of the ladder (1 s, half the cover fault's length) does.
        for g in (g for g in _shorter(full) if g.duration_s < f.duration_s):
            record = inv.Record.from_scenario(with_faults(sc, [g]).with_run(seed=r.seed), rerun=False)
            assert inv.get(r.name)(record).holds, (r.name, g)


def test_a_cover_counterexample_comes_from_the_first_fault_that_violates(small_reports):
    """Whichever worker finishes first, an invariant's cover counterexample is cut from the
    first cover fault, in cover order, that violates it (the report's cover table), and its
    example count is that fault's place plus its ladder."""
    covers = cover_faults(small_reports[2], fault_horizon(small_reports[2]))
    for report in small_reports[:2]:
        for r in (r for r in report.invariants if r.found_by == "cover"):
            i = next(i for i, row in enumerate(report.cover) if r.name in row["violated"])
            assert r.faults[0].model_copy(update={"duration_s": covers[i].duration_s}) == covers[i]
            assert r.examples == i + 1 + len(_shorter(covers[i]))


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_cover_phase_reports_an_invariant_before_judging_every_fault(jobs):
    """An invariant is reported as soon as the faults before its first violating one, that
    fault's ladder and its counterexample's re-run are done; not after every cover fault
    (issue 12: the default seed check reported nothing for its first 150 s)."""
    from hailan_sim.properties.checker import Runner

    sc = _check_scenario(load_scenario(SMALL))
    # The first eight of small.yaml's: the node crash (third) and the hang (sixth) each break
    # two invariants, the two after break none.
    covers = cover_faults(sc, fault_horizon(sc))[:8]
    names = [n for n in inv.INVARIANTS if n != "determinism"]
    runner = Runner(sc, names, jobs=jobs)
    seen = []

    def report(name, examples, faults):
        judged = [runner.cached([c], 0) is not None for c in covers]
        first = next(k for k, c in enumerate(covers) if faults[0].model_copy(update={"duration_s": c.duration_s}) == c)
        seen.append((name, first, judged))
        # Ready: its counterexample has been simulated and re-run, every fault before it judged.
        assert runner.event_log_sha256(faults, 0) is not None
        assert Runner.key(faults, 0) in runner._confirmed
        assert all(judged[:first + 1])
        assert examples == first + 1 + len(_shorter(covers[first]))

    runner.cover(covers, report)
    assert seen and len(seen) == len({n for n, *_ in seen})  # each invariant reported once
    assert not all(seen[0][2]), "the first report waited for every cover fault"
    if jobs == 1:
        # One at a time, ladders and re-runs first: nothing after the reported fault is judged.
        for name, first, judged in seen:
            assert judged == [k <= first for k in range(len(covers))], name
    # In the end every cover fault is judged, and every invariant one violates reported.
    assert all(runner.cached([c], 0) is not None for c in covers)
    assert {n for n, *_ in seen} == {n for c in covers for n in names if not runner.cached([c], 0)[n].holds}


def test_a_cover_phase_without_faults_simulates_nothing():
    from hailan_sim.properties.checker import Runner

    runner = Runner(load_scenario(SMALL), ["conservation"], jobs=2)
    runner.cover([], lambda *a: pytest.fail("nothing to report"))
    assert runner.simulations == 0 and runner.determinism.reruns == 0


def test_determinism_mismatches_are_listed_in_an_order_of_their_own():
    from hailan_sim.properties.checker import Determinism

    a, b = Determinism(), Determinism()
    notes = [("examples", [], 2, "a", "b"), ("baselines", [], 1, "a", "c"), ("counterexamples", [], 0, "a", "d")]
    for what in notes:
        a.note(*what)
    for what in reversed(notes):
        b.note(*what)
    assert a.to_dict() == b.to_dict()
    assert [m["run"] for m in a.to_dict()["mismatches"]] == ["baseline", "counterexample", "example"]


def test_report_separates_unwitnessed_from_inapplicable_mechanisms(small_reports):
    one, _, sc = small_reports
    can = inv.applicable(sc)
    assert set(one.not_applicable) == {k for k, ok in can.items() if not ok}
    # small.yaml has no registry, breaker or token policy: those cannot happen at all ...
    assert {"instance_deregistered", "short_circuit", "token_fetched"} <= set(one.not_applicable)
    # ... and every mechanism that can is either witnessed or listed as never witnessed.
    assert set(one.witnessed) | set(one.not_witnessed) >= {k for k, ok in can.items() if ok}
    assert not set(one.witnessed) & set(one.not_witnessed)


def test_applicable_mechanisms_follow_the_policies():
    seed, hardened = (inv.applicable(default_scenario().with_profile(p)) for p in ("seed", "hardened"))
    assert not seed["bulkhead_full"] and hardened["bulkhead_full"]  # only hardened has bulkheads
    assert not seed["retry_made"] and hardened["retry_made"]  # seed makes one attempt
    assert seed["short_circuit"] and seed["token_fetched"] and seed["instance_deregistered"]
    assert not seed["autoscaled"] and not hardened["fallback_used"]  # nothing in the scenario


# ------------------------------------------------------------------ determinism re-runs (issue 12)


def test_rerun_sample_is_a_fixed_function_of_the_example():
    from hailan_sim.properties.checker import Runner

    sc = _check_scenario(load_scenario(SMALL))
    fault = cover_faults(sc, fault_horizon(sc))[0]
    examples = [([fault], s) for s in range(2000)]
    a, b = Runner(sc, ["conservation"], rerun_every=10), Runner(sc, ["conservation"], rerun_every=10)
    picked = [e for e in examples if a.sampled(*e)]
    # The same examples whatever the runner (and so whatever the order, jobs or invariants) ...
    assert picked == [e for e in reversed(examples) if b.sampled(*e)][::-1]
    # ... about one in k: binomial(2000, 0.1) has mean 200 and sd 13.4; 5 sd either side.
    assert 200 - 67 <= len(picked) <= 200 + 67
    assert all(Runner(sc, [], rerun_every=1).sampled(*e) for e in examples[:50])
    assert not any(Runner(sc, [], rerun_every=0).sampled(*e) for e in examples[:50])
    # Never the schedule with no fault: its run is its seed's baseline, re-run already.
    assert not any(Runner(sc, [], rerun_every=1).sampled([], s) for s in range(50))


def test_determinism_reruns_do_not_depend_on_jobs(small_reports):
    one, two, sc = small_reports
    assert one.determinism == two.determinism
    d = one.determinism
    assert d["every"] == 10 and d["mismatches"] == []
    assert d["baselines"] == 2  # n_seeds=2: seed 0 (cover) and the search's other seed
    # every counterexample is re-run before it is reported, once per schedule and seed
    # however many invariants it violates
    from hailan_sim.properties.checker import Runner

    violated = [r for r in one.invariants if r.status == "violated"]
    runs = {Runner.key(r.faults, r.seed) for r in one.invariants if r.status == "violated"}
    sample = Runner(sc, [], rerun_every=d["every"])
    sampled = {Runner.key(r.faults, r.seed) for r in violated if sample.sampled(r.faults, r.seed)}
    # (a counterexample the sample already re-ran is not re-run again)
    assert d["counterexamples"] == len(runs - sampled) > 0
    assert len(violated) > len(runs)  # some schedule violates several: re-run once, not per invariant
    assert d["reruns"] == d["baselines"] + d["counterexamples"] + d["examples"]
    assert one.to_dict()["determinism"] == d


def test_a_sampled_counterexample_is_not_re_run_again():
    """A counterexample the sample has re-run (its hash reproduced with its verdicts) is
    reported without a second re-run: it would prove nothing the first did not (issue 12
    item 3). With every example sampled, no counterexample costs a re-run of its own."""
    from hailan_sim.properties.checker import Runner

    sc = _check_scenario(load_scenario(SMALL))
    covers = cover_faults(sc, fault_horizon(sc))[:8]
    runner = Runner(sc, [n for n in inv.INVARIANTS if n != "determinism"], jobs=1, rerun_every=1)
    reported = []
    runner.cover(covers, lambda name, examples, faults: reported.append(Runner.key(faults, 0)))
    d = runner.determinism
    assert reported and all(k in runner._confirmed for k in reported)
    assert d.counterexamples == 0 and d.mismatches == []
    assert d.examples == runner.simulations - d.baselines  # each judged example re-run once


def test_a_rerun_with_another_hash_violates_determinism(monkeypatch):
    from hailan_sim.properties import checker

    # A planted nondeterminism: every re-run "gets" another hash.
    monkeypatch.setattr(checker, "_rerun_sha", lambda scenario: "0" * 64)
    sc = _check_scenario(load_scenario(SMALL))
    report = check(sc, invariants=["bounded_redelivery"], max_examples=1, max_faults=1, n_seeds=1,
                   cover=False, jobs=1, rerun_every=0)
    det = next(r for r in report.invariants if r.name == "determinism")
    assert det.status == "violated" and not report.ok
    assert "not deterministic" in det.explanation and "baseline" in det.explanation
    assert report.determinism["baselines"] == 1 and report.determinism["examples"] == 0
    assert report.determinism["mismatches"][0]["got"] == "0" * 64


def test_fault_windows_reach_past_the_policies_longest_timer():
    """Issue 10 item 6: cover faults and searched faults may last past the longest timer of
    the policies under test, so what happens when it expires with the fault still on is
    seen. Seed: Consul reaps a dead instance 15 + 60 + 30 = 105 s after it dies (detection,
    the 60 s clamp, the 30 s reaper), longer than the spec breaker's 60 s."""
    from hailan_sim.properties.checker import default_fault_window_s
    from hailan_sim.properties.reach import longest_timer_s
    from hailan_sim.properties.strategies import with_policies

    seed = _check_scenario(default_scenario().with_profile("seed"))
    assert longest_timer_s(seed) == 105.0
    assert default_fault_window_s(seed) == 120.0
    lo, hi = fault_horizon(seed)
    assert hi - lo == 120.0
    covers = cover_faults(seed, (lo, hi))
    assert all(f.duration_s > longest_timer_s(seed) for f in covers if f.duration_s is not None)
    # The run still holds, after the window, the recovery objective, the longest restart and
    # 20 s to judge them in.
    startup = max(s.startup_s for s in seed.services)
    assert seed.run.duration_s == 10 + 120 + seed.objectives.rto_s + startup + 20
    # A breaker that waits longer than the reaper sets the window; no registry, no reaping.
    slow = with_policies(seed, breaker={"kind": "spec", "timeout_s": 200.0})
    assert longest_timer_s(slow) == 200.0 and default_fault_window_s(slow) == 215.0
    small = load_scenario(SMALL)
    assert default_fault_window_s(small) == max(40.0, longest_timer_s(small) + 15.0)


@pytest.mark.slow
def test_a_default_length_seed_check_finds_a_token_weakness():
    """Issue 10 item 5: with steady-state first tokens, expiries fall inside a default-length
    check run, so the seed's token weaknesses are found: the cover phase's key rotation (at
    the window's start) meets the first renewals (simulation seed 0: 177 and 228 s), whose
    tokens carry the new key that the spec's verifiers, holding one static key, refuse with
    every clock right and the issuer (each caller itself) up. With every token fresh at t = 0
    (first_token: fresh, the old behaviour) no token is renewed within the run and the same
    check holds. Several minutes on the shared 2-core machine: slow."""
    from hailan_sim.properties.strategies import with_policies

    sc = _check_scenario(default_scenario().with_profile("seed"))
    kw = dict(invariants=["token_safety"], kinds=["key_rotation", "clock_skew"], max_examples=1, jobs=2)
    (found,) = check(sc, **kw).invariants
    assert found.status == "violated" and found.found_by == "cover", found
    assert "unknown_key" in found.explanation and "issuer was reachable" in found.explanation
    fresh = with_policies(sc, tokens={"first_token": "fresh"})
    (held,) = check(fresh, **kw).invariants
    assert held.status == "held", held


# ------------------------------------------------------ shrinking judged ahead (issue 12 item 6)


def _planted_search(jobs: int):
    """The quality tests' search for the retry loop without backoff (a violation found in
    the generate phase, then about sixty shrink requests, each a 70 s simulation of two
    services), with ``jobs`` processes."""
    from tests.quality.test_planted_bugs import BUDGET, BUGS

    case = BUGS["retry_loop_without_backoff"]
    with pytest.MonkeyPatch.context() as mp:
        case.plant(mp)  # forked copies inherit the planted bug, as prefetch's workers do
        return check(case.scenario(), invariants=[case.invariant], kinds=case.kinds, **(BUDGET | {"jobs": jobs}))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="the copies are forked")
def test_shrinking_judged_ahead_in_a_forked_copy_finds_the_same_counterexample():
    """With jobs=2 a forked copy of the checker guesses each shrink request's answer, runs
    Hypothesis on to the next request and judges it; the main process's Hypothesis sees the
    same answers in the same order, so it shrinks to the same counterexample, found after
    the same number of examples, with the same hash, as with jobs=1."""
    before = _children()
    one, two = _planted_search(1), _planted_search(2)
    # Every copy was stopped and reaped (none left running, none left a zombie).
    assert _children() <= before, _children() - before
    (a,), (b,) = one.invariants, two.invariants
    assert a.status == "violated" and len(a.faults) >= 1
    assert a.to_dict() | {"seconds_to_find": None} == b.to_dict() | {"seconds_to_find": None}
    assert one.speculation == {"forked": 0, "used": 0, "wasted": 0}  # jobs=1: nothing forked
    # The copies worked through the shrink, and most of their guesses were what was asked
    # next (the guess: the last answer again; shrink answers come in runs). Every copy is
    # accounted for: used, or stopped and wasted.
    s = two.speculation
    assert s["forked"] == s["used"] + s["wasted"] and s["used"] > s["wasted"] > 0, s
    # What a copy judged reaches the report only when asked for: the counts are jobs=1's
    # but for the examples prefetch judged ahead of the generate phase.
    assert two.simulations - one.simulations <= BUDGET_EXTRA, (one.simulations, two.simulations)


def _children() -> set:
    """This process's child processes, zombies included (Linux /proc; empty elsewhere)."""
    import os

    me, out = str(os.getpid()), set()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # state, ppid
            out.add(d.name)
    return out


# prefetch judges the whole generate budget with jobs > 1, the search stops at the first
# violation: at most the budget's examples more (tests/quality: max_examples 10).
BUDGET_EXTRA = 10


def test_a_violation_names_what_its_schedule_loses_for_good(small_reports, capsys):
    """A counterexample whose schedule leaves no instance of a component (reach.lost_for_good)
    is one no policy can fix: the report says so, in --json and in the text."""
    import dataclasses

    from hailan_sim.cli import _print_check
    from hailan_sim.properties.reach import lost_for_good

    one, _, sc = small_reports
    violated = [r for r in one.invariants if r.status == "violated"]
    assert violated
    for r in violated:
        assert r.lost_for_good == lost_for_good(with_faults(sc, r.faults).with_run(seed=r.seed))
        assert r.to_dict()["lost_for_good"] == r.lost_for_good
    # A search that can only crash zones finds bounded_recovery broken by small.yaml's zone za
    # lost for good (its single gw, cache, db and mq are there): the report must say so.
    zones = check(sc, jobs=1, max_examples=3, max_faults=1, n_seeds=1, seed=0,
                  kinds=["crash_zone"], invariants=["bounded_recovery"])
    (r,) = zones.invariants
    assert r.status == "violated" and not r.faults[0].restart, r
    why = "crash_zone(za) without restart: no gw left (it has one instance)"
    assert r.lost_for_good["gw"] == why
    assert r.lost_for_good == lost_for_good(with_faults(sc, r.faults).with_run(seed=r.seed))
    assert r.to_dict()["lost_for_good"] == r.lost_for_good
    _print_check(sc, dataclasses.replace(one, invariants=[r]))
    out = capsys.readouterr().out
    assert f"beyond any policy: {why}" in out


def test_an_example_with_no_fault_is_judged_on_its_baseline(monkeypatch):
    """The empty schedule's run is its seed's baseline (the same scenario and seed), so the
    checker judges it on the baseline instead of simulating it again (issue 12, session 26):
    the same verdicts and hash as a run simulated for it, one simulation fewer, counted in
    ``on_baseline``. An example with a fault is still simulated."""
    from hailan_sim.properties import checker
    from hailan_sim.properties.checker import Runner
    from hailan_sim.sim import simulate

    sc = _check_scenario(load_scenario(SMALL))
    names = [n for n in inv.INVARIANTS if n != "determinism"]
    # Every example sampled for a determinism re-run, but not this one: its run is the
    # baseline's, which was re-run when it was simulated; nor is it re-run as a counterexample.
    runner = Runner(sc, names, jobs=1, rerun_every=1)
    baseline = runner.baseline(1)
    assert runner.determinism.baselines == 1 and not runner.sampled([], 1)
    runs = []
    monkeypatch.setattr(checker, "simulate", lambda scenario, **kw: runs.append(scenario) or simulate(scenario, **kw))
    got = runner.verdicts([], 1)
    runner.confirm([], 1)
    assert runs == [] and runner.on_baseline == 1 and runner.simulations == 2  # the baseline and the example
    assert runner.determinism.reruns == 1 and runner.cpu["re-runs: examples"] == 0
    assert runner.event_log_sha256([], 1) == baseline.event_log_sha256
    fresh = inv.Record(scenario=runner.scenario_for([], 1), result=simulate(runner.scenario_for([], 1), keep_events=True),
                       baseline=baseline)
    want = {v.name: v for v in inv.evaluate(fresh, names)}
    assert ({n: (v.holds, v.explanation, v.window) for n, v in got.items()}
            == {n: (v.holds, v.explanation, v.window) for n, v in want.items()})
    # A schedule with a fault is simulated, and not counted as judged on the baseline.
    (crash,) = cover_faults(sc, fault_horizon(sc), kinds=["crash_instance"])[:1]
    assert runner.sampled([crash], 1)
    runner.verdicts([crash], 1)
    runner.confirm([crash], 1)  # re-run by the sample already
    assert len(runs) == 2 and runner.on_baseline == 1 and runner.simulations == 3  # its run and its re-run
    assert runner.determinism.examples == 1 and runner.determinism.reruns == 2
    assert runner.event_log_sha256([crash], 1) != baseline.event_log_sha256


def test_the_check_says_how_many_examples_it_judged_on_their_baseline(small_reports, capsys):
    """The text report's first line counts the examples with no fault judged on their
    baseline's run (``on_baseline``), and says nothing of them when there were none."""
    import dataclasses

    from hailan_sim.cli import _print_check

    one, _, sc = small_reports
    _print_check(sc, dataclasses.replace(one, on_baseline=2))
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith(f"{one.simulations} simulations in {one.wall_s:.0f} s "
                          "(2 of them with no fault, judged on their baseline's run)"), first
    _print_check(sc, dataclasses.replace(one, on_baseline=0))
    assert "no fault" not in capsys.readouterr().out.splitlines()[0]

