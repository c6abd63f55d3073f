// edgekiln fleet dashboard: reload the page's main section every few seconds, so that a
// new heartbeat shows without a click. Same origin only; nothing else runs on the pages.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || !main.dataset.refresh) { return; }
  var period = Math.max(1000, parseInt(main.dataset.refresh, 10) || 2000);
  var busy = false;
  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(window.location.href, { headers: { "X-Dashboard-Fragment": "1" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) { window.location.assign("/dashboard/signin"); return null; }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          main.innerHTML = html;
          main.dataset.refreshedAt = String(Date.now());
        }
      })
      .catch(function () { /* the service is restarting: try again at the next tick */ })
      .then(function () { busy = false; });
  }
  window.setInterval(tick, period);
}());
