"use strict";
(function () {
  const q = new URLSearchParams(location.search);
  const texts = {
    expired: "Your session expired: log in again.",
    failed: "Wrong user or password.",
    logout: "You are logged out.",
    origin: "The login form must be sent from this console's own page.",
    throttled: "Too many failed logins from your address: try again in " + (q.get("wait") || "a few") + " s.",
  };
  const why = q.get("why");
  if (why && texts[why]) {
    const p = document.getElementById("why");
    p.textContent = texts[why];
    p.hidden = false;
  }
})();
