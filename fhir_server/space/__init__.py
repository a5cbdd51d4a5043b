"""The person's space (Mon espace santé): its lifecycle from the insurer's registry to destruction, and who
may act for the person (docs/lifecycle.md).

* ``status``: the lifecycle state carried by the Patient (extension ``mes-space``, ``Patient.active``), as
  professional software reads it (PDSm4DMP); ``clock``: the time the lifecycle runs on (tests move it).
* ``registry``, ``enrolment``, ``lifecycle``, ``proof``: registry feed, provisional codes, opposition,
  automatic creation, activation.
* ``closure``: closure, reopening and destruction.
* ``representatives``: legal representatives, tutors and delegates (RelatedPerson) and the patients a
  user's token may act for.
"""
