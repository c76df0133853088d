// Refresh the live parts of a page every few seconds with fetch(), only while the tab is visible.
// The answer may carry: html (the whole live part), rows (only the table rows that changed, by
// schedule id), extra (other parts by element id), totals and facts (figures by name), since (a
// token to send back, so the next answer holds only what changed after it) and done.
(function () {
  "use strict";
  var EVERY_MS = 3000;
  var timer = null;
  var busy = false;
  function url(root) {
    var since = root.dataset.liveSince;
    if (!since) return root.dataset.liveUrl;
    var sep = root.dataset.liveUrl.indexOf("?") < 0 ? "?" : "&";
    return root.dataset.liveUrl + sep + "since=" + encodeURIComponent(since);
  }
  function apply(root, data) {
    if (typeof data.html === "string") {
      document.getElementById("live-rows").innerHTML = data.html;
    }
    Object.keys(data.rows || {}).forEach(function (id) {
      var row = root.querySelector('tr[data-schedule="' + id + '"]');
      if (row) row.outerHTML = data.rows[id];
    });
    if (data.since) root.dataset.liveSince = data.since;
    Object.keys(data.extra || {}).forEach(function (id) {
      var part = document.getElementById(id);
      if (part) part.innerHTML = data.extra[id];
    });
    Object.keys(data.totals || {}).forEach(function (key) {
      var el = root.querySelector('[data-total="' + key + '"]');
      if (el) el.textContent = Number(data.totals[key]).toLocaleString("en-US");
    });
    Object.keys(data.facts || {}).forEach(function (key) {
      var el = root.querySelector('[data-fact="' + key + '"]');
      if (el) el.textContent = data.facts[key];
    });
    if (data.done) stop();  // e.g. a run that has finished: nothing more will change
  }
  function refresh() {
    var root = document.querySelector("[data-live-url]");
    if (!root || document.hidden || busy) return;
    busy = true;
    var sent = root.dataset.liveSince;
    fetch(url(root), {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (response) {
        // A token the server no longer reads: ask for everything next time.
        if (response.status === 400 && sent) delete root.dataset.liveSince;
        return response.ok ? response.json() : null;
      })
      .then(function (data) { if (data) apply(root, data); })
      .catch(function () { /* try again on the next tick */ })
      .then(function () { busy = false; });
  }
  function start() { if (!timer) timer = setInterval(refresh, EVERY_MS); }
  function stop() { clearInterval(timer); timer = null; }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { stop(); } else { refresh(); start(); }
  });
  document.addEventListener("DOMContentLoaded", function () { if (!document.hidden) start(); });
})();
