// The Google stand-in of the sidecar's upstream tests: oidc-provider (OpenID Certified) over
// HTTPS on 127.0.0.1 with the test's rcgen certificate. devInteractions logs in any name as
// `sub`; the account named `unverified` has email_verified false, `outsider` another domain.
// Env: PORT, KEY, CERT (PEM files), CLIENT_ID, CLIENT_SECRET, REDIRECT_URI; optionally HOST
// (the address to listen on) and ISSUER (when reached by name, as in the e2e story).
import fs from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

const { PORT, KEY, CERT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI } = process.env;
const HOST = process.env.HOST || '127.0.0.1';
const issuer = process.env.ISSUER || `https://127.0.0.1:${PORT}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: [REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'hd', 'groups'],
  },
  cookies: { keys: ['scopegate-test-idp'] },
  async findAccount(ctx, id) {
    const domain = id === 'outsider' ? 'elsewhere.example' : 'shop.example';
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: `${id}@${domain}`,
          email_verified: id !== 'unverified',
          name: `User ${id}`,
          hd: domain,
          groups: id === 'alice' ? ['eng'] : ['sales'],
        };
      },
    };
  },
});
provider.on('server_error', (ctx, err) => console.error('idp server_error', err));

https
  .createServer({ key: fs.readFileSync(KEY), cert: fs.readFileSync(CERT) }, provider.callback())
  .listen(Number(PORT), HOST, () => console.log(`idp ready ${issuer}`));
