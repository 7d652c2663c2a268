"""Operator commands: the keys and API key files, and a fleet on one machine.

keys        `python -m app.keys`;  apikeys: `python -m app.apikeys`
revocations `python -m app.ops.revocations revoke` (`make revoke`)
cluster     `python -m app.ops.cluster start|stop`;  launchers, processes, nginx, tls
"""
