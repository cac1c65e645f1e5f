"""Plain async handler functions called by ``benchop.operator.main`` (no kopf decorators here)."""
