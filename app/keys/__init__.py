"""`python -m app.keys`: the keys directory's commands (`app.ops.keys`)."""
