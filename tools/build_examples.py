"""Write the French example dataset under examples/ (``fhir-server load examples/``).

Usage: python tools/build_examples.py [--check]
Every fact is written here once and the four transaction Bundles are derived from it, so identifiers keep
their check keys (NIR key 97 - n mod 97, Luhn keys of RPPS and FINESS numbers), each DocumentReference
points at its Binary (and the Binary's securityContext back at it) with the attachment's real size and
SHA-1, and each PDF is a small, valid PDF (built here: no timestamp, so the output is byte-stable).
``--check`` writes nothing and exits 1 if a committed file differs (tests/test_examples_dataset.py runs it).

The people, numbers and organisations are fictitious; the shapes and codes come from the ANS specifications
(Annuaire Santé, FR Core, PDSm / PDSm4DMP, Mesures de santé, TRE_A03, TRE_G15, TRE_R38, ASS_X16): see
examples/README.md. Every entry is ``PUT Type/id``: loading twice writes new versions, never duplicates.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples"

PROJECT = "https://github.com/fhir-server/fhir-server"
PATIENT_PROFILE = f"{PROJECT}/StructureDefinition/mes-patient-ins"
DOCUMENT_PROFILE = f"{PROJECT}/StructureDefinition/mes-dmp-documentreference"
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, f"{PROJECT}/examples")  # stable urn:uuid identifiers

# --- systems --------------------------------------------------------------------------------------------
NOS = "https://mos.esante.gouv.fr/NOS"
INS_NIR = "urn:oid:1.2.250.1.213.1.4.8"
IDNPS = "urn:oid:1.2.250.1.71.4.2.1"  # idNatPs: "8" + RPPS
RPPS = "https://rpps.esante.gouv.fr"
IDNST = "urn:oid:1.2.250.1.71.4.2.2"  # idNatSt: "1" + FINESS
FINESS = "https://finess.esante.gouv.fr"
FR_0203 = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
FR_0445 = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445"
FR_3307 = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-3307"
FR_EXT = "https://hl7.fr/ig/fhir/core/StructureDefinition"
G15 = f"{NOS}/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
R09 = f"{NOS}/TRE_R09-CategorieProfessionnelle/FHIR/TRE-R09-CategorieProfessionnelle"
R23 = f"{NOS}/TRE_R23-ModeExercice/FHIR/TRE-R23-ModeExercice"
R38 = f"{NOS}/TRE_R38-SpecialiteOrdinale/FHIR/TRE-R38-SpecialiteOrdinale"
R02 = f"{NOS}/TRE_R02-SecteurActivite/FHIR/TRE-R02-SecteurActivite"
R13 = f"{NOS}/TRE_R13-Commune/FHIR/TRE-R13-Commune"
A01 = f"{NOS}/TRE_A01-CadreExercice/FHIR/TRE-A01-CadreExercice"
A03 = f"{NOS}/TRE_A03-ClasseDocument/FHIR/TRE-A03-ClasseDocument"
A05 = f"{NOS}/TRE_A05-TypeDocComplementaire/FHIR/TRE-A05-TypeDocComplementaire"
A07 = f"{NOS}/TRE_A07-StatusVisibiliteDocument/FHIR/TRE-A07-StatusVisibiliteDocument"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
FORMAT = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
ATC = "http://www.whocc.no/atc"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"


def coding(system: str, code: str, display: str | None = None) -> dict:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict:
    return {"coding": [coding(system, code, display)], **({"text": text} if text else {})}


def ref(target: str) -> dict:
    return {"reference": target}


# --- identifiers with their check keys ------------------------------------------------------------------


def nir(sex: str, born: str, place: str, order: str) -> str:
    """INS-NIR: sex (1), year and month of birth (4), birth place (5: département + commune, or 99 + country),
    order number (3), then the key 97 - (the 13 digits mod 97)."""
    body = sex + born[2:4] + born[5:7] + place + order
    assert len(body) == 13 and body.isdigit(), body
    return body + f"{97 - int(body) % 97:02d}"


def luhn_key(digits: str) -> str:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return str((10 - total % 10) % 10)


def rpps(stem: str) -> str:
    """An 11-digit RPPS number: 10 digits and a Luhn key."""
    assert len(stem) == 10
    return stem + luhn_key(stem)


def finess(stem: str) -> str:
    """A 9-digit FINESS number: département (2), 6 digits, a Luhn key."""
    assert len(stem) == 8
    return stem + luhn_key(stem)


def stable_uuid(name: str) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, name)}"


def address(line: str, city: str, postal: str, insee: str) -> dict:
    return {
        "extension": [{"url": f"{FR_EXT}/fr-core-address-insee-code", "valueCoding": coding(R13, insee)}],
        "use": "home",
        "line": [line],
        "city": city,
        "postalCode": postal,
        "country": "FRA",
    }


# --- Annuaire Santé: organisations, practitioners, roles ------------------------------------------------

ORGANIZATIONS = [
    # id, name, FINESS stem, sector (TRE_R02) or None, address, phone
    ("ch-loire-estuaire", "Centre hospitalier Loire-Estuaire", "44009901", ("SA01", "Etablissement public de santé"),
     ("3 boulevard du Général de Gaulle", "Rezé", "44400", "44143"), "0199000100"),
    ("centre-sante-erdre", "Centre de santé des Bords de l'Erdre", "44009902", ("SA05", "Centre de santé"),
     ("18 quai de Versailles", "Nantes", "44000", "44109"), "0199000200"),
    ("pharmacie-du-sillon", "Pharmacie du Sillon", "44009903", None,
     ("41 route de Vannes", "Saint-Herblain", "44800", "44162"), "0199000300"),
]  # fmt: skip

PROFESSIONS = {
    "10": "Médecin",
    "21": "Pharmacien",
    "40": "Chirurgien-dentiste",
    "50": "Sage-femme",
    "60": "Infirmier",
    "70": "Masseur-kinésithérapeute",
}
SPECIALTIES = {
    "SM54": "Médecine générale (SM)",
    "SM44": "Radio-diagnostic (SM)",
    "SM03": "Biologie médicale (SM)",
    "SM04": "Cardiologie et Maladies vasculaires (SM)",
}

PRACTITIONERS = [
    # id, civility, family, given, gender, profession, specialty, organization or None, mode (R23), RPPS stem
    ("anne-lebreton", "MME", "Lebreton", "Anne", "female", "10", "SM54", "centre-sante-erdre", "S", "1009990101"),
    ("karim-haddad", "M", "Haddad", "Karim", "male", "10", "SM44", "ch-loire-estuaire", "S", "1009990102"),
    ("isabelle-roux", "MME", "Roux", "Isabelle", "female", "10", "SM03", "ch-loire-estuaire", "S", "1009990103"),
    ("olivier-charpentier", "M", "Charpentier", "Olivier", "male", "10", "SM04", "ch-loire-estuaire", "S",
     "1009990104"),
    ("julien-marechal", "M", "Maréchal", "Julien", "male", "21", None, "pharmacie-du-sillon", "L", "1009990105"),
    ("nadia-ferrand", "MME", "Ferrand", "Nadia", "female", "40", None, "centre-sante-erdre", "S", "1009990106"),
    ("margaux-diallo", "MME", "Diallo", "Margaux", "female", "50", None, "ch-loire-estuaire", "S", "1009990107"),
    ("lucas-perrin", "M", "Perrin", "Lucas", "male", "60", None, None, "L", "1009990108"),
    ("emma-caradec", "MME", "Caradec", "Emma", "female", "70", None, None, "L", "1009990109"),
]  # fmt: skip


def role_id(practitioner: str, organization: str | None) -> str:
    return f"{practitioner}-{organization or 'cabinet-liberal'}"


ROLE_OF = {p[0]: role_id(p[0], p[7]) for p in PRACTITIONERS}


def organization(id_: str, name: str, stem: str, sector, place, phone: str) -> dict:
    number = finess(stem)
    types = [concept(FR_3307, "GEOGRAPHICAL-ENTITY")]
    if sector:
        types.append(concept(R02, *sector))
    line, city, postal, insee = place
    return {
        "resourceType": "Organization",
        "id": id_,
        "identifier": [
            {"use": "official", "type": concept(FR_0203, "IDNST"), "system": IDNST, "value": "1" + number},
            {"use": "official", "type": concept(FR_0203, "FINEG"), "system": FINESS, "value": number},
        ],
        "active": True,
        "type": types,
        "name": name,
        "telecom": [{"system": "phone", "value": phone, "use": "work"}],
        "address": [{**address(line, city, postal, insee), "use": "work"}],
    }


def practitioner(id_, civility, family, given, gender, profession, _specialty, _org, _mode, stem) -> dict:
    number = rpps(stem)
    name = {"use": "official", "family": family, "given": [given], "prefix": [civility]}
    if profession == "10":
        name["suffix"] = ["DR"]
    return {
        "resourceType": "Practitioner",
        "id": id_,
        "identifier": [
            {"use": "official", "type": concept(FR_0203, "IDNPS"), "system": IDNPS, "value": "8" + number},
            {"use": "official", "type": concept(FR_0203, "RPPS"), "system": RPPS, "value": number},
        ],
        "active": True,
        "name": [name],
        "gender": gender,
        "qualification": [
            {"code": {"coding": [coding(G15, profession, PROFESSIONS[profession]), coding(R09, "C")]}},
        ],
    }


def practitioner_role(id_, _civility, family, given, _gender, profession, specialty, org, mode, _stem) -> dict:
    role = {
        "resourceType": "PractitionerRole",
        "id": role_id(id_, org),
        "active": True,
        "practitioner": {"reference": f"Practitioner/{id_}", "display": f"{given} {family}"},
    }
    if org:
        role["organization"] = ref(f"Organization/{org}")
    role["code"] = [concept(G15, profession, PROFESSIONS[profession]), concept(R23, mode)]
    if specialty:
        role["specialty"] = [concept(R38, specialty, SPECIALTIES[specialty])]
    return role


# --- patients (INS) ---------------------------------------------------------------------------------------

PATIENTS = [
    dict(id="lea-marchand", sex="2", gender="female", born="1987-06-14", place="44109", order="057",
         family="Marchand", given=["Léa", "Juliette"], birth_city=("Nantes", "44109"),
         home=("12 rue de Strasbourg", "Nantes", "44000", "44109"), phone="0199001201", gp=True),
    dict(id="hugo-marchand", sex="1", gender="male", born="2018-03-02", place="44109", order="412",
         family="Marchand", given=["Hugo", "Martin"], birth_city=("Nantes", "44109"),
         home=("12 rue de Strasbourg", "Nantes", "44000", "44109"), phone=None, gp=True),
    dict(id="jean-pierre-morel", sex="1", gender="male", born="1952-11-23", place="69383", order="128",
         family="Morel", given=["Jean-Pierre", "Louis"], birth_city=("Lyon 3e Arrondissement", "69383"),
         home=("5 allée des Sorbiers", "Rezé", "44400", "44143"), phone="0199001203", gp=True),
    dict(id="fatima-garnier", sex="2", gender="female", born="1975-09-08", place="99350", order="033",
         family="Benali", used="Garnier", given=["Fatima", "Zahra"], birth_city=None,
         home=("27 rue du Moulin", "Saint-Herblain", "44800", "44162"), phone="0199001204", gp=True),
    dict(id="mael-le-goff", sex="1", gender="male", born="2001-01-30", place="35238", order="204",
         family="Le Goff", given=["Maël"], birth_city=("Rennes", "35238"),
         home=("9 rue Paul Bellamy", "Nantes", "44000", "44109"), phone="0199001205", gp=False),
]  # fmt: skip
GP = "anne-lebreton"  # the médecin traitant


def ins_of(p: dict) -> str:
    return nir(p["sex"], p["born"], p["place"], p["order"])


def ins_identifier(p: dict) -> dict:
    return {"use": "official", "type": concept(FR_0203, "INS-NIR", "NIR définitif"), "system": INS_NIR,
            "value": ins_of(p)}  # fmt: skip


def patient(p: dict) -> dict:
    official = {
        "extension": [{"url": f"{FR_EXT}/fr-core-patient-birth-list-given-name", "valueString": " ".join(p["given"])}],
        "use": "official",
        "family": p["family"],
        "given": [p["given"][0]],
    }
    names = [official]
    if p.get("used"):
        names.append({"use": "usual", "family": p["used"], "given": [p["given"][0]]})
    resource: dict = {
        "resourceType": "Patient",
        "id": p["id"],
        "meta": {"profile": [PATIENT_PROFILE]},
        "extension": [
            {
                "url": f"{FR_EXT}/fr-core-identity-reliability",
                "extension": [
                    {"url": "identityStatus", "valueCoding": coding(FR_0445, "VALI", "Identité validée")},
                    {"url": "validationDate", "valueDate": "2026-01-05"},
                ],
            }
        ],
        "identifier": [ins_identifier(p)],
        "active": True,
        "name": names,
    }
    if p["phone"]:
        resource["telecom"] = [{"system": "phone", "value": p["phone"], "use": "mobile"}]
    resource["gender"] = p["gender"]
    resource["birthDate"] = p["born"]
    resource["address"] = [address(*p["home"])]
    if p["birth_city"]:
        city, insee = p["birth_city"]
        place = {"extension": [{"url": f"{FR_EXT}/fr-core-address-insee-code", "valueCoding": coding(R13, insee)}],
                 "city": city, "country": "FRA"}  # fmt: skip
    else:
        place = {"country": "MAR"}
    resource["extension"].append({"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                                  "valueAddress": place})  # fmt: skip
    if p["gp"]:
        resource["generalPractitioner"] = [{"reference": f"Practitioner/{GP}", "display": "Dr Anne Lebreton"}]
    return resource


def mother_of_hugo() -> dict:
    """Léa as Hugo's legal representative (an *ayant droit* of Mon espace santé): she manages his space."""
    lea = PATIENTS[0]
    return {
        "resourceType": "RelatedPerson",
        "id": "lea-marchand-mere-de-hugo",
        "identifier": [ins_identifier(lea)],
        "active": True,
        "patient": {"reference": "Patient/hugo-marchand", "display": "Hugo Marchand"},
        "relationship": [concept(ROLE_CODE, "MTH", "mother"), concept(ROLE_CODE, "GUARD", "guardian")],
        "name": [{"use": "official", "family": "Marchand", "given": ["Léa"]}],
        "telecom": [{"system": "phone", "value": lea["phone"], "use": "mobile"}],
        "gender": "female",
        "birthDate": lea["born"],
    }


