// Sign-in, kept in one place. config.auth null (local mode): no sign-in, no token.
// Otherwise the Cognito hosted UI's authorization-code flow with PKCE; the ID token is the bearer token
// (the HTTP API's JWT authorizer checks its audience: the app client id). Tokens live in sessionStorage only.

const STORE = "s2i.auth";
const VERIFIER = "s2i.pkce";

function base64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomString() {
  return base64url(crypto.getRandomValues(new Uint8Array(32)));
}

async function challenge(verifier) {
  return base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
}

function claims(token) {
  const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(decodeURIComponent(escape(atob(payload))));
}

async function tokenRequest(auth, params) {
  const response = await fetch(`${auth.domain}/oauth2/token`, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ client_id: auth.clientId, ...params }),
  });
  if (!response.ok) throw new Error(`sign-in failed (${response.status}): sign in again`);
  const tokens = await response.json();
  const saved = {
    idToken: tokens.id_token,
    refreshToken: tokens.refresh_token ?? params.refresh_token,
    expiresAt: Date.now() + (tokens.expires_in - 60) * 1000,
  };
  sessionStorage.setItem(STORE, JSON.stringify(saved));
  return saved;
}

/** Sign-in state for the page: `headers()` for each API call, `user`, `signIn()`, `signOut()`. */
export async function initAuth(config) {
  const auth = config.auth;
  if (!auth) {
    return { enabled: false, user: null, headers: async () => ({}), signIn() {}, signOut() {} };
  }
  const url = new URL(location.href);
  const code = url.searchParams.get("code");
  if (code) {
    const pending = JSON.parse(sessionStorage.getItem(VERIFIER) || "{}");
    sessionStorage.removeItem(VERIFIER);
    history.replaceState(null, "", auth.redirectUri);
    if (pending.state !== url.searchParams.get("state")) throw new Error("sign-in answer does not match: sign in again");
    await tokenRequest(auth, {
      grant_type: "authorization_code",
      code,
      redirect_uri: auth.redirectUri,
      code_verifier: pending.verifier,
    });
  }
  let saved = JSON.parse(sessionStorage.getItem(STORE) || "null");

  async function signIn() {
    const verifier = randomString();
    const state = randomString();
    sessionStorage.setItem(VERIFIER, JSON.stringify({ verifier, state }));
    const query = new URLSearchParams({
      response_type: "code",
      client_id: auth.clientId,
      redirect_uri: auth.redirectUri,
      scope: (auth.scopes || ["openid", "email"]).join(" "),
      state,
      code_challenge: await challenge(verifier),
      code_challenge_method: "S256",
    });
    location.assign(`${auth.domain}/oauth2/authorize?${query}`);
  }

  function signOut() {
    sessionStorage.removeItem(STORE);
    const query = new URLSearchParams({ client_id: auth.clientId, logout_uri: auth.redirectUri });
    location.assign(`${auth.domain}/logout?${query}`);
  }

  async function headers() {
    if (saved && Date.now() > saved.expiresAt && saved.refreshToken) {
      try {
        saved = await tokenRequest(auth, { grant_type: "refresh_token", refresh_token: saved.refreshToken });
      } catch {
        saved = null;
      }
    }
    if (!saved) {
      await signIn();
      throw new Error("signing in");
    }
    return { Authorization: `Bearer ${saved.idToken}` };
  }

  const user = saved ? claims(saved.idToken).email || claims(saved.idToken).sub : null;
  return { enabled: true, user, headers, signIn, signOut };
}
