// The bar on every signed-in page: sign-out.

import { api } from "./api.js";

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