# --- DMP documents (PDSm DocumentReference + Binary) --------------------------------------------------------

CLASSES = {  # TRE_A03-ClasseDocument
    "10": "Compte rendu",
    "11": "Synthèse",
    "31": "Imagerie",
    "42": "Prescription",
    "43": "Dispensation",
    "52": "Certificat",
    "90": "Patient (expression personnelle)",
}
ETABLISSEMENT = concept(A01, "ETABLISSEMENT", "Etablissement de santé")
HOSPITAL = (concept(R02, "SA01", "Etablissement public de santé"), ETABLISSEMENT)
HEALTH_CENTRE = (concept(R02, "SA05", "Centre de santé"), ETABLISSEMENT)
AMBULATORY = (concept(SNOMED, "35971002", "Ambulatory care site"), concept(SNOMED, "394802001", "General medicine"))

DOCUMENTS = [
    dict(id="lea-marchand-cr-biologie-2026-01", patient="lea-marchand",
         type=(LOINC, "11502-2", "CR d'examens biologiques"), cls="10",
         author=f"PractitionerRole/{ROLE_OF['isabelle-roux']}", setting=HOSPITAL,
         date="2026-01-20T14:05:00+01:00", period=("2026-01-19T08:30:00+01:00", None), masked=True,
         title="Bilan sanguin du 19/01/2026",
         lines=["Compte rendu d'examens de biologie médicale", "Patiente : Léa MARCHAND, née le 14/06/1987",
                "Prélèvement du 19/01/2026 - Laboratoire du CH Loire-Estuaire",
                "Hémoglobine 13,4 g/dL ; TSH 2,1 mUI/L ; ferritine 48 µg/L", "Dr Isabelle Roux, biologiste"]),
    dict(id="lea-marchand-synthese-2026", patient="lea-marchand", type=(LOINC, "60591-5", "Synthèse médicale"),
         cls="11", author=f"PractitionerRole/{ROLE_OF['anne-lebreton']}", setting=HEALTH_CENTRE,
         date="2026-03-04T11:20:00+01:00", period=("2026-03-04T10:45:00+01:00", "2026-03-04T11:15:00+01:00"),
         title="Volet de synthèse médicale",
         lines=["Volet de synthèse médicale", "Patiente : Léa MARCHAND, née le 14/06/1987",
                "Antécédents : asthme depuis l'enfance", "Allergie : pénicilline (urticaire)",
                "Traitement : salbutamol à la demande", "Dr Anne Lebreton, médecin traitant"]),
    dict(id="hugo-marchand-note-vaccination-2024", patient="hugo-marchand",
         type=(LOINC, "87273-9", "Note de vaccination"), cls="52",
         author=f"PractitionerRole/{ROLE_OF['anne-lebreton']}",
         setting=HEALTH_CENTRE, date="2024-04-10T17:40:00+02:00", period=("2024-04-10T17:15:00+02:00", None),
         title="Rappel DTCaPolio des 6 ans",
         lines=["Note de vaccination", "Patient : Hugo MARCHAND, né le 02/03/2018",
                "Rappel diphtérie, tétanos, coqueluche, poliomyélite (6 ans) le 10/04/2024",
                "Dr Anne Lebreton"]),
    dict(id="jean-pierre-morel-cr-hospitalisation-2025", patient="jean-pierre-morel",
         type=(LOINC, "34112-3", "CR hospitalier (séjour)"), cls="10",
         author=f"PractitionerRole/{ROLE_OF['olivier-charpentier']}", setting=HOSPITAL,
         date="2025-10-08T16:30:00+02:00", period=("2025-10-02T09:00:00+02:00", "2025-10-07T11:00:00+02:00"),
         title="Compte rendu d'hospitalisation - cardiologie",
         lines=["Compte rendu d'hospitalisation - service de cardiologie",
                "Patient : Jean-Pierre MOREL, né le 23/11/1952", "Séjour du 02/10/2025 au 07/10/2025",
                "Motif : décompensation cardiaque ; évolution favorable", "Dr Olivier Charpentier, cardiologue"]),
    dict(id="jean-pierre-morel-cr-imagerie-2025", patient="jean-pierre-morel",
         type=(LOINC, "18748-4", "CR d'imagerie médicale"), cls="31",
         author=f"PractitionerRole/{ROLE_OF['karim-haddad']}", setting=HOSPITAL,
         date="2025-10-03T10:15:00+02:00", period=("2025-10-03T09:40:00+02:00", "2025-10-03T09:55:00+02:00"),
         title="Radiographie thoracique de face",
         lines=["Compte rendu d'imagerie médicale", "Patient : Jean-Pierre MOREL, né le 23/11/1952",
                "Radiographie thoracique de face du 03/10/2025",
                "Cardiomégalie modérée ; pas d'épanchement pleural", "Dr Karim Haddad, radiologue"]),
    dict(id="fatima-garnier-ordonnance-2026-05", patient="fatima-garnier",
         type=(LOINC, "57833-6", "Prescription de produits de santé"), cls="42",
         author=f"PractitionerRole/{ROLE_OF['anne-lebreton']}", setting=HEALTH_CENTRE,
         date="2026-05-12T09:50:00+02:00", period=("2026-05-12T09:30:00+02:00", None),
         title="Ordonnance du 12/05/2026",
         lines=["Ordonnance", "Patiente : Fatima GARNIER (née BENALI), née le 08/09/1975",
                "Lévothyroxine 75 µg : 1 comprimé le matin, 3 mois", "Dr Anne Lebreton"]),
    dict(id="fatima-garnier-dispensation-2026-05", patient="fatima-garnier",
         type=(LOINC, "60593-1", "Dispensation médicamenteuse"), cls="43",
         author=f"PractitionerRole/{ROLE_OF['julien-marechal']}", setting=AMBULATORY,
         date="2026-05-12T17:05:00+02:00", period=("2026-05-12T17:00:00+02:00", None),
         title="Dispensation du 12/05/2026",
         lines=["Dispensation médicamenteuse", "Patiente : Fatima GARNIER (née BENALI)",
                "Lévothyroxine 75 µg, boîte de 30 comprimés x 3", "Pharmacie du Sillon, Julien Maréchal"]),
    dict(id="mael-le-goff-document-patient-2026", patient="mael-le-goff",
         type=(A05, "EXPPAT_2", "Autre document du patient"), cls="90", author="Patient/mael-le-goff",
         setting=AMBULATORY, date="2026-09-15T20:12:00+02:00", period=None,
         title="Mes certificats de sport",
         lines=["Document ajouté par le patient", "Maël LE GOFF, né le 30/01/2001",
                "Copie de mes certificats de non contre-indication au sport"]),
]  # fmt: skip


