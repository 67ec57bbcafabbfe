"""Evidence about the lineage rows themselves: tamper-evident seals (``seals``).

Imports ``delivery`` (the tables, ``untraced``) and the root modules only; ``startup`` hands
the writer a sealer and ``cli`` calls the seal and its audit, so no lower stage imports this.
"""
