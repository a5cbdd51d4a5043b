"""FHIR interactions: versioning and conditional rules, independent of HTTP and of the database."""

from .context import Context, ResourceResult

__all__ = ["Context", "ResourceResult"]
