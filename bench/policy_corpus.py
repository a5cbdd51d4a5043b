#!/usr/bin/env python3
"""Build the access-policy benchmark corpus straight into a SQLite store: a directory of professionals,
Patients, their DMP documents and their privacy Consents (issue 10's "≥ 10,000 patients x 20 documents with
consents").

Written like ``bench/search_corpus.py`` (whose helpers it reuses): every resource goes through the server's
own write path minus HTTP — ``crud.stamp``, ``fhirjson.dumps``, ``search.indexing.index_entries`` (so the
index holds exactly what the server would write), ``store.transact`` / ``Transaction.put`` with ``--batch``
resources per unit of work, the secondary indexes dropped during the load and rebuilt at the end with their
own SQL. One resource in ``--validate-every`` (and the first of each kind) also goes through the server's
structural validation (``validation.validate_resource``): the shapes are valid R4 without paying ~0.5 ms of
validation per resource.

Corpus (deterministic, ``--seed``):

- **Directory**: ``--organizations`` Organizations, ``--professionals`` Practitioners (idNatPs
  ``urn:oid:1.2.250.1.71.4.2.1``) each with one PractitionerRole whose ``code`` is its TRE_G15 profession:
  médecins (10) half of them, then pharmaciens (21), infirmiers (60), chirurgiens-dentistes (40),
  masseurs-kinésithérapeutes (70). ``role-00`` (idNatPs ``810000000000``) is the bench's médecin,
  ``role-01`` (``810000000001``) its pharmacien.
- **Patients** (``--patients``, French names, INS, address: ``search_corpus.patient``); ``--gp-share`` of
  them have a ``generalPractitioner`` (a médecin's PractitionerRole).
- **DocumentReferences**, ``--docs`` per patient: DMP shapes (``examples/dmp-documents.json``): type and
  TRE_A03 class from the shipped habilitation matrix (common classes weighted up), ``subject`` the patient,
  ``author`` a PractitionerRole (mostly one the patient authorised), a confidentiality label on every
  document and TRE_A07 ``MASQUE_PS`` on ``--masked-share`` of them, an attachment pointing at a Binary (the
  Binaries themselves are not created: the bench reads DocumentReferences only).
- **Consents** shaped as ``tests/test_policy.py`` ``consent()`` builds them (scope patient-privacy,
  ``provision.type``, ``provision.actor`` with a role): each patient authorises 2-3 professionals (one
  permit Consent each, v3 IRCP), ``--block-share`` of them block one other professional (deny, naming the
  Practitioner or the PractitionerRole), ``--admin-share`` make one an administrateur.
- **Patient ``bench-200``** with ``--bench-docs`` (200) documents; authorised: the bench's médecin (not
  médecin traitant, so masked documents stay hidden to it), its pharmacien and one other professional.

At the end: build time, database size, counts, and ``<db>.policy.json`` beside the database (the ids the
bench uses: its professionals, the bench patient, the documents to read, the counts each caller should see).

Usage (from the repository root)::

    .venv/bin/python bench/policy_corpus.py --store sqlite:////tmp/policy_corpus/policy.db      # 10,000 x 20
    .venv/bin/python bench/policy_corpus.py --store sqlite:////tmp/policy_small.db --patients 500 --force
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource as rusage
import sqlite3
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_corpus import FAMILY, BatchWriter, Ids, Progress, _build, drop_secondary_indexes, patient

from fhir_server.policy import codes
from fhir_server.policy.matrix import HabilitationMatrix
from fhir_server.store import open_store, sqlite_path
from fhir_server.validation import validate_resource

LOINC = "http://loinc.org"
TRE_A03 = "https://mos.esante.gouv.fr/NOS/TRE_A03-ClasseDocument/FHIR/TRE-A03-ClasseDocument"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
FORMAT_CODE = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
TRE_R02 = "https://mos.esante.gouv.fr/NOS/TRE_R02-SecteurActivite/FHIR/TRE-R02-SecteurActivite"
TRE_A01 = "https://mos.esante.gouv.fr/NOS/TRE_A01-CadreExercice/FHIR/TRE-A01-CadreExercice"
TRE_R38 = "https://mos.esante.gouv.fr/NOS/TRE_R38-SpecialiteOrdinale/FHIR/TRE-R38-SpecialiteOrdinale"
FR_V2_0203 = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
BENCH_PATIENT = "bench-200"
#: (TRE_G15 code, label, share of the directory); the first two professionals are the bench's callers.
PROFESSIONS = (("10", "Médecin", 0.5), ("21", "Pharmacien", 0.15), ("60", "Infirmier", 0.15),
               ("40", "Chirurgien-dentiste", 0.1), ("70", "Masseur-kinésithérapeute", 0.1))  # fmt: skip
#: relative frequency of a document class in a record (spread over the class's types in the matrix)
CLASS_WEIGHTS = {"10": 35, "11": 12, "31": 8, "42": 18, "43": 6, "44": 3, "45": 2, "52": 6, "60": 1, "90": 3,
                 "95": 3, "?": 3}  # fmt: skip
DOC_FROM = datetime(2015, 1, 1, tzinfo=UTC)
DOC_SPAN_S = int((datetime(2025, 6, 1, tzinfo=UTC) - DOC_FROM).total_seconds())
FACILITIES = (("SA01", "Etablissement public de santé", "ETABLISSEMENT", "Etablissement de santé"),
              ("SA07", "Cabinet individuel", "AMBULATOIRE", "Exercice en cabinet"),
              ("SA08", "Cabinet de groupe", "AMBULATOIRE", "Exercice en cabinet"))  # fmt: skip
DESCRIPTIONS = ("Consultation du {d}", "Compte rendu du {d}", "Bilan du {d}", "Ordonnance du {d}",
                "Résultats du {d}", "Courrier de sortie du {d}", "Synthèse médicale du {d}")  # fmt: skip


def id_nat_ps(n: int) -> str:
    return f"81{n:010d}"  # "8" + an 11-digit RPPS: the idNatPs of a professional with an RPPS number


# --- the directory ---------------------------------------------------------------------------------------------
def directory(rng: random.Random, n_orgs: int, n_ps: int) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """Organizations, Practitioners and PractitionerRoles; and (role ref, practitioner ref, profession) per PS."""
    out: list[dict] = []
    for o in range(n_orgs):
        out.append({
            "resourceType": "Organization", "id": f"org-{o:02d}", "active": True,
            "identifier": [{"use": "official", "type": {"coding": [{"system": FR_V2_0203, "code": "IDNST"}]},
                            "system": "urn:oid:1.2.250.1.71.4.2.2", "value": f"1440{o:06d}"}],
            "name": f"{'Centre hospitalier' if o % 3 == 0 else 'Cabinet médical'} {rng.choice(FAMILY)}",
        })  # fmt: skip
    professions: list[str] = ["10", "21"]  # the bench's médecin and pharmacien first
    for code, _, share in PROFESSIONS:
        professions += [code] * round(share * n_ps)
    professions = (professions[:2] + sorted(professions[2:], key=lambda _: rng.random()))[:n_ps]
    while len(professions) < n_ps:
        professions.append("10")
    labels = {code: label for code, label, _ in PROFESSIONS}
    people: list[tuple[str, str, str]] = []
    for n, profession in enumerate(professions):
        female = rng.random() < 0.55
        family = rng.choice(FAMILY)
        given = rng.choice(("Anne", "Claire", "Hélène", "Léa", "Zoé") if female else ("Jean", "Loïc", "Hervé", "Rémi"))
        practitioner = {
            "resourceType": "Practitioner", "id": f"pract-{n:02d}", "active": True,
            "identifier": [
                {"use": "official", "type": {"coding": [{"system": FR_V2_0203, "code": "IDNPS"}]},
                 "system": codes.ID_NAT_PS, "value": id_nat_ps(n)},
                {"use": "official", "type": {"coding": [{"system": FR_V2_0203, "code": "RPPS"}]},
                 "system": "https://rpps.esante.gouv.fr", "value": id_nat_ps(n)[1:]},
            ],
            "name": [{"use": "official", "family": family, "given": [given],
                      "prefix": ["MME" if female else "M"], **({"suffix": ["DR"]} if profession == "10" else {})}],
            "gender": "female" if female else "male",
            "qualification": [{"code": {"coding": [{"system": codes.TRE_G15, "code": profession,
                                                    "display": labels[profession]}]}}],
        }  # fmt: skip
        role = {
            "resourceType": "PractitionerRole", "id": f"role-{n:02d}", "active": True,
            "practitioner": {"reference": f"Practitioner/pract-{n:02d}", "display": f"{given} {family}"},
            "organization": {"reference": f"Organization/org-{n % n_orgs:02d}"},
            "code": [{"coding": [{"system": codes.TRE_G15, "code": profession, "display": labels[profession]}]}],
        }  # fmt: skip
        if profession == "10":
            role["specialty"] = [{"coding": [{"system": TRE_R38, "code": "SM54", "display": "Médecine générale (SM)"}]}]
        out += [practitioner, role]
        people.append((f"PractitionerRole/role-{n:02d}", f"Practitioner/pract-{n:02d}", profession))
    return out, people


# --- a record ---------------------------------------------------------------------------------------------------
class DocumentTypes:
    """Weighted choice of (class, system, code, display) over the shipped habilitation matrix's rows."""

    def __init__(self, matrix: HabilitationMatrix) -> None:
        by_class: dict[str, list] = {}
        for row in matrix.rows:
            by_class.setdefault(row.class_code, []).append((row.class_code, row.system, row.code, row.display))
        self.rows: list[tuple[str, str, str, str]] = []
        self.weights: list[float] = []
        for class_code, rows in by_class.items():
            for row in rows:
                self.rows.append(row)
                self.weights.append(CLASS_WEIGHTS.get(class_code, 1) / len(rows))

    def pick(self, rng: random.Random) -> tuple[str, str, str, str]:
        return rng.choices(self.rows, self.weights)[0]


