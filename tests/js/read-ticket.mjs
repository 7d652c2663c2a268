// Reads a sealed ticket with jose alone: compactDecrypt with the seal key, then jwtVerify against the
// JWKS. Input on stdin: {ticket, sealKey (JWK), jwks, issuer, audience, now}. Output: JSON on stdout.
import { compactDecrypt, createLocalJWKSet, decodeProtectedHeader, importJWK, jwtVerify } from "jose";

const input = JSON.parse(await new Response(process.stdin).text());
const sealKey = await importJWK(input.sealKey, "A256KW");
const { plaintext, protectedHeader } = await compactDecrypt(input.ticket, sealKey, {
  keyManagementAlgorithms: ["A256KW"],
  contentEncryptionAlgorithms: ["A256GCM"],
});
const jws = new TextDecoder().decode(plaintext);
const { payload, protectedHeader: signedHeader } = await jwtVerify(jws, createLocalJWKSet(input.jwks), {
  algorithms: ["EdDSA"],
  issuer: input.issuer,
  audience: input.audience,
  typ: "opper-ticket+jwt",
  currentDate: new Date(input.now * 1000),
});
console.log(JSON.stringify({ sealedHeader: protectedHeader, signedHeader, payload, jwsHeader: decodeProtectedHeader(jws) }));
