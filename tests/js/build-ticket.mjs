// Builds a sealed ticket with jose alone: SignJWT with the signing key (PKCS#8), then CompactEncrypt
// with the seal key. Input on stdin: {claims, kid, signingKeyPem, sealKey (JWK)}. Output: the ticket.
import { CompactEncrypt, SignJWT, importJWK, importPKCS8 } from "jose";

const input = JSON.parse(await new Response(process.stdin).text());
const signingKey = await importPKCS8(input.signingKeyPem, "EdDSA");
const jws = await new SignJWT(input.claims)
  .setProtectedHeader({ alg: "EdDSA", kid: input.kid, typ: "opper-ticket+jwt" })
  .sign(signingKey);
const sealKey = await importJWK(input.sealKey, "A256KW");
const ticket = await new CompactEncrypt(new TextEncoder().encode(jws))
  .setProtectedHeader({ alg: "A256KW", enc: "A256GCM", kid: input.sealKey.kid, cty: "JWT" })
  .encrypt(sealKey);
process.stdout.write(ticket);
