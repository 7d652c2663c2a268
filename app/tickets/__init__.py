"""The trust core: tickets issued and verified, their keys, sealing and API keys; no Starlette.

ticket      issue() and verify(): the one place a ticket is verified
claims      a signed ticket's claims, checked
jwe         sealing: the compact JWE around a signed ticket
segments    a ticket's parts read strictly;  base64url: the encoder and strict decoder
keys        the signing key set;  sealkeys: the seal keys;  keysource: reloaded key sets
rotation    writing a keys directory (make keys, rotate, retire)
jwks        a verify-only edge's key set, from the minter's JWKS
keyfiles    atomic writes and files reloaded on change
apikeys     the API key file;  bearer: a request's key checked in constant time
"""
