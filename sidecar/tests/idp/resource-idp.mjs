// An outside identity provider issuing JWT access tokens (RFC 9068) to a resource server the
// sidecar protects: oidc-provider (OpenID Certified) over HTTPS on 127.0.0.1 with the test's
// rcgen certificate, a client_credentials client, a resource indicator with JWT access tokens,
// and Keycloak-shaped extra claims (groups, realm_access.roles, email). A fresh ES256 key with
// the kid KID is generated at start, so restarting with another KID rotates the keys.
// Env: PORT, KEY, CERT (PEM files), KID, AUDIENCE (the resource servers it issues for, comma
// separated; the first is the default), CLIENT_ID, CLIENT_SECRET.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import Provider, { errors } from 'oidc-provider';

const { PORT, KEY, CERT, KID, AUDIENCE, CLIENT_ID, CLIENT_SECRET } = process.env;
const issuer = `https://127.0.0.1:${PORT}`;
const audiences = AUDIENCE.split(',');
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signing = { ...privateKey.export({ format: 'jwk' }), kid: KID, alg: 'ES256', use: 'sig' };

const provider = new Provider(issuer, {
  jwks: { keys: [signing] },
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'ES256',
  }],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audiences[0],
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (!audiences.includes(resource)) throw new errors.InvalidTarget();
        return {
          scope: 'read:items',
          audience: resource,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  extraTokenClaims: async () => ({
    email: 'reports@shop.example',
    groups: ['staff', 'admins'],
    realm_access: { roles: ['offline_access', 'shop:read:items', 'shop:reports', 'billing:admin'] },
  }),
});
provider.on('server_error', (ctx, err) => console.error('idp server_error', err));

https
  .createServer({ key: fs.readFileSync(KEY), cert: fs.readFileSync(CERT) }, provider.callback())
  .listen(Number(PORT), '127.0.0.1', () => console.log(`idp ready ${issuer}`));
