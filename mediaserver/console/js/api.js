// Calls to the server's JSON API with the session cookie; a lost session goes back to sign-in.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function signInAgain() {
  const next = location.pathname + location.search;
  location.assign("/login?next=" + encodeURIComponent(next));
}

// Returns {status, body}. Statuses listed in `accept` come back instead of throwing.
export async function api(path, { method = "GET", body, accept = [] } = {}) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, "network", "The server cannot be reached: " + error.message);
  }
  if (response.status === 401) {
    signInAgain();
    throw new ApiError(401, "unauthorized", "Your session has ended: sign in again.");
  }
  const isJson = (response.headers.get("Content-Type") || "").includes("json");
  const data = response.status === 204 ? null : isJson ? await response.json() : await response.text();
  if (!response.ok && !accept.includes(response.status)) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "http_" + response.status, error.message || String(data));
  }
  return { status: response.status, body: data };
}

// The signed-in token's name and scopes, asked once per page: pages show only what it may do.
let identity = null;
export function whoami() {
  if (!identity) identity = api("/v1/whoami").then((response) => response.body);
  return identity;
}

export async function can(scope) {
  return (await whoami()).scopes.includes(scope);
}

// Runs `task` now and again every `intervalS` seconds (one at a time) until `stop()` is called.
export function repeat(task, intervalS) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    if (stopped) return;
    try {
      await task();
    } finally {
      if (!stopped) timer = setTimeout(run, intervalS * 1000);
    }
  };
  run();
  return { stop() { stopped = true; clearTimeout(timer); } };
}
