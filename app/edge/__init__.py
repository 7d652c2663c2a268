"""The edge: the mint and realtime endpoints and what they rest on.

mint        POST /v3/realtime-sessions;  realtime: GET /v3/realtime;  handshake: its own checks
replay      the replay store, where single use is decided (memory://);  redisreplay: redis://
registry    the open sessions of a process: the per-project cap, the drain
proxies     trusted forwarded headers, the admin listener;  skew: our clock against Redis's
dispatch    App: Starlette with the hot routes called without the router
responses   domain errors as HTTP answers;  services: what one app holds;  metrics
preflight   what a process refuses to start with
revocations what a revocation covers (memory://);  redisrevocations: redis://
leases      the fleet's session leases on Redis;  leasekeeper: this edge's renewed, in batches
demo        the demo page and its dev-only mint route
"""
