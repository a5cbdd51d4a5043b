"""Mon espace santé access policy: the habilitation matrix, the patient's choices, emergency modes (docs/policy.md)."""