def _pdf_text(text: str) -> bytes:
    out = bytearray(b"(")
    for byte in text.encode("cp1252"):
        if byte in b"()\\":
            out += b"\\" + bytes([byte])
        elif byte >= 0x80:
            out += f"\\{byte:03o}".encode()
        else:
            out.append(byte)
    return bytes(out + b")")


def tiny_pdf(lines: list[str]) -> bytes:
    """A one-page PDF 1.4 (Helvetica, WinAnsiEncoding) showing ``lines``, with an exact xref table."""
    text = [b"BT /F1 13 Tf 56 780 Td ", _pdf_text(lines[0]), b" Tj /F1 10 Tf"]
    for line in lines[1:]:
        text += [b" 0 -18 Td ", _pdf_text(line), b" Tj"]
    text += [b" 0 -30 Td ", _pdf_text("Document fictif - jeu d'exemples fhir-server"), b" Tj ET"]
    stream = b"".join(text)
    objects = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]/Resources<</Font<</F1 4 0 R>>>>/Contents 5 0 R>>",
        b"<</Type/Font/Subtype/Type1/BaseFont/Helvetica/Encoding/WinAnsiEncoding>>",
        b"<</Length %d>>stream\n" % len(stream) + stream + b"\nendstream",
    ]
    pdf = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    pdf += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    pdf += b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(pdf)


