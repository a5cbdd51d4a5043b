"""HTTP: routes, content negotiation, FHIR headers, Bundles, errors as OperationOutcome."""
