#!/usr/bin/env python3
"""CPU cost of the required-binding check (``fhir_server/validation/bindings.py``) per resource.

Times, in this process (as a validation helper process does it):

* ``issues_of`` (the whole validation) with the binding check, and without it (``bindings.check``
  replaced by a no-op: the validation as it was before);
* ``bindings.check`` alone;

on the realistic French Patient of ``bench/rest_throughput.py`` (the resource its create benchmark posts), a
typical vital-signs Observation, and every non-definitional official R4 example (µs per resource, averaged
over the set). Best of ``--repeat`` alternated rounds, to keep the noise of a shared machine out.

Usage: .venv/bin/python bench/bindings_cost.py [--repeat 15] [path/to/hl7.fhir.r4.examples-4.0.1.tgz]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tarfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from rest_throughput import patient  # noqa: E402

from fhir_server import validation  # noqa: E402
from fhir_server.validation import bindings, issues_of  # noqa: E402

DEFAULT_TGZ = REPO.parent / "shared" / "data" / "hl7.fhir.r4.examples-4.0.1.tgz"
DEFINITIONAL = {
    "SearchParameter", "ValueSet", "CodeSystem", "StructureDefinition", "ConceptMap", "OperationDefinition",
    "CapabilityStatement", "ImplementationGuide", "NamingSystem", "CompartmentDefinition", "StructureMap",
    "GraphDefinition", "MessageDefinition", "TerminologyCapabilities", "ExampleScenario", "Bundle",
}  # fmt: skip

OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "category": [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}
    ],
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}]},
    "subject": {"reference": "Patient/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"},
    "effectiveDateTime": "2024-03-14T09:30:00+01:00",
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 128, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueQuantity": {"value": 82, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        },
    ],
}


def examples(tgz: Path) -> list[dict]:
    found = []
    with tarfile.open(tgz) as archive:
        for member in archive:
            name = member.name.rsplit("/", 1)[-1]
            if not member.isfile() or not name.endswith(".json") or name.split("-")[0] in DEFINITIONAL:
                continue
            resource = json.loads(archive.extractfile(member).read(), parse_float=Decimal)  # type: ignore[union-attr]
            if resource.get("resourceType") in validation.R4_RESOURCE_TYPES - DEFINITIONAL:
                found.append(resource)
    return found


def timed(fn: Callable[[dict], object], resources: list[dict], rounds: int) -> float:
    """µs of CPU per call of ``fn``, over ``rounds`` passes on ``resources`` (no GC pass in between)."""
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        for _ in range(rounds):
            for resource in resources:
                fn(resource)
        return (time.process_time() - start) / (rounds * len(resources)) * 1e6
    finally:
        gc.enable()


def without_bindings(resource: dict) -> object:
    """``issues_of`` as it was before the binding check (``bindings.check`` a no-op for the call)."""
    checked = bindings.check
    validation.bindings.check = lambda resource, root: []  # type: ignore[assignment]
    try:
        return issues_of(resource)
    finally:
        validation.bindings.check = checked  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tgz", nargs="?", type=Path, default=DEFAULT_TGZ)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    validation.warm_up([*validation.COMMON, *validation.R4_RESOURCE_TYPES])
    sets = {
        "Patient (rest_throughput)": ([patient("2780375123456", "IPP-1")], 100),
        "Observation (vital signs)": ([OBSERVATION], 100),
        "official examples": ([r for r in examples(args.tgz) if not issues_of(r)], 1),  # qs1 is invalid
    }
    print(f"{'resources':<28} {'n':>4} {'validation µs':>14} {'without bindings':>17} {'bindings.check':>15}")
    for label, (resources, rounds) in sets.items():
        best = [float("inf")] * 3
        for _ in range(args.repeat):  # alternated, best of each: the machine's noise hits both alike
            for i, fn in enumerate((issues_of, without_bindings, lambda r: bindings.check(r, r["resourceType"]))):
                best[i] = min(best[i], timed(fn, resources, rounds))
        print(f"{label:<28} {len(resources):>4} {best[0]:>14.1f} {best[1]:>17.1f} {best[2]:>15.1f}")


if __name__ == "__main__":
    main()
