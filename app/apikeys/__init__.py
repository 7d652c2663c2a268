"""`python -m app.apikeys`: the API key file's commands (`app.ops.apikeys`)."""
