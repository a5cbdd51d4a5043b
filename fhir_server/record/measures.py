"""Health measures as the ANS "Mesures de santé" IG defines them: which LOINC code carries which UCUM units.

A write of an Observation coded with one of the IG's measure codes must carry a value in one of that measure's
units (422 naming the element otherwise); codes outside the list pass unchanged (not the IG's measures). BMI
(39156-5) is the server's own (``measures_bmi``): a client-sent one is refused, as the IG's flux does
("Bmi observation cannot be created", NOTSUPPORTED).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FhirError, Issue

LOINC = "http://loinc.org"
#: The IG's examples code LOINC in the ANS terminology server's copy of it (TRE_A04): the same codes.
LOINC_SYSTEMS = frozenset({LOINC, "https://mos.esante.gouv.fr/NOS/TRE_A04-Loinc/FHIR/TRE-A04-Loinc"})
UCUM = "http://unitsofmeasure.org"

WEIGHT = "29463-7"
HEIGHT = "8302-2"
BMI = "39156-5"
BLOOD_PRESSURE = "85354-9"
SYSTOLIC = "8480-6"
DIASTOLIC = "8462-4"


@dataclass(frozen=True, slots=True)
class Measure:
    name: str
    units: frozenset[str]
    components: tuple[str, ...] = ()  # codes of the required components (their values carry the units)


def _m(name: str, *units: str, components: tuple[str, ...] = ()) -> Measure:
    return Measure(name, frozenset(units), components)


#: The IG's profiles (Liste des codes des observations; biology and lipid profiles) and their UCUM units.
MEASURES: dict[str, Measure] = {
    WEIGHT: _m("body weight", "kg", "g"),
    HEIGHT: _m("body height", "cm", "m"),
    BMI: _m("body mass index", "kg/m2"),
    BLOOD_PRESSURE: _m("blood pressure", "mm[Hg]", components=(SYSTOLIC, DIASTOLIC)),
    SYSTOLIC: _m("systolic blood pressure", "mm[Hg]"),
    DIASTOLIC: _m("diastolic blood pressure", "mm[Hg]"),
    "8867-4": _m("heart rate", "/min"),
    "8310-5": _m("body temperature", "Cel"),
    "59408-5": _m("oxygen saturation", "%"),  # SpO2 by pulse oximetry (MesFrObservationOxygenSat)
    "2708-6": _m("oxygen saturation", "%"),
    "2339-0": _m("blood glucose", "mmol/L", "mg/dL", "g/L"),
    "15074-8": _m("blood glucose", "mmol/L", "mg/dL", "g/L"),
    "4548-4": _m("HbA1c", "%"),
    "72514-3": _m("pain severity", "{score}", "1"),
    "41950-7": _m("steps per day", "/d", "{steps}/d", "1"),
    "8280-0": _m("waist circumference", "cm"),
    "8287-5": _m("head circumference", "cm"),
    "2093-3": _m("total cholesterol", "mmol/L", "mg/dL", "g/L"),
    "2085-9": _m("HDL cholesterol", "mmol/L", "mg/dL", "g/L"),
    "13457-7": _m("LDL cholesterol", "mmol/L", "mg/dL", "g/L"),
    "18262-6": _m("LDL cholesterol", "mmol/L", "mg/dL", "g/L"),
    "2571-8": _m("triglycerides", "mmol/L", "mg/dL", "g/L"),
}


def invalid(diagnostics: str, expression: str, code: str = "value") -> FhirError:
    """The IG answers 422 with an OperationOutcome of level error (Le flux d'alimentation des mesures)."""
    return FhirError(422, [Issue(code, diagnostics, expression=(expression,))])


def loinc_codes(concept: object) -> list[str]:
    """The LOINC codes of a CodeableConcept."""
    if not isinstance(concept, dict):
        return []
    codings = concept.get("coding") or ()
    return [c["code"] for c in codings if isinstance(c, dict) and c.get("system") in LOINC_SYSTEMS and c.get("code")]


#: The glucose profile binds its code extensibly (blood, interstitial glucose, the glucose management indicator
#: estimating HbA1c) and its units to JDV_J163: an Observation declaring it is held to those units whatever its
#: code (the IG's own glucose example codes 4548-4 in mg/dL).
GLUCOSE_PROFILE = "https://interop.esante.gouv.fr/ig/fhir/mesures/StructureDefinition/mesures-observation-glucose"
GLUCOSE = _m("glucose measure", "mg/dL", "mmol/L", "g/L", "%")


def measure_of(observation: dict) -> Measure | None:
    """The IG's measure the Observation is (None: not one of the IG's measures)."""
    if GLUCOSE_PROFILE in ((observation.get("meta") or {}).get("profile") or ()):
        return GLUCOSE
    code = next((code for code in loinc_codes(observation.get("code")) if code in MEASURES), None)
    return MEASURES[code] if code else None


def is_bmi(observation: dict | None) -> bool:
    return observation is not None and BMI in loinc_codes(observation.get("code"))


def check(observation: dict) -> None:
    """Raise 422 when a known measure's value is missing or not in one of its UCUM units."""
    measure = measure_of(observation)
    if measure is None:
        return
    if measure.components:
        _check_components(observation, measure)
        return
    if "dataAbsentReason" in observation:
        return
    _check_quantity(observation.get("valueQuantity"), measure, "Observation", observation)


def _check_components(observation: dict, measure: Measure) -> None:
    found = set()
    for index, component in enumerate(observation.get("component") or ()):
        code = next((c for c in loinc_codes(component.get("code")) if c in measure.components), None)
        if code is None:
            continue
        found.add(code)
        if "dataAbsentReason" not in component:
            _check_quantity(
                component.get("valueQuantity"), MEASURES[code], f"Observation.component[{index}]", component
            )
    missing = [c for c in measure.components if c not in found]
    if missing:
        raise invalid(
            f"A {measure.name} carries the components {', '.join(measure.components)} "
            f"(LOINC); missing: {', '.join(missing)}",
            "Observation.component",
            "required",
        )


def _check_quantity(quantity: object, measure: Measure, where: str, element: dict) -> None:
    if not isinstance(quantity, dict) or quantity.get("value") is None:
        other = next((k for k in element if k.startswith("value")), None)
        if other is not None and other != "valueQuantity":
            raise invalid(f"A {measure.name} is a Quantity, not {other}", f"{where}.{other}")
        raise invalid(f"Observation value quantity not provided ({measure.name})", f"{where}.valueQuantity", "required")
    if quantity.get("system") != UCUM or quantity.get("code") not in measure.units:
        units = ", ".join(sorted(measure.units))
        raise invalid(
            f"A {measure.name} is given in UCUM ({UCUM}) as one of: {units}; "
            f"got system {quantity.get('system')!r}, code {quantity.get('code')!r}",
            f"{where}.valueQuantity.code",
        )
