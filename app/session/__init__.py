"""The session engine: a sans-I/O core fed frames, upstream events and time; no Starlette.

core        SessionCore: where a session's state lives; actions out
driver      the I/O around one core: sockets, tasks and the clock
binding     session config: schema, a ticket's binding overlaid, checks against a model
events      the client events and their strict parsing
limits      deadlines, the client's rate, the memory budget (plain counters)
models      the model registry (app/models.json)
upstream    the Upstream protocol a model implements
"""
