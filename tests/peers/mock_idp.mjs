// The OIDC issuer of the token tests: npm oauth2-mock-server (discovery document, JWKS,
// signed JWTs) on 127.0.0.1. Usage: node mock_idp.mjs PORT PATIENT_ID
// Prints one JSON line {"issuer": ...}, then one line per token {"name", "token"}:
//   viewer, uploader, admin, auditor   roles claim (Strata role names), RS256
//   smart-read                         SMART scope user/*.read, ES256
//   patient                            scope patient/ImagingStudy.read, patient claim
//   expired, wrong-aud, wrong-iss      each failing one check, correctly signed
//   wrong-key                          right kid and issuer, signed with an unpublished key
// and keeps serving until killed; a line "rotate" on stdin adds a key (see below).
// Needs NODE_PATH to hold oauth2-mock-server.
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const path = require.resolve('oauth2-mock-server', { paths: (process.env.NODE_PATH || '').split(':') });
const { OAuth2Server, OAuth2Issuer } = await import(path);

const port = Number(process.argv[2] ?? 0);
const patient = process.argv[3] ?? 'P1';
const host = '127.0.0.1';
const server = new OAuth2Server();
await server.issuer.keys.generate('RS256', { kid: 'rs-good' });
await server.issuer.keys.generate('ES256', { kid: 'es-good' });
await server.start(port, host);
// oauth2-mock-server names 127.x "localhost" in iss unless told
server.issuer.url = `http://${host}:${server.address().port}`;
const iss = server.issuer.url;
const rogue = new OAuth2Issuer();
await rogue.keys.generate('RS256', { kid: 'rs-good' });
rogue.url = iss;

const claims = (extra) => ({
  scopesOrTransform: (header, payload) =>
    Object.assign(payload, { aud: 'strata', azp: 'test-client', ...extra }),
});
const out = async (name, token) => console.log(JSON.stringify({ name, token: await token }));
console.log(JSON.stringify({ issuer: iss }));
for (const role of ['viewer', 'uploader', 'admin', 'auditor']) {
  await out(role, server.issuer.buildToken({ kid: 'rs-good', ...claims({ sub: `${role}-user`, roles: [role] }) }));
}
await out('smart-read', server.issuer.buildToken({ kid: 'es-good', ...claims({ sub: 'smart-user', scope: 'openid user/*.read' }) }));
await out('patient', server.issuer.buildToken({
  kid: 'rs-good',
  ...claims({ sub: 'patient-viewer', scope: 'launch patient/ImagingStudy.read', patient }),
}));
await out('expired', server.issuer.buildToken({ kid: 'rs-good', expiresIn: -300, ...claims({ sub: 'late', roles: ['viewer'] }) }));
await out('wrong-aud', server.issuer.buildToken({ kid: 'rs-good', ...claims({ sub: 'elsewhere', roles: ['viewer'], aud: 'another-service' }) }));
await out('wrong-iss', server.issuer.buildToken({ kid: 'rs-good', ...claims({ sub: 'forger', roles: ['viewer'], iss: 'http://evil.example' }) }));
await out('wrong-key', rogue.buildToken({ kid: 'rs-good', ...claims({ sub: 'forger', roles: ['admin'] }) }));
// key rollover: each line "rotate" on stdin publishes a new RS256 key (kid rs-N) in the
// JWKS and prints {"name": "rotated", "token"} signed with it
let generation = 0;
process.stdin.setEncoding('utf8');
process.stdin.on('data', async (chunk) => {
  for (const line of chunk.split('\n')) {
    if (line.trim() !== 'rotate') continue;
    generation += 1;
    const kid = `rs-${generation}`;
    await server.issuer.keys.generate('RS256', { kid });
    await out('rotated', server.issuer.buildToken({ kid, ...claims({ sub: 'rotated-user', roles: ['viewer'] }) }));
  }
});
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => server.stop().finally(() => process.exit(0)));