def document(d: dict) -> tuple[dict, dict]:
    pdf = tiny_pdf(d["lines"])
    binary_id = f"{d['id']}-pdf"
    labels = [concept(CONFIDENTIALITY, "N", "normal")]
    if d.get("masked"):
        labels.append(concept(A07, "MASQUE_PS", "Masqué aux professionnels de santé"))
    facility, practice = d["setting"]
    context: dict = {}
    if d["period"]:
        start, end = d["period"]
        context["period"] = {"start": start, **({"end": end} if end else {})}
    context.update(facilityType=facility, practiceSetting=practice, sourcePatientInfo=ref(f"Patient/{d['patient']}"))
    reference = {
        "resourceType": "DocumentReference",
        "id": d["id"],
        "meta": {"profile": [DOCUMENT_PROFILE]},
        "masterIdentifier": {"use": "usual", "system": "urn:ietf:rfc:3986", "value": stable_uuid(d["id"])},
        "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986", "value": stable_uuid(d["id"] + "#entry")}],
        "status": "current",
        "docStatus": "final",
        "type": concept(*d["type"]),
        "category": [concept(A03, d["cls"], CLASSES[d["cls"]])],
        "subject": ref(f"Patient/{d['patient']}"),
        "date": d["date"],
        "author": [ref(d["author"])],
        "description": d["title"],
        "securityLabel": labels,
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "language": "fr-FR",
                    "url": f"Binary/{binary_id}",
                    "size": len(pdf),
                    "hash": base64.b64encode(hashlib.sha1(pdf).digest()).decode(),
                    "title": d["title"],
                    "creation": d["date"],
                },
                "format": coding(FORMAT, "urn:ihe:iti:xds:2017:mimeTypeSufficient", "mimeType Sufficient"),
            }
        ],
        "context": context,
    }
    binary = {
        "resourceType": "Binary",
        "id": binary_id,
        "contentType": "application/pdf",
        "securityContext": ref(f"DocumentReference/{d['id']}"),
        "data": base64.b64encode(pdf).decode(),
    }
    return reference, binary


