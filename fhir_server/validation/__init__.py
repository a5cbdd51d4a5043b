"""Validate incoming FHIR R4 (4.0.1) resources.

Two validators share the work (which type goes where: ``tools/compare_r4_r4b.py``):

* ``r4b``: the ``fhir.resources.R4B`` pydantic models, for the 126 types whose R4B model matches R4, with a
  cheap JSON pass for what the models let through and narrow fix-ups where R4B differs (Extension...);
* ``r4``: a structural validator generated from the R4 StructureDefinitions, for the 20 types with no R4B
  model or an incompatible one (MedicinalProduct*, Substance*, *EvidenceSynthesis, Evidence,
  EvidenceVariable).

Nested resources (contained, Bundle entries, Parameters) go through ``_check`` again, so each one gets
the validator of its own type whatever its container uses.

Both are followed by ``bindings``: every element with a ``required`` R4 binding holds a code of its value
set. Hooked in ``_check``, the one place every write path (create, update, PATCH, Bundles, ``$validate``,
the helper processes, ``fhir-server load``) and every nested resource goes through.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import Issue, invalid_resource
from . import bindings, r4, r4b
from ._common import MAX_ISSUES

__all__ = ["COMMON", "R4_RESOURCE_TYPES", "issues_of", "raise_issues", "validate_resource", "warm_up"]

R4_RESOURCE_TYPES: frozenset[str] = frozenset(
    [
        "Account",
        "ActivityDefinition",
        "AdverseEvent",
        "AllergyIntolerance",
        "Appointment",
        "AppointmentResponse",
        "AuditEvent",
        "Basic",
        "Binary",
        "BiologicallyDerivedProduct",
        "BodyStructure",
        "Bundle",
        "CapabilityStatement",
        "CarePlan",
        "CareTeam",
        "CatalogEntry",
        "ChargeItem",
        "ChargeItemDefinition",
        "Claim",
        "ClaimResponse",
        "ClinicalImpression",
        "CodeSystem",
        "Communication",
        "CommunicationRequest",
        "CompartmentDefinition",
        "Composition",
        "ConceptMap",
        "Condition",
        "Consent",
        "Contract",
        "Coverage",
        "CoverageEligibilityRequest",
        "CoverageEligibilityResponse",
        "DetectedIssue",
        "Device",
        "DeviceDefinition",
        "DeviceMetric",
        "DeviceRequest",
        "DeviceUseStatement",
        "DiagnosticReport",
        "DocumentManifest",
        "DocumentReference",
        "EffectEvidenceSynthesis",
        "Encounter",
        "Endpoint",
        "EnrollmentRequest",
        "EnrollmentResponse",
        "EpisodeOfCare",
        "EventDefinition",
        "Evidence",
        "EvidenceVariable",
        "ExampleScenario",
        "ExplanationOfBenefit",
        "FamilyMemberHistory",
        "Flag",
        "Goal",
        "GraphDefinition",
        "Group",
        "GuidanceResponse",
        "HealthcareService",
        "ImagingStudy",
        "Immunization",
        "ImmunizationEvaluation",
        "ImmunizationRecommendation",
        "ImplementationGuide",
        "InsurancePlan",
        "Invoice",
        "Library",
        "Linkage",
        "List",
        "Location",
        "Measure",
        "MeasureReport",
        "Media",
        "Medication",
        "MedicationAdministration",
        "MedicationDispense",
        "MedicationKnowledge",
        "MedicationRequest",
        "MedicationStatement",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "MessageDefinition",
        "MessageHeader",
        "MolecularSequence",
        "NamingSystem",
        "NutritionOrder",
        "Observation",
        "ObservationDefinition",
        "OperationDefinition",
        "OperationOutcome",
        "Organization",
        "OrganizationAffiliation",
        "Parameters",
        "Patient",
        "PaymentNotice",
        "PaymentReconciliation",
        "Person",
        "PlanDefinition",
        "Practitioner",
        "PractitionerRole",
        "Procedure",
        "Provenance",
        "Questionnaire",
        "QuestionnaireResponse",
        "RelatedPerson",
        "RequestGroup",
        "ResearchDefinition",
        "ResearchElementDefinition",
        "ResearchStudy",
        "ResearchSubject",
        "RiskAssessment",
        "RiskEvidenceSynthesis",
        "Schedule",
        "SearchParameter",
        "ServiceRequest",
        "Slot",
        "Specimen",
        "SpecimenDefinition",
        "StructureDefinition",
        "StructureMap",
        "Subscription",
        "Substance",
        "SubstanceNucleicAcid",
        "SubstancePolymer",
        "SubstanceProtein",
        "SubstanceReferenceInformation",
        "SubstanceSourceMaterial",
        "SubstanceSpecification",
        "SupplyDelivery",
        "SupplyRequest",
        "Task",
        "TerminologyCapabilities",
        "TestReport",
        "TestScript",
        "ValueSet",
        "VerificationResult",
        "VisionPrescription",
    ]
)

# Types worth building before the first request (model import + pydantic schema build is ~10-100 ms each).
COMMON: tuple[str, ...] = (
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "RelatedPerson",
    "Observation",
    "Condition",
    "Encounter",
    "AllergyIntolerance",
    "MedicationRequest",
    "MedicationStatement",
    "Immunization",
    "Procedure",
    "DiagnosticReport",
    "DocumentReference",
    "Binary",
    "Appointment",
    "Communication",
    "Consent",
    "Bundle",
)

_STRUCTURAL = r4.structural_types()


def validate_resource(resource: dict) -> None:
    """Raise ``invalid_resource`` (400) listing what is wrong with ``resource``; return if it is valid R4."""
    raise_issues(issues_of(resource))


def issues_of(resource: object) -> list[Issue]:
    """What is wrong with ``resource`` (nothing: valid R4), at most ``MAX_ISSUES``."""
    if not isinstance(resource, dict):
        return [Issue("structure", "A resource must be a JSON object")]
    rt = resource.get("resourceType")
    root = rt if isinstance(rt, str) and rt in R4_RESOURCE_TYPES else "Resource"
    return _check(resource, root)[:MAX_ISSUES]


def raise_issues(issues: list[Issue]) -> None:
    if issues:
        raise invalid_resource(issues)


def _check(resource: dict, root: str) -> list[Issue]:
    """Issues of one resource, top-level or nested at ``root`` (e.g. ``Bundle.entry[0].resource``)."""
    rt = resource.get("resourceType")
    if not isinstance(rt, str):
        found = "missing" if rt is None else "not a string"
        return [Issue("required" if rt is None else "structure", f"resourceType is {found}", expression=(root,))]
    if rt not in R4_RESOURCE_TYPES:
        return [Issue("value", f"Unknown resource type '{rt}' (not an R4 resource)", expression=(root,))]
    issues = r4.check(resource, root, _check) if rt in _STRUCTURAL else r4b.check(resource, root, _check)
    unbound = bindings.check(resource, root)
    if unbound:  # an element already reported (a malformed code...) is not reported twice
        seen = {issue.expression for issue in issues}
        issues += [issue for issue in unbound if issue.expression not in seen]
    return issues


def warm_up(types: Iterable[str] = COMMON) -> None:
    """Import and build the validators of ``types`` now, so the first request is not slow."""
    bindings.warm()
    for rt in types:
        if rt in _STRUCTURAL:
            continue  # the structural data is loaded at import
        if rt in R4_RESOURCE_TYPES:
            r4b.warm(rt)
