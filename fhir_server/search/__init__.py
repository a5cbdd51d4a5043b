"""Search: index extraction at write time, query parsing, planning and execution."""
