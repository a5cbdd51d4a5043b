"""The medical record: measures, documents, summary."""
