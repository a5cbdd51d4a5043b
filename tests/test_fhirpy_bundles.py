"""A real client (fhirpy) posts a transaction Bundle and a JSON Patch to the running server."""

from __future__ import annotations

from fhirpy import SyncFHIRClient

INS = "urn:oid:1.2.250.1.213.1.4.8"


def test_fhirpy_posts_a_transaction_and_a_json_patch(server):
    base, _ = server
    client = SyncFHIRClient(base)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0b6e7f3c-98d3-4a3b-9d3e-6a0f4c3c2a11",
                "resource": {"resourceType": "Patient", "identifier": [{"system": INS, "value": "2850599000001"}],
                             "name": [{"family": "Bénard", "given": ["Élise"]}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "Poids"},
                             "subject": {"reference": "urn:uuid:0b6e7f3c-98d3-4a3b-9d3e-6a0f4c3c2a11"},
                             "valueQuantity": {"value": 61.5, "unit": "kg"}},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }  # fmt: skip
    answer = client.execute("", method="post", data=bundle)
    assert answer["type"] == "transaction-response"
    patient_id = answer["entry"][0]["response"]["location"].split("/")[1]
    observation = client.resources("Observation").search(subject=f"Patient/{patient_id}").fetch()
    assert len(observation) == 1 and observation[0]["subject"]["reference"] == f"Patient/{patient_id}"

    patched = client._do_request(  # fhirpy's own request path, with the JSON Patch media type
        "patch",
        f"Patient/{patient_id}",
        data=[{"op": "add", "path": "/gender", "value": "female"}],
        extra_headers={"Content-Type": "application/json-patch+json"},
    )
    assert patched["gender"] == "female" and patched["meta"]["versionId"] == "2"
    assert client.reference("Patient", patient_id).to_resource()["gender"] == "female"
