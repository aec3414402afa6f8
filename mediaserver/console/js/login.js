// Sign-in: the API token is posted once; the server answers with an HttpOnly session cookie.

import { byId } from "./dom.js";

const params = new URLSearchParams(location.search);
const form = byId("login");
const error = byId("error");
byId("next").value = params.get("next") || "/";

function showError(message) {
  error.textContent = message;
  error.hidden = !message;
}

if (params.get("error") === "wrong_token") showError("That is not this server's API token.");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const submit = byId("submit");
  submit.disabled = true;
  try {
    const response = await fetch("/login", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ token: byId("token").value, next: byId("next").value }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      location.assign(body.next || "/");
      return;
    }
    showError((body.error && body.error.message) || `Sign-in failed (${response.status}).`);
    byId("token").select();
  } catch (failure) {
    showError("The server cannot be reached: " + failure.message);
  } finally {
    submit.disabled = false;
  }
});
