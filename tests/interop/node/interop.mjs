// The node side of the interop tests: libraries keysvc did not write, used as
// their documentation shows. Reads one JSON request on stdin, writes one JSON
// answer on stdout.
//
//   node interop.mjs verify   {jwks_url | jwks, items: [{token, audience, issuer}]}
//   node interop.mjs sign     {items: [{lib, alg, pem | secret, kid?, claims}]}
//   node interop.mjs load     {jwks}

import { readFileSync } from "node:fs";
import * as jose from "jose";
import jsonwebtoken from "jsonwebtoken";

const request = JSON.parse(readFileSync(0, "utf8"));

async function verify({ jwks_url, jwks, items }) {
  const keySet = jwks_url
    ? jose.createRemoteJWKSet(new URL(jwks_url))
    : jose.createLocalJWKSet(jwks);
  const answers = [];
  for (const { token, audience, issuer } of items) {
    try {
      const { payload, protectedHeader } = await jose.jwtVerify(token, keySet, {
        audience,
        issuer,
        subject: issuer,
        requiredClaims: ["exp", "jti"],
      });
      answers.push({ ok: true, header: protectedHeader, payload });
    } catch (error) {
      answers.push({ ok: false, error: error.code ?? String(error) });
    }
  }
  return answers;
}

async function sign({ items }) {
  const tokens = [];
  for (const { lib, alg, pem, secret, kid, claims } of items) {
    if (lib === "jsonwebtoken") {
      // As the tutorials write it: jsonwebtoken adds iat and a 5-minute exp.
      const options = { algorithm: alg, expiresIn: "5m" };
      if (kid) options.keyid = kid;
      tokens.push(jsonwebtoken.sign(claims, secret ?? pem, options));
    } else {
      const key = secret
        ? new TextEncoder().encode(secret)
        : await jose.importPKCS8(pem, alg);
      const header = kid ? { alg, kid } : { alg };
      tokens.push(
        await new jose.SignJWT(claims)
          .setProtectedHeader(header)
          .setIssuedAt()
          .setExpirationTime("5m")
          .sign(key),
      );
    }
  }
  return tokens;
}

async function load({ jwks }) {
  // Every key must import on its own, and be found by the set for its alg.
  const keySet = jose.createLocalJWKSet(jwks);
  const found = [];
  for (const jwk of jwks.keys) {
    await jose.importJWK(jwk, jwk.alg);
    await keySet({ alg: jwk.alg, kid: jwk.kid });
    found.push(jwk.kid);
  }
  return found;
}

const commands = { verify, sign, load };
const answer = await commands[process.argv[2]](request);
process.stdout.write(JSON.stringify(answer));
