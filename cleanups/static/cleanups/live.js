// Refresh the live parts of a page every few seconds with fetch(), only while the tab is visible.
(function () {
  "use strict";
  var EVERY_MS = 3000;
  var timer = null;
  function refresh() {
    var root = document.querySelector("[data-live-url]");
    if (!root || document.hidden) return;
    fetch(root.dataset.liveUrl, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (!data) return;
        document.getElementById("live-rows").innerHTML = data.html;
        Object.keys(data.extra || {}).forEach(function (id) {
          var part = document.getElementById(id);
          if (part) part.innerHTML = data.extra[id];
        });
        if (data.done) stop();  // e.g. a run that has finished: nothing more will change
        Object.keys(data.totals || {}).forEach(function (key) {
          var el = root.querySelector('[data-total="' + key + '"]');
          if (el) el.textContent = data.totals[key];
        });
      })
      .catch(function () { /* try again on the next tick */ });
  }
  function start() { if (!timer) timer = setInterval(refresh, EVERY_MS); }
  function stop() { clearInterval(timer); timer = null; }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { stop(); } else { refresh(); start(); }
  });
  document.addEventListener("DOMContentLoaded", function () { if (!document.hidden) start(); });
})();
