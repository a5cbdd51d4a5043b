"""Secure messaging between professionals and the patient (docs/messaging.md)."""
