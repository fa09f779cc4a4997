// Local OpenID provider for Portcullis integration tests. TEST-ONLY: the client
// secrets below are throwaway values and the signing key lives in a plain file.
//
//   node tests/oidc/provider.mjs --port PORT --key-file PATH [--rotate] [--ttl SECONDS]
//
// Prints exactly one JSON line to stdout once listening:
//   {"ready":true,"issuer":"http://127.0.0.1:PORT","kid":"<current kid>"}
// Everything else (oidc-provider notices, errors) goes to stderr.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

// oidc-provider prints its NOTICE lines with console.info, i.e. to stdout; keep
// stdout for the ready line only.
console.info = console.error;
console.log = console.error;

function fail(message) {
  console.error(`provider.mjs: ${message}`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string' },
      'key-file': { type: 'string' },
      rotate: { type: 'boolean', default: false },
      ttl: { type: 'string', default: '300' },
    },
    strict: true,
  }));
} catch (err) {
  fail(err.message);
}

const port = Number(args.port);
const ttl = Number(args.ttl);
const keyFile = args['key-file'];
if (!Number.isInteger(port) || port < 1 || port > 65535) fail('--port must be 1..65535');
if (!Number.isInteger(ttl) || ttl < 1) fail('--ttl must be a positive integer (seconds)');
if (!keyFile) fail('--key-file is required');

// Signing key: reuse PATH unless it is missing or --rotate is given. The JWKS
// publishes only this key, so rotation makes every older kid unknown.
function loadOrCreateKey() {
  if (!args.rotate && existsSync(keyFile)) {
    const jwk = JSON.parse(readFileSync(keyFile, 'utf8'));
    if (jwk.kty !== 'RSA' || !jwk.d || !jwk.kid) fail(`${keyFile} is not an RSA private JWK with a kid`);
    return jwk;
  }
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = {
    ...privateKey.export({ format: 'jwk' }),
    kid: randomBytes(12).toString('base64url'),
    alg: 'RS256',
    use: 'sig',
  };
  // Write-then-rename so a concurrent reader never sees a half-written key.
  const tmp = `${keyFile}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(jwk)}\n`, { mode: 0o600 });
  renameSync(tmp, keyFile);
  return jwk;
}

const signingKey = loadOrCreateKey();
const issuer = `http://127.0.0.1:${port}`;

// Resource servers selectable with the `resource` token request parameter.
// The audience defaults to the resource identifier itself.
const RESOURCES = {
  'api://orders': { scope: 'orders:read orders:write', accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
  'api://billing': { scope: 'billing:read', accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
  'api://opaque': { scope: 'opaque:read', accessTokenFormat: 'opaque' },
};

const client = (id, secret, authMethod) => ({
  client_id: id,
  client_secret: secret,
  token_endpoint_auth_method: authMethod,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
});

const provider = new Provider(issuer, {
  clients: [
    client('portcullis-test', 'throwaway-test-secret', 'client_secret_basic'),
    client('portcullis-post', 'throwaway-test-secret-post', 'client_secret_post'),
  ],
  jwks: { keys: [signingKey] },
  ttl: { ClientCredentials: ttl },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // RFC 9449: a token request with a DPoP proof gets a token bound to its key (cnf.jkt).
    dPoP: { enabled: true },
    // Any authenticated test client may introspect any token.
    introspection: { enabled: true, allowedPolicy: async () => true },
    resourceIndicators: {
      enabled: true,
      getResourceServerInfo: async (ctx, resource) => {
        if (!Object.hasOwn(RESOURCES, resource)) throw new errors.InvalidTarget();
        return RESOURCES[resource];
      },
    },
  },
  // Client-credentials tokens have no end-user; oidc-provider sets the JWT `sub`
  // to the client id but omits `sub` from introspection, so add it explicitly.
  extraTokenClaims: async (ctx, token) => (token.kind === 'ClientCredentials' ? { sub: token.clientId } : undefined),
});

provider.on('server_error', (ctx, err) => console.error('server_error:', err));

const server = createServer(provider.callback());
server.on('error', (err) => fail(`listen on 127.0.0.1:${port}: ${err.message}`));
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ ready: true, issuer, kid: signingKey.kid })}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
