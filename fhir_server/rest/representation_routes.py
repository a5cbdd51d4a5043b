"""The operations of representatives and delegates (fhir_server.space.representatives; docs/lifecycle.md)."""

from __future__ import annotations
