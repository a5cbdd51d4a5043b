#!/usr/bin/env python3
"""Build a search benchmark corpus straight into a SQLite (or MongoDB) store: French Patients and their vital signs.

Every resource goes through the server's own write path minus HTTP: the resource dict is stamped like
``crud`` does (``stamp``: id, meta.versionId, meta.lastUpdated = ``now_us()``), serialized with
``fhirjson.dumps``, its search index entries computed with ``index_entries``, and the version plus its
entries written with ``store.transact`` / ``Transaction.put``: exactly what ``POST`` would store, only
``--batch`` resources per transaction instead of one per request.

Content is deterministic (``--seed``): names, identifiers, dates, values, and also the ids (UUIDv7
layout like ``instant.new_id``, timestamp = a fixed base + creation order, random bits from the seeded
generator). Only ``meta.lastUpdated`` (and its ``_lastUpdated`` index entry) is the real load time.

Corpus:

- ``--patients N`` Patients: French given/family names with accents (Hélène, François, Zoé, Lefèvre,
  Benoît, Cécile, Œuvray…), an INS-NIR identifier (``urn:oid:1.2.250.1.213.1.4.8``, 15 digits,
  consistent with sex, birth year/month and birth place) and an IPP, gender, birthDate 1930-2023,
  telecom, a home address in a French city. ``--dup`` of them (50) have a family name starting with
  ``Dup`` (Dupont, Dupuis, Dupré…; no other family name does), so ``family=dup`` has a small, known
  result; about a third of them are Dupont, some with a given name starting with H.
- ``--observations-per-patient K`` x N Observations, each for a random patient (so ~K per patient,
  Poisson-like spread, loaded in random patient order like real traffic): vital signs and a lab
  value (LOINC 8480-6 systolic, 8462-4 diastolic, 8867-4 heart rate, 29463-7 weight, 8302-2 height,
  39156-5 BMI, 8310-5 temperature, 59408-5 SpO2, 2339-0 glucose), UCUM ``valueQuantity``,
  ``effectiveDateTime`` spread over 2014-2024 (Europe/Paris offsets), ``subject`` ``Patient/<id>``.

Refuses a store that already holds resources unless ``--force``, which deletes the database file (and
its -wal/-shm) and starts afresh: the corpus is deterministic, so adding it twice could only collide
on ids. An interrupted load leaves a partial store (refused next time without ``--force``).

The secondary indexes are dropped for the load and rebuilt at the end with their original SQL
(``--keep-indexes`` to load with them); if a load is interrupted, the server's ``start()`` recreates
any missing ones (``CREATE INDEX IF NOT EXISTS``). Prints resources/s while loading and the database
size at the end.

A ``mongodb://…/database?replicaSet=…`` store gets the same corpus through the same ``transact`` /
``put`` path, without the SQLite-only steps (index dropping/rebuild, page cache, size report): it prints
the database's document counts instead; ``--force`` drops the database first.

Usage (from the repository root)::

    .venv/bin/python bench/search_corpus.py --store sqlite:////tmp/search.db --patients 100000 \\
        --observations-per-patient 10
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fhir_server.fhirjson import dumps
from fhir_server.instant import now_us
from fhir_server.interactions.crud import stamp
from fhir_server.search.indexing import index_entries
from fhir_server.store import IndexEntry, ResourceVersion, Store, Transaction, open_store, sqlite_path

INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.8"  # INS-NIR
IPP_SYSTEM = "urn:oid:1.2.250.1.71.4.2.7.1.1000000001"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ID_EPOCH_MS = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)  # ids' UUIDv7 timestamp base

GIVEN_F = (
    "Hélène", "Françoise", "Zoé", "Cécile", "Élodie", "Léa", "Chloé", "Inès", "Anaïs", "Noémie", "Maëlle",
    "Agnès", "Béatrice", "Céline", "Éléonore", "Gaëlle", "Hortense", "Joséphine", "Léonie", "Mélanie",
    "Océane", "Thérèse", "Valérie", "Marie", "Camille", "Manon", "Sophie", "Julie", "Nathalie", "Isabelle",
    "Sylvie", "Catherine", "Anne", "Claire", "Emma", "Louise", "Jeanne", "Alice", "Lucie", "Margaux",
)  # fmt: skip
GIVEN_M = (
    "François", "Benoît", "Jérôme", "Étienne", "Loïc", "Gaël", "Noël", "Hervé", "Raphaël", "Mathéo",
    "Clément", "Frédéric", "Grégoire", "Jérémie", "Léon", "Mickaël", "Anaël", "Joël", "Stéphane", "Rémi",
    "Théo", "Aurélien", "Sébastien", "Cédric", "Jean", "Pierre", "Louis", "Hugo", "Lucas", "Nicolas",
    "Thomas", "Julien", "Antoine", "Paul", "Arthur", "Gabriel", "Henri", "Olivier", "Michel", "Philippe",
)  # fmt: skip
FAMILY = (
    "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Leroy", "Moreau", "Simon",
    "Laurent", "Lefèvre", "Michel", "Garcia", "David", "Bertrand", "Roux", "Vincent", "Fournier", "Morel",
    "Girard", "André", "Mercier", "Blanc", "Guérin", "Boyer", "Garnier", "Chevalier", "François", "Legrand",
    "Gauthier", "Perrin", "Robin", "Clément", "Morin", "Nicolas", "Henry", "Roussel", "Mathieu", "Gautier",
    "Masson", "Marchand", "Duval", "Denis", "Lemaire", "Noël", "Meyer", "Dufour", "Meunier", "Brun",
    "Blanchard", "Giraud", "Joly", "Rivière", "Lucas", "Brunet", "Gaillard", "Barbier", "Arnaud", "Martínez",
    "Gérard", "Roche", "Renard", "Schmitt", "Roy", "Leroux", "Colin", "Vidal", "Caron", "Picard",
    "Roger", "Fabre", "Aubert", "Lemoine", "Renaud", "Dumas", "Lacroix", "Olivier", "Philippe", "Bourgeois",
    "Pierre", "Benoît", "Rey", "Leclerc", "Payet", "Rolland", "Leclercq", "Guillaume", "Lecomte", "Lopez",
    "Jean", "Duroy-Lefèvre", "Guillot", "Hubert", "Berger", "Carpentier", "Sánchez", "Dubois", "Deschamps",
    "Le Gall", "Le Goff", "Lefèbvre", "Béranger", "Bézier", "Crémieux", "Désiré", "Écuyer", "Frémont",
    "Hébert", "Lécuyer", "Ménard", "Pécresse", "Séverin", "Thériault", "Vérany", "Œuvray", "Cœurdevey",
    "Lœillet", "Abélard", "Bénard", "Chrétien", "Delhumeau", "Grégoire", "Hémon", "Jégou", "Kérouac",
    "Lévêque", "Maréchal", "Nérac", "Pénélon", "Rénier", "Sénéchal", "Tréguier", "Varène", "Ybert", "Zénon",
    "N'Diaye", "D'Almeida", "O'Neill", "Saint-Éloi", "Bon-Côté", "Durand-Mélèze",
)  # fmt: skip
DUP_FAMILY = ("Dupont", "Dupuis", "Dupré", "Dupuy", "Duprat", "Dupin", "Dupas", "Dupérier", "Duplessis", "Dupeyron")
CITIES = (  # (city, postal code, INSEE department code for the INS)
    ("Paris", "75011", "75"), ("Marseille", "13005", "13"), ("Lyon", "69003", "69"), ("Toulouse", "31000", "31"),
    ("Nice", "06000", "06"), ("Nantes", "44000", "44"), ("Besançon", "25000", "25"),
    ("Saint-Étienne", "42000", "42"), ("Orléans", "45000", "45"), ("Nîmes", "30000", "30"),
    ("Béziers", "34500", "34"), ("Créteil", "94000", "94"), ("Évry-Courcouronnes", "91000", "91"),
    ("Sète", "34200", "34"), ("Angoulême", "16000", "16"), ("Mâcon", "71000", "71"), ("Châlons-en-Champagne",
    "51000", "51"), ("Pontoise", "95000", "95"), ("Montbéliard", "25200", "25"), ("Périgueux", "24000", "24"),
    ("Épinal", "88000", "88"), ("Forêt-la-Folie", "27510", "27"), ("Clermont-Ferrand", "63000", "63"),
    ("Aix-en-Provence", "13100", "13"), ("Bordeaux", "33000", "33"), ("Lille", "59000", "59"),
    ("Rennes", "35000", "35"), ("Strasbourg", "67000", "67"), ("Montpellier", "34000", "34"),
    ("Grenoble", "38000", "38"), ("Dijon", "21000", "21"), ("Angers", "49000", "49"), ("Brest", "29200", "29"),
    ("Le Mans", "72000", "72"), ("Reims", "51100", "51"), ("Le Havre", "76600", "76"), ("Toulon", "83000", "83"),
    ("Fréjus", "83600", "83"), ("Cergy", "95000", "95"), ("Vénissieux", "69200", "69"),
)  # fmt: skip
STREETS = (
    "rue de l'Église", "avenue de la République", "boulevard Gambetta", "rue Victor-Hugo", "place du Marché",
    "impasse des Érables", "chemin des Prés", "rue de la Forêt", "allée des Châtaigniers", "quai de la Saône",
    "rue Pasteur", "avenue Jean-Jaurès", "rue du Château", "route de Besançon", "rue des Écoles",
)  # fmt: skip


@dataclass(frozen=True)
class Vital:
    code: str
    display: str
    text: str
    unit: str  # UCUM code (also the unit shown)
    mean: float
    sd: float
    decimals: int
    weight: float  # relative frequency in the corpus
    category: str = "vital-signs"


VITALS = (
    Vital("8480-6", "Systolic blood pressure", "Pression artérielle systolique", "mm[Hg]", 128, 20, 0, 16),
    Vital("8462-4", "Diastolic blood pressure", "Pression artérielle diastolique", "mm[Hg]", 79, 12, 0, 16),
    Vital("8867-4", "Heart rate", "Fréquence cardiaque", "/min", 74, 14, 0, 14),
    Vital("29463-7", "Body weight", "Poids", "kg", 74, 17, 1, 14),
    Vital("8302-2", "Body height", "Taille", "cm", 169, 10, 0, 5),
    Vital("39156-5", "Body mass index (BMI) [Ratio]", "Indice de masse corporelle", "kg/m2", 25.5, 4.5, 1, 8),
    Vital("8310-5", "Body temperature", "Température corporelle", "Cel", 37.0, 0.6, 1, 10),
    Vital("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "Saturation en oxygène",
          "%", 96.5, 2.2, 0, 7),
    Vital("2339-0", "Glucose [Mass/volume] in Blood", "Glycémie", "mg/dL", 110, 38, 0, 10, "laboratory"),
)  # fmt: skip
VITAL_WEIGHTS = [v.weight for v in VITALS]
CATEGORY_DISPLAY = {"vital-signs": "Vital Signs", "laboratory": "Laboratory"}
EFFECTIVE_FROM = datetime(2014, 1, 1, tzinfo=UTC)
EFFECTIVE_SPAN_S = int((datetime(2025, 1, 1, tzinfo=UTC) - EFFECTIVE_FROM).total_seconds())


class Ids:
    """Deterministic UUIDv7-shaped ids, time-ordered in creation order like ``instant.new_id``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.n = 0

    def next(self) -> str:
        ms = ID_EPOCH_MS + self.n
        self.n += 1
        rand = self.rng.getrandbits(80)
        value = (ms << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _fold_ascii(text: str) -> str:
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", text.replace("œ", "oe").replace("Œ", "Oe"))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def patient(rng: random.Random, n: int, family: str) -> dict:
    female = rng.random() < 0.52
    given = [rng.choice(GIVEN_F if female else GIVEN_M)]
    if rng.random() < 0.35:
        given.append(rng.choice(GIVEN_F if female else GIVEN_M))
    return _patient(rng, n, family, given, female)


def _patient(rng: random.Random, n: int, family: str, given: list[str], female: bool) -> dict:
    birth = datetime(1930, 1, 1) + timedelta(days=rng.randrange(94 * 365))
    city, postal, dept = rng.choice(CITIES)
    # NIR: sex, yy, mm, department, commune (3), order (3) + 2-digit key = 97 - (number mod 97).
    sex = 2 if female else 1
    nir13 = f"{sex}{birth.year % 100:02d}{birth.month:02d}{dept}{rng.randrange(1, 990):03d}{n % 1000:03d}"
    ins = f"{nir13}{97 - int(nir13) % 97:02d}"
    email_name = _fold_ascii(f"{given[0]}.{family}").lower().replace(" ", "").replace("'", "")
    resource = {
        "resourceType": "Patient",
        "meta": {"profile": ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"]},
        "identifier": [
            {
                "use": "official",
                "type": {"coding": [{"system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203",
                                     "code": "INS-NIR", "display": "NIR définitif"}]},
                "system": INS_SYSTEM,
                "value": ins,
            },
            {"use": "usual", "system": IPP_SYSTEM, "value": f"IPP{n:09d}"},
        ],
        "active": True,
        "name": [{"use": "official", "family": family, "given": given}],
        "telecom": [
            {"system": "phone", "value": f"+33 6 {rng.randrange(10**8):08d}", "use": "mobile"},
            {"system": "email", "value": f"{email_name}{n % 97}@exemple.fr", "use": "home"},
        ],
        "gender": "female" if female else "male",
        "birthDate": birth.strftime("%Y-%m-%d"),
        "address": [
            {
                "use": "home",
                "type": "physical",
                "line": [f"{rng.randrange(1, 180)} {rng.choice(STREETS)}"],
                "city": city,
                "postalCode": postal,
                "country": "FRA",
            }
        ],
    }  # fmt: skip
    return resource


def observation(rng: random.Random, patient_id: str) -> dict:
    vital = rng.choices(VITALS, VITAL_WEIGHTS)[0]
    value = round(rng.gauss(vital.mean, vital.sd), vital.decimals)
    if vital.code == "2339-0" and rng.random() < 0.08:  # some diabetics: hyperglycaemia
        value = round(rng.uniform(180, 400))
    if vital.code == "8480-6" and rng.random() < 0.01:  # hypertensive crisis
        value = round(rng.uniform(181, 230))
    value = max(value, 1) if vital.decimals == 0 else max(value, 0.1)
    if vital.decimals == 0:
        value = int(value)
    when = EFFECTIVE_FROM + timedelta(seconds=rng.randrange(EFFECTIVE_SPAN_S))
    offset = "+02:00" if 3 < when.month < 11 else "+01:00"  # Europe/Paris, roughly
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": vital.category,
                                  "display": CATEGORY_DISPLAY[vital.category]}]}],
        "code": {"coding": [{"system": LOINC, "code": vital.code, "display": vital.display}], "text": vital.text},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when.strftime("%Y-%m-%dT%H:%M:%S") + offset,
        "valueQuantity": {"value": value, "unit": vital.unit, "system": UCUM, "code": vital.unit},
    }  # fmt: skip