# --- medical profile (Léa; Hugo's vaccinations) -------------------------------------------------------------

LEA, HUGO = "Patient/lea-marchand", "Patient/hugo-marchand"
VITAL_SIGNS = [concept(f"{TERMINOLOGY}/observation-category", "vital-signs", "Vital Signs")]
MEASURED = "2026-09-01T08:10:00+02:00"


def observation(id_: str, code: str, display: str, text: str, **value) -> dict:
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "category": VITAL_SIGNS,
        "code": concept(LOINC, code, display, text),
        "subject": ref(LEA),
        "effectiveDateTime": MEASURED,
        "performer": [ref(LEA)],  # a measure the person entered in her space
        **value,
    }


def server_bmi(id_: str, value: float, weight: str, height: str) -> dict:
    """The BMI as the server computes and keeps it (record/measures_bmi.py): a client may not send one, so
    the dataset carries it in the server's shape (its tag, identifier and sources)."""
    bmi = observation(id_, "39156-5", "Body mass index (BMI) [Ratio]", "IMC", valueQuantity=quantity(value, "kg/m2"))
    del bmi["performer"]
    bmi["meta"] = {"tag": [{"system": f"{PROJECT}/CodeSystem/mes-origin", "code": "server-computed"}]}
    bmi["identifier"] = [{"system": f"{PROJECT}/identifier/computed-bmi", "value": LEA.split("/", 1)[1]}]
    bmi["derivedFrom"] = [ref(f"Observation/{weight}"), ref(f"Observation/{height}")]
    return bmi


