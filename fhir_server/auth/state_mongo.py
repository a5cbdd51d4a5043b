"""MongoDB auth state: ``auth_*`` collections in the store's database, plain CRUD and indexes only.

Expiring collections carry a TTL index on ``expires`` (a BSON date), so MongoDB drops old entries by
itself; reads still filter on ``expires`` because the TTL monitor runs only once a minute.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo import ASCENDING, MongoClient
from pymongo.errors import DuplicateKeyError

from ..store.mongo import database_name
from .state import AuthState

CLIENTS, USERS, TEMP, REFRESH, ISSUED = "auth_clients", "auth_users", "auth_temp", "auth_refresh_tokens", "auth_issued"
REVOKED, REVOKED_FAMILIES, ASSERTIONS = "auth_revoked_tokens", "auth_revoked_families", "auth_assertions"
COUNTERS, KEYS = "auth_counters", "auth_keys"
_EXPIRING = (TEMP, REFRESH, ISSUED, REVOKED, REVOKED_FAMILIES, ASSERTIONS, COUNTERS)


def _date(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _seconds(value: datetime) -> float:
    return value.timestamp()


def has_keys(url: str) -> bool:
    """Whether the database of ``url`` already holds signing keys (read only: creates nothing)."""
    client: MongoClient = MongoClient(url, serverSelectionTimeoutMS=5000, appname="fhir-server-auth")
    try:
        return client[database_name(url)][KEYS].find_one({}, {"_id": 1}) is not None
    finally:
        client.close()


class MongoAuthState(AuthState):
    def __init__(self, url: str, *, write_concern: str = "majority") -> None:
        w: str | int = int(write_concern) if write_concern.isdigit() else write_concern
        self._client: MongoClient = MongoClient(url, w=w, tz_aware=True, appname="fhir-server-auth")
        self._db = self._client[database_name(url)]
        for name in _EXPIRING:
            self._db[name].create_index([("expires", ASCENDING)], expireAfterSeconds=0)
        self._db[REFRESH].create_index([("family", ASCENDING)])
        self._db[ISSUED].create_index([("family", ASCENDING)])
        self._db[KEYS].create_index([("seq", ASCENDING)], unique=True)

    # --- registrations
    def put_client(self, client: dict) -> None:
        self._db[CLIENTS].replace_one({"_id": client["client_id"]}, {"doc": client}, upsert=True)

    def get_client(self, client_id: str) -> dict | None:
        found = self._db[CLIENTS].find_one({"_id": client_id})
        return found["doc"] if found else None

    def put_user(self, user: dict) -> None:
        self._db[USERS].replace_one({"_id": user["username"]}, {"doc": user}, upsert=True)

    def get_user(self, username: str) -> dict | None:
        found = self._db[USERS].find_one({"_id": username})
        return found["doc"] if found else None

    def delete_user(self, username: str) -> None:
        self._db[USERS].delete_one({"_id": username})

    # --- short-lived documents
    def put_temp(self, kind: str, key: str, doc: dict, expires: float) -> None:
        entry = {"doc": doc, "expires": _date(expires), "used": False}
        self._db[TEMP].replace_one({"_id": f"{kind}:{key}"}, entry, upsert=True)

    def get_temp(self, kind: str, key: str, now: float) -> dict | None:
        found = self._db[TEMP].find_one({"_id": f"{kind}:{key}", "expires": {"$gt": _date(now)}})
        return found["doc"] if found else None

    def take_temp(self, kind: str, key: str, now: float) -> tuple[dict | None, bool]:
        selector = {"_id": f"{kind}:{key}", "expires": {"$gt": _date(now)}}
        first = self._db[TEMP].update_one({**selector, "used": False}, {"$set": {"used": True}}).modified_count == 1
        found = self._db[TEMP].find_one(selector)
        return (found["doc"], first) if found else (None, False)

    def delete_temp(self, kind: str, key: str) -> None:
        self._db[TEMP].delete_one({"_id": f"{kind}:{key}"})

    # --- refresh tokens
    def put_refresh_token(self, token_id: str, family: str, doc: dict, expires: float) -> None:
        revoked = self._db[REVOKED_FAMILIES].find_one({"_id": family}) is not None
        entry = {"_id": token_id, "family": family, "doc": doc, "expires": _date(expires), "used": False}
        self._db[REFRESH].insert_one({**entry, "revoked": revoked})

    def get_refresh_token(self, token_id: str) -> dict | None:
        found = self._db[REFRESH].find_one({"_id": token_id})
        if found is None:
            return None
        flags = {"used": found["used"], "revoked": found["revoked"], "expires": _seconds(found["expires"])}
        return {**found["doc"], "family": found["family"], **flags}

    def use_refresh_token(self, token_id: str) -> bool:
        selector = {"_id": token_id, "used": False, "revoked": False}
        return self._db[REFRESH].update_one(selector, {"$set": {"used": True}}).modified_count == 1

    def revoke_family(self, family: str, expires: float) -> list[str]:
        # Family first: tokens issued concurrently from now on are born revoked.
        self._db[REVOKED_FAMILIES].replace_one({"_id": family}, {"expires": _date(expires)}, upsert=True)
        self._db[REFRESH].update_many({"family": family}, {"$set": {"revoked": True}})
        revoked = []
        for issued in self._db[ISSUED].find({"family": family}):
            self._db[REVOKED].replace_one({"_id": issued["_id"]}, {"expires": issued["expires"]}, upsert=True)
            revoked.append(issued["_id"])
        return revoked

    # --- access tokens
    def record_access_token(self, jti: str, family: str, expires: float) -> None:
        self._db[ISSUED].insert_one({"_id": jti, "family": family, "expires": _date(expires)})
        if self._db[REVOKED_FAMILIES].find_one({"_id": family}) is not None:
            self.revoke_access_token(jti, expires)

    def revoke_access_token(self, jti: str, expires: float) -> None:
        self._db[REVOKED].replace_one({"_id": jti}, {"expires": _date(expires)}, upsert=True)

    def is_revoked(self, jti: str) -> bool:
        return self._db[REVOKED].find_one({"_id": jti}, {"_id": 1}) is not None

    # --- client assertions
    def remember_assertion(self, key: str, expires: float, now: float) -> bool:
        self._db[ASSERTIONS].delete_one({"_id": key, "expires": {"$lte": _date(now)}})
        try:
            self._db[ASSERTIONS].insert_one({"_id": key, "expires": _date(expires)})
        except DuplicateKeyError:
            return False
        return True

    # --- counters
    def increment(self, key: str, expires: float, now: float) -> int:
        self._db[COUNTERS].delete_one({"_id": key, "expires": {"$lte": _date(now)}})
        self._db[COUNTERS].update_one(
            {"_id": key}, {"$inc": {"n": 1}, "$setOnInsert": {"expires": _date(expires)}}, upsert=True
        )
        found = self._db[COUNTERS].find_one({"_id": key})
        return int(found["n"]) if found else 1

    def count(self, key: str, now: float) -> int:
        found = self._db[COUNTERS].find_one({"_id": key, "expires": {"$gt": _date(now)}})
        return int(found["n"]) if found else 0

    def reset(self, key: str) -> None:
        self._db[COUNTERS].delete_one({"_id": key})

    # --- keys
    def list_keys(self) -> list[dict]:
        return [found["doc"] for found in self._db[KEYS].find({})]

    def add_key(self, key: dict) -> bool:
        try:
            self._db[KEYS].insert_one({"_id": key["kid"], "seq": key["seq"], "doc": key})
        except DuplicateKeyError:
            return False
        return True

    def update_key(self, kid: str, fields: dict) -> None:
        self._db[KEYS].update_one({"_id": kid}, {"$set": {f"doc.{name}": value for name, value in fields.items()}})

    def delete_key(self, kid: str) -> None:
        self._db[KEYS].delete_one({"_id": kid})

    # --- housekeeping
    def purge(self, now: float) -> None:
        for name in _EXPIRING:
            self._db[name].delete_many({"expires": {"$lte": _date(now)}})

    def close(self) -> None:
        self._client.close()