def document(rng: random.Random, ids: Ids, types: DocumentTypes, patient_id: str, author: str, masked: bool) -> dict:
    class_code, system, code, display = types.pick(rng)
    when = DOC_FROM + timedelta(seconds=rng.randrange(DOC_SPAN_S))
    offset = "+02:00" if 3 < when.month < 11 else "+01:00"
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S") + offset
    day = when.strftime("%d/%m/%Y")
    facility = rng.choice(FACILITIES)
    labels = [{"coding": [{"system": CONFIDENTIALITY, "code": "N", "display": "normal"}]}]
    if masked:
        labels.append({"coding": [{"system": codes.TRE_A07, "code": codes.MASQUE_PS,
                                   "display": "Masqué aux professionnels de santé"}]})  # fmt: skip
    description = rng.choice(DESCRIPTIONS).format(d=day)
    doc = {
        "resourceType": "DocumentReference",
        "meta": {"profile": ["https://github.com/fhir-server/fhir-server/StructureDefinition/mes-dmp-documentreference"]},
        "masterIdentifier": {"use": "usual", "system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{ids.next()}"},
        "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{ids.next()}"}],
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": system, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": stamp,
        "author": [{"reference": author}],
        "description": description,
        "securityLabel": labels,
        "content": [{
            "attachment": {"contentType": "application/pdf", "language": "fr-FR", "url": f"Binary/{ids.next()}",
                           "size": rng.randrange(20_000, 900_000), "title": description, "creation": stamp},
            "format": {"system": FORMAT_CODE, "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
                       "display": "mimeType Sufficient"},
        }],
        "context": {
            "period": {"start": stamp},
            "facilityType": {"coding": [{"system": TRE_R02, "code": facility[0], "display": facility[1]}]},
            "practiceSetting": {"coding": [{"system": TRE_A01, "code": facility[2], "display": facility[3]}]},
            "sourcePatientInfo": {"reference": f"Patient/{patient_id}"},
        },
    }  # fmt: skip
    if class_code != "?":
        doc["category"] = [{"coding": [{"system": TRE_A03, "code": class_code}]}]
    return doc


