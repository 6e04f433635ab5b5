"""DR drills: ``healer drill FILE`` injects real faults within a blast radius and grades recovery.

``spec`` reads and validates drill files, ``faults`` holds the reversible faults (and the
``healer.faults`` plugin group), ``runner`` runs a drill against a live daemon, ``report`` writes
the result, and ``control`` is the daemon's side: the requests that record a drill in the log.
"""