def quantity(value: float, unit: str, code: str | None = None) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": code or unit}


def immunization(id_: str, patient: str, atc: tuple[str, str], text: str, date: str, diseases, dose: int | str,
                 performer: str | None, lot: str | None) -> dict:  # fmt: skip
    resource = {
        "resourceType": "Immunization",
        "id": id_,
        "status": "completed",
        "vaccineCode": concept(ATC, *atc, text=text),
        "patient": ref(patient),
        "occurrenceDateTime": date,
        "primarySource": performer is not None,
    }
    if performer is None:
        resource["reportOrigin"] = concept(f"{TERMINOLOGY}/immunization-origin", "record", "Written Record")
    if lot:
        resource["lotNumber"] = lot
    if performer:
        resource["performer"] = [{"actor": ref(performer)}]
    dose_number = {"doseNumberString": dose} if isinstance(dose, str) else {"doseNumberPositiveInt": dose}
    resource["protocolApplied"] = [{"targetDisease": [concept(SNOMED, code, name) for code, name in diseases],
                                    **dose_number}]  # fmt: skip
    return resource


DTP_ATC = ("J07CA02", "diphtheria-pertussis-poliomyelitis-tetanus")
FLU_ATC = ("J07BB02", "influenza, inactivated, split virus or surface antigen")
MMR_ATC = ("J07BD52", "measles, combinations with mumps and rubella, live attenuated")
DTP_POLIO = [("397430003", "Diphtheria"), ("76902006", "Tetanus"), ("27836007", "Pertussis"),
             ("398102009", "Acute poliomyelitis")]  # fmt: skip