def consent(patient_id: str, kind: str, actor: str, role: tuple[str, str], when: str) -> dict:
    """As tests/test_policy.py ``consent()`` builds it (one actor)."""
    return {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": codes.CONSENT_SCOPE, "code": codes.PATIENT_PRIVACY}]},
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"}, "dateTime": when,
        "provision": {"type": kind, "actor": [{"role": {"coding": [{"system": role[0], "code": role[1]}]},
                                               "reference": {"reference": actor}}]},
    }  # fmt: skip


IRCP = (codes.V3_PARTICIPATION, codes.INFORMATION_RECIPIENT)
ADMIN = (codes.ACTOR_ROLE, codes.ADMINISTRATEUR)


# --- the load ----------------------------------------------------------------------------------------------------
async def load(args: argparse.Namespace) -> int:
    path = Path(sqlite_path(args.store))
    if args.force:
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), facts_path(path)):
            leftover.unlink(missing_ok=True)
    store = open_store(args.store)
    await store.start()
    started = time.monotonic()
    counts: Counter[str] = Counter()
    validated: Counter[str] = Counter()
    try:
        conn = store._writer  # the corpus builder tunes its own load connection only (as search_corpus does)
        assert conn is not None
        existing = conn.execute("SELECT count(*) FROM resource").fetchone()[0]
        if existing and not args.force:
            print(f"{path} already holds {existing:,} resources: refusing (--force deletes it first)", file=sys.stderr)
            return 2
        conn.execute(f"PRAGMA cache_size=-{args.cache_mb * 1024}")
        deferred = drop_secondary_indexes(conn)

        rng = random.Random(args.seed)
        ids = Ids(random.Random(args.seed + 1))
        matrix = HabilitationMatrix.load()
        types = DocumentTypes(matrix)
        n_pat, per = args.patients, args.docs
        expected = (args.organizations + 2 * args.professionals + n_pat + 1 + n_pat * per + args.bench_docs
                    + round(n_pat * (2.5 + args.block_share + args.admin_share)) + 3)  # fmt: skip
        print(
            f"corpus: {args.professionals} professionals, {n_pat:,} patients x {per} documents + {BENCH_PATIENT} x "
            f"{args.bench_docs}, consents → {path} (seed {args.seed}, {args.batch:,} per unit of work)",
            flush=True,
        )
        progress = Progress(expected)
        writer = BatchWriter(store, args.batch, progress)

        async def add(resource: dict, id_: str | None = None) -> str:
            type_ = resource["resourceType"]
            id_ = id_ or resource.pop("id", None) or ids.next()
            counts[type_] += 1
            if counts[type_] == 1 or counts[type_] % args.validate_every == 0:
                validate_resource({**resource, "id": id_})  # raises on an invalid resource
                validated[type_] += 1
            await writer.add(*_build(type_, id_, resource))
            return id_

        resources, people = directory(rng, args.organizations, args.professionals)
        for resource in resources:
            await add(resource, resource["id"])
        medecins = [p for p in people if p[2] == "10"]
        bench_ps = {"medecin": people[0], "pharmacien": people[1]}
        authorised_by: Counter[str] = Counter()
        gp_of: Counter[str] = Counter()
        read_targets: list[dict] = []  # one readable document per patient the bench médecin may read

        async def record(patient_id: str, resource: dict, n_docs: int, permits: list, blocked=None, admin=None,
                         gp=None) -> list[tuple]:  # fmt: skip
            if gp is not None:
                resource["generalPractitioner"] = [{"reference": gp[0]}]
                gp_of[gp[0]] += 1
            await add(resource, patient_id)
            when = (DOC_FROM + timedelta(seconds=rng.randrange(DOC_SPAN_S))).strftime("%Y-%m-%dT%H:%M:%S+01:00")
            for person in permits:
                await add(consent(patient_id, "permit", person[0], IRCP, when))
                authorised_by[person[0]] += 1
            if blocked is not None:  # by Practitioner or by role, both forms occur
                await add(consent(patient_id, "deny", blocked[rng.randrange(2)], IRCP, when))
            if admin is not None:
                await add(consent(patient_id, "permit", admin[0], ADMIN, when))
            carers = [p[0] for p in permits] + ([gp[0]] if gp else [])
            docs = []
            for _ in range(n_docs):
                author = rng.choice(carers) if carers and rng.random() < 0.7 else rng.choice(people)[0]
                masked = rng.random() < args.masked_share
                doc = document(rng, ids, types, patient_id, author, masked)
                type_code = (doc["type"]["coding"][0]["system"], doc["type"]["coding"][0]["code"])
                docs.append((await add(doc), author, masked, type_code))
            return docs

        bench_patient_id = None
        for i in range(n_pat + 1):
            if i == n_pat // 2:  # the bench patient in the middle of the load (its ids are not the first ones)
                resource = patient(rng, 999_999, "Bench-Lefèvre")
                others = [p for p in people[2:] if p[2] != "21"]
                permits = [bench_ps["medecin"], bench_ps["pharmacien"], rng.choice(others)]
                docs = await record(BENCH_PATIENT, resource, args.bench_docs, permits)
                bench_patient_id, bench_docs = BENCH_PATIENT, docs
                continue
            resource = patient(rng, i, rng.choice(FAMILY))
            patient_id = ids.next()
            gp = rng.choice(medecins) if rng.random() < args.gp_share else None
            permits = rng.sample(people, rng.choice((2, 3)))
            blocked = admin = None
            if rng.random() < args.block_share:
                blocked = rng.choice([p for p in people if p not in permits and p != gp])
                blocked = (blocked[0], blocked[1])
            if rng.random() < args.admin_share:
                admin = rng.choice([p for p in medecins if p not in permits])
            docs = await record(patient_id, resource, per, permits, blocked, admin, gp)
            if bench_ps["medecin"] in permits and (blocked is None or bench_ps["medecin"][0] not in blocked):
                readable = [d for d in docs if not d[2] and matrix.allows("10", *d[3])]
                if readable:
                    read_targets.append({"patient": patient_id, "document": readable[0][0]})
        await writer.flush()
        if progress.done != progress.last_done:
            progress.add(0, "done", force=True)
        loaded = time.monotonic() - started
        rebuild_start = time.monotonic()
        for name, sql in deferred:
            t0 = time.monotonic()
            conn.execute(sql)
            print(f"index {name} rebuilt in {time.monotonic() - t0:,.1f}s", flush=True)
        rebuild = time.monotonic() - rebuild_start
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        elapsed = time.monotonic() - started
    finally:
        await store.close()

    usage = rusage.getrusage(rusage.RUSAGE_SELF)
    cpu_seconds = usage.ru_utime + usage.ru_stime  # this process, all threads (writer thread included)
    size = path.stat().st_size
    total = sum(counts.values())
    med_role, pharma_role = bench_ps["medecin"][0], bench_ps["pharmacien"][0]
    visible = {
        "medecin": sum(1 for d in bench_docs if matrix.allows("10", *d[3]) and (not d[2] or d[1] == med_role)),
        "pharmacien": sum(1 for d in bench_docs if matrix.allows("21", *d[3]) and (not d[2] or d[1] == pharma_role)),
        "system": len(bench_docs),
    }
    read_doc = next(d for d in bench_docs if not d[2] and matrix.allows("10", *d[3]) and matrix.allows("21", *d[3]))
    facts = {
        "store": f"sqlite:///{path}",
        "seed": args.seed,
        "built": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_seconds": round(elapsed, 1),
        "build_cpu_seconds": round(cpu_seconds, 1),
        "load_seconds": round(loaded, 1),
        "index_rebuild_seconds": round(rebuild, 1),
        "size_bytes": size,
        "resources": dict(counts),
        "index_entries": writer.entries,
        "validated": dict(validated),
        "patients": n_pat + 1,
        "docs_per_patient": per,
        "bench_patient": bench_patient_id,
        "bench_docs": len(bench_docs),
        "bench_visible": visible,
        "professionals": {
            name: {
                "idNatPs": id_nat_ps(int(p[0].rsplit("-", 1)[1])),
                "role": p[0],
                "practitioner": p[1],
                "profession": p[2],
                "authorised_by": authorised_by[p[0]],
                "gp_of": gp_of[p[0]],
            }
            for name, p in bench_ps.items()
        },
        "read_document": read_doc[0],
        "read_targets": read_targets,
        "shares": {
            "gp": args.gp_share,
            "block": args.block_share,
            "admin": args.admin_share,
            "masked": args.masked_share,
        },
    }
    facts_path(path).write_text(json.dumps(facts, indent=1, ensure_ascii=False) + "\n")
    print(
        f"loaded {total:,} resources ({writer.entries:,} index entries) in {loaded:,.1f}s = {total / loaded:,.0f}/s; "
        f"index rebuild {rebuild:,.1f}s; total {elapsed:,.1f}s ({cpu_seconds:,.0f} s of CPU)\n"
        f"database {path}: {size / 2**20:,.1f} MiB\n"
        f"resources: " + ", ".join(f"{t} {c:,}" for t, c in counts.items()) + "\n"
        "validated with the server's validator: " + ", ".join(f"{t} {c:,}" for t, c in validated.items()) + "\n"
        f"{BENCH_PATIENT}: {len(bench_docs)} documents; visible to the bench médecin {visible['medecin']}, "
        f"to its pharmacien {visible['pharmacien']}; the médecin is authorised by "
        f"{authorised_by[med_role]:,} patients\nfacts: {facts_path(path)}",
        flush=True,
    )
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as ro:
        rows = ro.execute("SELECT type, count(*) FROM resource GROUP BY type").fetchall()
    print("in the store: " + ", ".join(f"{t} {c:,}" for t, c in rows), flush=True)
    return 0


