import { useState } from "preact/hooks";
import { api, ApiFailure, call, setToken } from "../api/client";

/** Token sign-in: the token is checked against GET /v1/host before it is kept. */
export function SignIn({ onSignedIn }: { onSignedIn: () => void }) {
  const [token, setTokenText] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setToken(token.trim());
    try {
      await call(api.GET("/v1/host"));
      onSignedIn();
    } catch (err) {
      setToken(null);
      setError(
        err instanceof ApiFailure && err.status === 401
          ? `Sign-in failed: ${err.message}.`
          : `Sign-in failed: ${err instanceof Error ? err.message : String(err)}`,
      );
    } finally {
      setBusy(false);
    }
  }

  return (
    <main class="signin">
      <form onSubmit={submit} aria-labelledby="signin-title">
        <h1 id="signin-title">Vireo</h1>
        <p class="muted">Sign in with an API token (create one with <code>vireo token create NAME</code>).</p>
        <label for="token">API token</label>
        <input
          id="token"
          name="token"
          type="password"
          autocomplete="off"
          required
          value={token}
          onInput={(e) => setTokenText((e.target as HTMLInputElement).value)}
          aria-describedby={error ? "signin-error" : undefined}
          aria-invalid={error ? true : undefined}
        />
        {error && (
          <p id="signin-error" class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" class="primary" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <p class="muted small">The token is kept in this tab's session storage only.</p>
      </form>
    </main>
  );
}
