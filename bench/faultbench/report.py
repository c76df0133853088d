"""The report: the Markdown summary with examples, then ``VIOLATIONS {json}`` and
``SUMMARY {json}`` on stdout; actions.jsonl for a kept run; and ``--recheck``."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

from bench.faultbench.dbfaults import DATABASE_FAULT_KINDS
from bench.faultbench.environment import EXAMPLES, GRACE, LIVENESS_LIMIT, SLACK, WORKDIR
from bench.faultbench.invariants import INVARIANTS, check
from bench.faultbench.record import Bench, Observed, Status


def tally(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {count}" for key, count in counter.most_common()) or "none"


def report(
    bench: Bench,
    observed: Observed,
    findings: dict[str, list[str] | None],
    notes: dict[str, int],
) -> list[str]:
    runs = observed.runs
    args = bench.args
    assert bench.settle_started is not None and bench.checked_at is not None
    settled = (bench.checked_at - bench.settle_started).total_seconds()
    outcomes = Counter(f"{a.kind}: {a.outcome}" for a in bench.actions)
    lines = [
        f"**Faults: {len(bench.schedules)} schedules on 3 runworker processes sharing one "
        f"embedded engine, {args.seconds:g} s of faults and actions, {settled:.0f} s to settle, "
        f"seed {bench.seed}**",
        "",
        f"- runs: {len(runs)} ({tally(Counter(r.status for r in runs))}); by trigger: "
        f"{tally(Counter(r.trigger for r in runs))}; skipped slots recorded: "
        f"{sum(int(r.details.get('slots', 0)) for r in runs if r.status == Status.SKIPPED)}",
        f"- faults: {len(bench.faults)} ({tally(Counter(f.kind for f in bench.faults))})",
        f"- operator actions: {len(bench.actions)} ({tally(outcomes)})",
        f"- web requests: {len(bench.requests)} "
        f"({tally(Counter(str(r.status) for r in bench.requests))}; 0 is no answer)",
        f"- engine samples: {len(bench.samples)} ({notes['unreachable_samples']} unreachable "
        f"outside the faults); run lines in the workers' logs: {notes['finish_lines']}",
        f"- slack: a slot is late after the grace ({GRACE:g} s) + {SLACK:g} s; liveness after "
        f"{LIVENESS_LIMIT.total_seconds():g} s (two reconcile intervals)",
        "",
        "| invariant | violations |",
        "| --- | ---: |",
    ]
    for key, title in INVARIANTS.items():
        found = findings[key]
        if found is None:
            count = "not measurable: CleanupRun has no planned_at yet"
        else:
            count = str(len(found))
        lines.append(f"| {title} (`{key}`) | {count} |")
    lines.append("")
    for key, title in INVARIANTS.items():
        found = findings[key]
        if not found:
            continue
        lines += [f"**{title}**: {len(found)}, for example:", ""]
        lines += [f"- {example}" for example in found[:EXAMPLES]]
        lines.append("")
    violations = {key: None if found is None else len(found) for key, found in findings.items()}
    summary = {
        "seconds": args.seconds,
        "schedules": len(bench.schedules),
        "seed": bench.seed,
        "runs": len(runs),
        "faults": dict(Counter(f.kind for f in bench.faults)),
        "database_faults": sum(f.kind in DATABASE_FAULT_KINDS for f in bench.faults),
        "actions": len(bench.actions),
        "web_requests": len(bench.requests),
        "samples": len(bench.samples),
    }
    lines += [f"VIOLATIONS {json.dumps(violations)}", f"SUMMARY {json.dumps(summary)}"]
    return lines


def write_actions(bench: Bench) -> None:
    """Every action and fault with its outcome and times, for a replay's reader (--keep)."""
    with (WORKDIR / "actions.jsonl").open("w") as out:
        for action in sorted([*bench.actions, *bench.faults], key=lambda a: a.at):
            name = bench.schedules[action.schedule].name if action.schedule else None
            out.write(
                json.dumps(
                    {
                        "at": bench.rel(action.at),
                        "done": bench.rel(action.done),
                        "kind": action.kind,
                        "schedule": name,
                        "outcome": action.outcome,
                        "desired": f"{action.before} -> {action.after}" if name else None,
                        "detail": action.detail,
                    },
                    default=str,
                )
                + "\n"
            )


def check_and_report(bench: Bench, observed: Observed) -> int:
    findings, notes = check(bench, observed)
    print("\n".join(report(bench, observed, findings, notes)), flush=True)
    return 1 if any(found for found in findings.values() if found) else 0


def recheck(directory: Path) -> int:
    """The checks again, on a run kept with --keep (after a check changed)."""
    with (directory / "observed.pickle").open("rb") as kept:
        bench, observed = pickle.load(kept)
    return check_and_report(bench, observed)
