"""GPUStack's own scheduler tests, run against our rulebook: the figure per test file.

GPUStack's test files (upstream/, copied at the commit named in upstream/SOURCE, Apache-2.0) run twice in
the gpustack==2.3.0 environment, with pytest and plugin.py:

1. against GPUStack 2.3.0's own selectors: the cases that pass are the ones in scope (their inputs are
   complete here: the hub data is in hub_models.json, the 2.3.0 signatures are adapted);
2. with the vLLM, SGLang and custom-backend selectors swapped for ours (adapters.py -> ours.py), so each of
   GPUStack's asserts judges our answer.

A case in scope agrees when it passes the second run too. Known disagreements are listed, each with its
reason, in expected_disagreements.json; the run fails on a disagreement not listed there, and on a listed
case that now agrees (strict: take it off the list). Prints "<file>: N/M agree" per test file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
UPSTREAM = HERE / "upstream"
TEST_PATHS = ("tests/policies/candidate_selectors/vllm", "tests/policies/candidate_selectors/sglang",
              "tests/policies/candidate_selectors/custom_backend")
EXPECTED = HERE / "expected_disagreements.json"


def run_suite(gpustack_python: str, selectors: str, report: Path) -> dict[str, str]:
    """Each case's outcome (passed / failed / skipped) and, when failed, the first line of why."""
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{UPSTREAM}", GPUSTACK_SUITE_SELECTORS=selectors,
               GPUSTACK_SUITE_OURS_PYTHON=sys.executable)
    subprocess.run([os.path.abspath(gpustack_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "plugin",
                    "--rootdir", str(UPSTREAM), f"--junitxml={report}", *TEST_PATHS],
                   cwd=UPSTREAM, env=env, capture_output=True, text=True, timeout=1800)
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('file') or case.get('classname').replace('.', '/') + '.py'}::{case.get('name')}"
        problem = next(iter(case), None)
        if problem is None:
            outcomes[name] = "passed"
        elif problem.tag == "skipped":
            outcomes[name] = "skipped"
        else:
            outcomes[name] = "failed: " + (problem.get("message") or "").splitlines()[0][:300] if problem.get(
                "message") else "failed"
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpustack-python", required=True, help="python of a venv with gpustack==2.3.0")
    parser.add_argument("--show", action="store_true", help="print each disagreement's first line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        theirs = run_suite(args.gpustack_python, "gpustack", Path(tmp) / "gpustack.xml")
        ours = run_suite(args.gpustack_python, "ours", Path(tmp) / "ours.xml")
    expected = json.loads(EXPECTED.read_text())["cases"]
    per_file: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # agree, in scope, out of scope
    unexpected, fixed = [], []
    for case, outcome in sorted(theirs.items()):
        file = Path(case.split("::")[0]).name
        if outcome != "passed":
            per_file[file][2] += 1
            continue
        per_file[file][1] += 1
        agrees = ours.get(case) == "passed"
        per_file[file][0] += agrees
        if agrees and case in expected:
            fixed.append(case)
        elif not agrees and case not in expected:
            unexpected.append((case, ours.get(case, "missing")))
        elif not agrees and args.show:
            print(f"  known: {case}: {ours.get(case)}")
    print("GPUStack's own scheduler tests (at the commit in upstream/SOURCE) judging vram-exporter's answers:")
    for file, (agree, scope, out) in sorted(per_file.items()):
        print(f"{file}: {agree}/{scope} agree ({out} not in scope: GPUStack's own code fails them offline)")
    total = [sum(v[i] for v in per_file.values()) for i in range(3)]
    print(f"all: {total[0]}/{total[1]} agree; {len(expected)} known disagreements in {EXPECTED.name}")
    for case, outcome in unexpected:
        print(f"UNEXPECTED disagreement (not in {EXPECTED.name}): {case}: {outcome}")
    for case in fixed:
        print(f"NOW AGREES, take it off {EXPECTED.name}: {case}")
    stale = [c for c in expected if theirs.get(c) != "passed"]
    for case in stale:
        print(f"LISTED but not a case in scope: {case}")
    return 1 if unexpected or fixed or stale else 0


if __name__ == "__main__":
    sys.exit(main())
