"""FHIR R4 health-data server modelling Mon espace santé."""

__version__ = "0.1.0"
FHIR_VERSION = "4.0.1"
