// A real DPoP client (npm `oauth4webapi`) for Portcullis integration tests. TEST-ONLY:
// the client secret is the test provider's throwaway value.
//
//   node tests/oidc/dpop-client.mjs --issuer URL [--send URL]... [--mint METHOD:URL]...
//                                   [--export-key]
//
// Discovers the provider at --issuer, makes a DPoP key pair and gets a DPoP-bound
// client_credentials token for api://orders (scope orders:read), with the library's own
// proof on the token request. Then, for each --send URL, the library sends a GET with a
// fresh proof and the result is reported; for each --mint, the library makes a proof for
// that request but it is not sent (a custom fetch keeps it), so the test can present it
// however it likes. With --export-key the (throwaway) private JWK of the DPoP key is
// reported too, so the test can forge hostile proofs with the very key the token is bound
// to. Prints one JSON line:
//   {"access_token":..., "token_type":..., "sent":[{url, status, www_authenticate}],
//    "minted":[{method, url, dpop}], "private_jwk": {...} | null}

import { parseArgs } from 'node:util';

import * as oauth from 'oauth4webapi';

function fail(message) {
  console.error(`dpop-client.mjs: ${message}`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      issuer: { type: 'string' },
      send: { type: 'string', multiple: true, default: [] },
      mint: { type: 'string', multiple: true, default: [] },
      'export-key': { type: 'boolean', default: false },
    },
    strict: true,
  }));
} catch (err) {
  fail(err.message);
}
if (!args.issuer) fail('--issuer is required');

// The test provider and servers listen on plain http on 127.0.0.1. No request waits for
// more than 10 s (a test fails rather than hangs).
const insecure = {
  [oauth.allowInsecureRequests]: true,
  get signal() {
    return AbortSignal.timeout(10_000);
  },
};
const issuer = new URL(args.issuer);
const as = await oauth
  .discoveryRequest(issuer, insecure)
  .then((response) => oauth.processDiscoveryResponse(issuer, response));
const client = { client_id: 'portcullis-test' };
const clientAuth = oauth.ClientSecretBasic('throwaway-test-secret');
const keyPair = await oauth.generateKeyPair('ES256', { extractable: args['export-key'] });
const DPoP = oauth.DPoP(client, keyPair);

const grant = await oauth.clientCredentialsGrantRequest(
  as,
  client,
  clientAuth,
  new URLSearchParams({ resource: 'api://orders', scope: 'orders:read' }),
  { DPoP, ...insecure },
);
const token = await oauth.processClientCredentialsResponse(as, client, grant);

const sent = [];
for (const url of args.send) {
  try {
    const response = await oauth.protectedResourceRequest(
      token.access_token, 'GET', new URL(url), new Headers(), null, { DPoP, ...insecure },
    );
    sent.push({ url, status: response.status, www_authenticate: response.headers.get('www-authenticate') });
  } catch (err) {
    // A 401 with a challenge is reported by the library as an error carrying the response.
    if (!err.response) throw err;
    sent.push({ url, status: err.status, www_authenticate: err.response.headers.get('www-authenticate') });
  }
}

const minted = [];
for (const spec of args.mint) {
  const split = spec.indexOf(':');
  const method = spec.slice(0, split);
  const url = spec.slice(split + 1);
  let proof;
  const keep = async (_url, init) => {
    proof = init.headers.dpop;
    return new Response(null, { status: 204 });
  };
  await oauth.protectedResourceRequest(
    token.access_token, method, new URL(url), new Headers(), null,
    { DPoP, [oauth.customFetch]: keep, ...insecure },
  );
  minted.push({ method, url, dpop: proof });
}

const private_jwk = args['export-key'] ? await crypto.subtle.exportKey('jwk', keyPair.privateKey) : null;
process.stdout.write(
  `${JSON.stringify({ access_token: token.access_token, token_type: token.token_type, sent, minted, private_jwk })}\n`,
);