MMR = [("14189004", "Measles"), ("36989005", "Mumps"), ("36653000", "Rubella")]


def medical_profile() -> list[dict]:
    gp = f"Practitioner/{GP}"
    return [
        {
            "resourceType": "AllergyIntolerance",
            "id": "lea-marchand-allergie-penicilline",
            "clinicalStatus": concept(f"{TERMINOLOGY}/allergyintolerance-clinical", "active", "Active"),
            "verificationStatus": concept(f"{TERMINOLOGY}/allergyintolerance-verification", "confirmed", "Confirmed"),
            "type": "allergy",
            "category": ["medication"],
            "criticality": "high",
            "code": concept(SNOMED, "91936005", "Allergy to penicillin", "Allergie à la pénicilline"),
            "patient": ref(LEA),
            "onsetDateTime": "2009",
            "recordedDate": "2026-03-04",
            "recorder": ref(gp),
            "reaction": [
                {"manifestation": [concept(SNOMED, "126485001", "Urticaria", "Urticaire")], "severity": "moderate"}
            ],
        },
        {
            "resourceType": "Condition",
            "id": "lea-marchand-asthme",
            "clinicalStatus": concept(f"{TERMINOLOGY}/condition-clinical", "active", "Active"),
            "verificationStatus": concept(f"{TERMINOLOGY}/condition-ver-status", "confirmed", "Confirmed"),
            "category": [concept(f"{TERMINOLOGY}/condition-category", "problem-list-item", "Problem List Item")],
            "code": {
                "coding": [coding(SNOMED, "195967001", "Asthma"), coding(ICD10, "J45.9", "Asthma, unspecified")],
                "text": "Asthme",
            },
            "subject": ref(LEA),
            "onsetDateTime": "2001",
            "recordedDate": "2026-03-04",
            "recorder": ref(gp),
        },
        immunization("lea-marchand-vaccin-dtcapolio-2012", LEA, DTP_ATC,
                     "Rappel dTcaPolio de l'adulte (25 ans)", "2012-10-15", DTP_POLIO, "rappel 25 ans", None, None),
        immunization("lea-marchand-vaccin-grippe-2025", LEA, FLU_ATC,
                     "Vaccin grippal saisonnier 2025-2026", "2025-10-20", [("6142004", "Influenza")], 1,
                     "Practitioner/lucas-perrin", "GRP25A117"),
        immunization("hugo-marchand-vaccin-ror-1", HUGO, MMR_ATC,
                     "ROR, 1re dose (12 mois)", "2019-03-05", MMR, 1, gp, "ROR19C052"),
        immunization("hugo-marchand-vaccin-ror-2", HUGO, MMR_ATC,
                     "ROR, 2e dose (16 mois)", "2019-07-16", MMR, 2, gp, "ROR19G318"),
        immunization("hugo-marchand-vaccin-dtcapolio-6-ans", HUGO, DTP_ATC,
                     "Rappel DTCaPolio (6 ans)", "2024-04-10", DTP_POLIO, "rappel 6 ans", gp, "DTC24D091"),
        observation("lea-marchand-poids-2026-09", "29463-7", "Body weight", "Poids",
                    valueQuantity=quantity(64.5, "kg")),
        observation("lea-marchand-taille-2026-09", "8302-2", "Body height", "Taille",
                    valueQuantity=quantity(168, "cm")),
        server_bmi("lea-marchand-imc-2026-09", 22.9, "lea-marchand-poids-2026-09", "lea-marchand-taille-2026-09"),
        observation("lea-marchand-tension-2026-09", "85354-9", "Blood pressure panel with all children optional",
                    "Tension artérielle", component=[
                        {"code": concept(LOINC, "8480-6", "Systolic blood pressure"),
                         "valueQuantity": quantity(118, "mm[Hg]")},
                        {"code": concept(LOINC, "8462-4", "Diastolic blood pressure"),
                         "valueQuantity": quantity(76, "mm[Hg]")},
                    ]),
        observation("lea-marchand-frequence-cardiaque-2026-09", "8867-4", "Heart rate", "Fréquence cardiaque",
                    valueQuantity=quantity(68, "/min")),
    ]  # fmt: skip


# --- the Bundles ----------------------------------------------------------------------------------------------


def transaction(resources: list[dict]) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources
        ],
    }


def build() -> dict[str, bytes]:
    """file name → content."""
    documents = [document(d) for d in DOCUMENTS]
    bundles = {
        "annuaire.json": [organization(*o) for o in ORGANIZATIONS]
        + [practitioner(*p) for p in PRACTITIONERS]
        + [practitioner_role(*p) for p in PRACTITIONERS],
        "patients.json": [patient(p) for p in PATIENTS] + [mother_of_hugo()],
        "dmp-documents.json": [resource for pair in documents for resource in pair],
        "medical-profile.json": medical_profile(),
    }
    return {
        name: (json.dumps(transaction(resources), ensure_ascii=False, indent=2) + "\n").encode()
        for name, resources in bundles.items()
    }


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, content in build().items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_bytes() != content:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            print(f"wrote {path.relative_to(ROOT)} ({len(content):,} bytes)")
    if stale:
        print(f"examples/ differs from tools/build_examples.py: {', '.join(stale)} (run it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