def dup_patients(rng: random.Random, count: int) -> list[tuple[str, list[str], bool]]:
    """(family, given, female) of the ``Dup*`` group: ~1/3 Dupont, some of them with a given name in H."""
    out = []
    for i in range(count):
        others = DUP_FAMILY[1:]
        family = "Dupont" if i % 3 == 0 else others[(i - i // 3 - 1) % len(others)]
        female = rng.random() < 0.52
        if family == "Dupont" and i % 4 == 0:
            given = ["Hélène" if female else "Hugo"]
        else:
            given = [rng.choice(GIVEN_F if female else GIVEN_M)]
        out.append((family, given, female))
    return out


def drop_secondary_indexes(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """Drop the store's secondary indexes; returns (name, CREATE statement) to rebuild them afterwards.

    Inserting ~20 index entries per resource into B-trees keyed by value/range/owner means random page
    writes once they outgrow the cache (every transaction rewrites most of their pages through the WAL);
    one sorted CREATE INDEX at the end is many times faster. The write path (``Transaction.put``) only
    needs the primary keys, which stay. Rebuilt with their exact original SQL from ``sqlite_master``.
    """
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name"
    ).fetchall()
    for name, _ in rows:
        conn.execute(f'DROP INDEX "{name}"')
    return rows


def _build(type_: str, id_: str, resource: dict) -> tuple[ResourceVersion, list[IndexEntry]]:
    """What ``crud.create`` stores: the stamped body and its index entries."""
    last_updated = now_us()
    body = stamp(resource, id_, 1, last_updated)
    return ResourceVersion(type_, id_, 1, last_updated, "POST", dumps(body)), index_entries(body)


class BatchWriter:
    """Prepared versions written straight to the store, ``size`` per unit of work (the corpus builders)."""

    def __init__(self, store: Store, size: int, progress: Progress) -> None:
        self.store, self.size, self.progress = store, size, progress
        self.batch: list[tuple[ResourceVersion, list[IndexEntry]]] = []
        self.entries = 0  # index entries written

    async def add(self, version: ResourceVersion, entries: list[IndexEntry]) -> None:
        self.batch.append((version, entries))
        if len(self.batch) >= self.size:
            await self.flush()

    async def flush(self) -> None:
        if not self.batch:
            return
        todo, self.batch = self.batch, []

        async def work(tx: Transaction) -> None:
            for version, entries in todo:
                await tx.put(version, entries)

        await self.store.transact(work)
        self.entries += sum(len(e) for _, e in todo)
        self.progress.add(len(todo), todo[-1][0].type)


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = self.last = time.monotonic()
        self.last_done = 0

    def add(self, n: int, label: str, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if force or now - self.last >= 5:
            rate = (self.done - self.last_done) / (now - self.last) if now > self.last else 0.0
            overall = self.done / (now - self.start)
            eta = (self.total - self.done) / overall if overall else 0
            print(
                f"[{now - self.start:7.1f}s] {label:<12} {self.done:>9,}/{self.total:,}  "
                f"{rate:8,.0f} res/s now  {overall:8,.0f} res/s avg  ETA {eta / 60:5.1f} min",
                flush=True,
            )
            self.last, self.last_done = now, self.done


async def generate(writer: BatchWriter, rng: random.Random, ids: Ids, n_pat: int, n_obs: int, n_dup: int) -> None:
    """The corpus, in its deterministic order: the Patients, then the Observations (both stores)."""
    dup_at = dict(zip(sorted(rng.sample(range(n_pat), n_dup)), dup_patients(rng, n_dup), strict=True))
    patient_ids: list[str] = []
    for i in range(n_pat):
        if i in dup_at:
            family, given, female = dup_at[i]
            resource = _patient(rng, i, family, given, female)
        else:
            resource = patient(rng, i, rng.choice(FAMILY))
        id_ = ids.next()
        patient_ids.append(id_)
        await writer.add(*_build("Patient", id_, resource))
    await writer.flush()
    for _ in range(n_obs):
        await writer.add(*_build("Observation", ids.next(), observation(rng, rng.choice(patient_ids))))
    await writer.flush()


async def build(store: Store, args: argparse.Namespace, target: str) -> tuple[int, float, BatchWriter]:
    """Generate the corpus into ``store`` (either backend): (resources, seconds, the writer and its counts)."""
    rng = random.Random(args.seed)
    ids = Ids(random.Random(args.seed + 1))
    n_pat, per = args.patients, args.observations_per_patient
    n_obs = n_pat * per
    n_dup = min(args.dup, n_pat)
    total = n_pat + n_obs
    print(
        f"corpus: {n_pat:,} Patients ({n_dup} Dup*) + {n_obs:,} Observations = {total:,} resources "
        f"→ {target} (seed {args.seed}, {args.batch:,} per transaction)",
        flush=True,
    )
    progress = Progress(total)
    writer = BatchWriter(store, args.batch, progress)
    await generate(writer, rng, ids, n_pat, n_obs, n_dup)
    if progress.done != progress.last_done:
        progress.add(0, "done", force=True)
    return total, time.monotonic() - progress.start, writer


async def load_mongo(args: argparse.Namespace) -> int:
    """The same corpus through the same write path into a MongoDB store (``mongodb://…/database?…``).

    No index dropping (the store's ``start`` creates its indexes; the load keeps them) and no size
    report: the database's document counts at the end instead. ``--force`` drops the database first.
    """
    from pymongo import MongoClient

    from fhir_server.store.mongo import CURRENT, database_name

    url, name = args.store, database_name(args.store)
    with MongoClient(url, serverSelectionTimeoutMS=10_000) as client:
        db = client[name]
        existing = db[CURRENT].estimated_document_count()
        if existing and not args.force:
            print(f"MongoDB database {name!r} already holds {existing:,} resources: refusing (--force drops it first)",
                  file=sys.stderr)  # fmt: skip
            return 2
        if args.force:
            client.drop_database(name)
    store = open_store(url)
    await store.start()
    try:
        total, loaded, writer = await build(store, args, f"MongoDB database {name!r}")
    finally:
        await store.close()
    print(
        f"loaded {total:,} resources ({writer.entries:,} index entries) in {loaded:,.1f}s = "
        f"{total / loaded:,.0f} resources/s (secondary indexes kept during the load)",
        flush=True,
    )
    with MongoClient(url, serverSelectionTimeoutMS=10_000) as client:
        db = client[name]
        by_type = db[CURRENT].aggregate([{"$group": {"_id": "$t", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}])
        print("resources in the store: " + ", ".join(f"{d['_id']} {d['n']:,}" for d in by_type), flush=True)
        counts = {c: db[c].count_documents({}) for c in sorted(db.list_collection_names())}
        print(f"MongoDB database {name!r} documents: " + ", ".join(f"{c} {n:,}" for c, n in counts.items()),
              flush=True)  # fmt: skip
    return 0


async def load(args: argparse.Namespace) -> int:
    if args.store.startswith(("mongodb://", "mongodb+srv://")):
        return await load_mongo(args)
    url = args.store
    path = Path(sqlite_path(url))
    if args.force:
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            leftover.unlink(missing_ok=True)
    store = open_store(url)
    await store.start()
    try:
        conn = store._writer  # the corpus builder tunes its own load connection only
        assert conn is not None
        existing = conn.execute("SELECT count(*) FROM resource").fetchone()[0]
        if existing and not args.force:
            print(f"{path} already holds {existing:,} resources: refusing (--force deletes it first)", file=sys.stderr)
            return 2
        # Bulk-load settings for this connection only (nothing persistent): a big page cache so the
        # search_index B-trees are not re-read from disk on every random insert.
        conn.execute(f"PRAGMA cache_size=-{args.cache_mb * 1024}")
        deferred = [] if args.keep_indexes else drop_secondary_indexes(conn)
        if deferred:
            print(f"secondary indexes dropped during the load, rebuilt at the end: {', '.join(n for n, _ in deferred)}")

        total, loaded, writer = await build(store, args, str(path))
        for name, sql in deferred:
            started = time.monotonic()
            conn.execute(sql)
            print(f"index {name} rebuilt in {time.monotonic() - started:,.1f}s", flush=True)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        elapsed = time.monotonic() - writer.progress.start
    finally:
        await store.close()
    size = path.stat().st_size
    wal = Path(f"{path}-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    print(
        f"loaded {total:,} resources ({writer.entries:,} index entries) in {loaded:,.1f}s = "
        f"{total / loaded:,.0f} resources/s; with index rebuild {elapsed:,.1f}s = {total / elapsed:,.0f} resources/s\n"
        f"database {path}: {size / 2**20:,.1f} MiB (+ WAL {wal_size / 2**20:,.1f} MiB)",
        flush=True,
    )
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as ro:
        rows = ro.execute("SELECT type, count(*) FROM resource GROUP BY type").fetchall()
    print("resources in the store: " + ", ".join(f"{t} {c:,}" for t, c in rows), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--store",
        required=True,
        help="sqlite:///rel.db, sqlite:////abs.db or mongodb://host:port/database?replicaSet=…",
    )
    p.add_argument("--patients", type=int, default=100_000)
    p.add_argument("--observations-per-patient", type=int, default=10)
    p.add_argument("--dup", type=int, default=50, help="patients whose family name starts with Dup (default 50)")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--batch", type=int, default=2000, help="resources per transaction (default 2000)")
    p.add_argument("--cache-mb", type=int, default=2048, help="SQLite page cache of the load connection (MiB)")
    p.add_argument("--force", action="store_true", help="delete an existing database first (Mongo: drop it)")
    p.add_argument(
        "--keep-indexes", action="store_true", help="keep the secondary indexes during the load (much slower)"
    )
    args = p.parse_args(argv)
    if not args.store.startswith(("sqlite:///", "mongodb://", "mongodb+srv://")):
        p.error("--store must be a sqlite:/// or mongodb:// URL")
    return asyncio.run(load(args))


if __name__ == "__main__":
    sys.exit(main())
