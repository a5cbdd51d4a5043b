"""The project's messaging vocabulary (profiles/: ``mes-message`` and its extensions and code systems).

No French FHIR profile covers patient messaging (the ANS MSS guide covers the directory of mailboxes), so these
are the project's own, under the project's base URL like the rest of ``profiles/``.
"""

from __future__ import annotations

BASE = "https://github.com/fhir-server/fhir-server"
PROFILE = f"{BASE}/StructureDefinition/mes-message"
#: ``Communication.category``: a message of the messaging (not a notification, not a letter).
CATEGORY = f"{BASE}/CodeSystem/mes-message-category"
MESSAGE = "message"
#: ``meta.tag``: whose mailbox a copy is in, and the patient's trash. The server's to write.
MAILBOX = f"{BASE}/CodeSystem/mes-mailbox"
PATIENT_COPY, PROFESSIONAL_COPY, TRASH = "patient", "professional", "trash"
#: ``meta.tag``: the professional mailbox holding a copy (``Organization/…``, or the role without one).
MAILBOX_OWNER = f"{BASE}/CodeSystem/mes-mailbox-owner"
SERVER_TAG_SYSTEMS = frozenset({MAILBOX, MAILBOX_OWNER})
#: ``Communication.identifier``: one message, both its copies (an email's Message-ID).
MESSAGE_ID = f"{BASE}/NamingSystem/mes-message-id"
#: ``valueBoolean`` true: the sender asks to know when the patient opened it (``received`` on their copy).
READ_RECEIPT = f"{BASE}/StructureDefinition/mes-read-receipt"
#: ``valueDateTime`` on a thread's first message: the professional closed the thread to replies.
REPLIES_CLOSED = f"{BASE}/StructureDefinition/mes-replies-closed"
#: On a DocumentReference the patient filed from a message: who filed it and from which message.
FILED_FROM = f"{BASE}/StructureDefinition/mes-filed-from-message"
#: The patient's messaging address, ``<INS>@patient.mssante.fr`` (an Identifier on the Patient references).
ADDRESS_DOMAIN = "patient.mssante.fr"
ADDRESS_SYSTEM = f"{BASE}/NamingSystem/mssante-address"
#: The ANS directory's MSS mailbox metadata (as-ext-mailbox-mss-metadata): ``listeRouge`` true hides it.
MSS_METADATA = "https://interop.esante.gouv.fr/ig/fhir/annuaire/StructureDefinition/as-ext-mailbox-mss-metadata"
