"""`h3ops up` / `h3ops down`: the whole stack on loopback, as real processes."""