def facts_path(db: Path) -> Path:
    return db.with_name(db.name + ".policy.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", required=True, help="sqlite:///rel.db or sqlite:////abs.db")
    p.add_argument("--patients", type=int, default=10_000)
    p.add_argument("--docs", type=int, default=20, help="documents per patient (default 20)")
    p.add_argument("--bench-docs", type=int, default=200, help=f"documents of {BENCH_PATIENT} (default 200)")
    p.add_argument("--professionals", type=int, default=50)
    p.add_argument("--organizations", type=int, default=10)
    p.add_argument("--gp-share", type=float, default=0.3, help="patients with a médecin traitant (default 0.3)")
    p.add_argument("--block-share", type=float, default=0.05, help="patients blocking a professional (0.05)")
    p.add_argument("--admin-share", type=float, default=0.01, help="patients with an administrateur (0.01)")
    p.add_argument("--masked-share", type=float, default=0.1, help="MASQUE_PS documents (default 0.1)")
    p.add_argument("--validate-every", type=int, default=500, help="validate 1 resource in N per type (500)")
    p.add_argument("--seed", type=int, default=20240612)
    p.add_argument("--batch", type=int, default=2000, help="resources per unit of work (default 2000)")
    p.add_argument("--cache-mb", type=int, default=1024, help="SQLite page cache of the load connection (MiB)")
    p.add_argument("--force", action="store_true", help="delete an existing database first")
    args = p.parse_args(argv)
    if not args.store.startswith("sqlite:///"):
        p.error("--store must be a sqlite:/// URL")
    if args.professionals < 10:
        p.error("--professionals must be at least 10")
    return asyncio.run(load(args))


if __name__ == "__main__":
    sys.exit(main())
