// node-oidc-provider serving its own JWKS, as a peer measured beside keysvc.
// The signing keys (private JWKs, made by the bench) are read from the file
// named by PEER_JWKS_FILE; the provider publishes their public parts at /jwks.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.env.PEER_PORT);
const jwks = JSON.parse(readFileSync(process.env.PEER_JWKS_FILE, 'utf8'));
const provider = new Provider(`http://127.0.0.1:${port}`, {
  jwks,
  features: { devInteractions: { enabled: false } },
});
provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`oidc-provider listening on ${port}\n`);
});
