// The bar on every signed-in page: who is signed in, the pages that token may use, sign-out.

import { api, whoami } from "./api.js";

const button = document.getElementById("sign-out");
if (button) {
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api("/logout", { method: "POST" });
    } catch {
      // Signed out or not, the sign-in page is where this goes.
    }
    location.assign("/login");
  });
}

whoami()
  .then((me) => {
    for (const link of document.querySelectorAll(".topbar nav a[data-scope]")) {
      link.hidden = !me.scopes.includes(link.dataset.scope);
    }
    const who = document.getElementById("signed-in-as");
    if (who) {
      who.textContent = me.name;
      who.title = `Signed in with token ${me.name}: ${me.scopes.join(", ")}`;
    }
  })
  .catch(() => {}); // the page's own requests report a lost session
