// The schedule form: preview the next five run times as the cadence fields change, and show
// only the fields the chosen cadence uses.
(function () {
  "use strict";
  function value(id) {
    var el = document.getElementById(id);
    return el ? el.value.trim() : "";
  }
  function when(prefix) {
    var date = value(prefix + "_0"), time = value(prefix + "_1");
    return date ? (date + " " + (time || "00:00:00")) : "";
  }
  function showFor(cadence, windowed) {
    var cron = cadence === "cron";
    document.querySelectorAll(".field-cron").forEach(function (row) { row.hidden = !cron; });
    // The time zone reads a cron expression and a run window.
    document.querySelectorAll(".field-timezone").forEach(function (row) {
      row.hidden = !(cron || windowed);
    });
  }
  var asking = 0;
  function refresh() {
    var box = document.getElementById("upcoming-runs");
    if (!box) return;
    var params = new URLSearchParams({
      cadence: value("id_cadence"), interval: value("id_interval"), cron: value("id_cron"),
      timezone: value("id_timezone"), start_at: when("id_start_at"), end_at: when("id_end_at"),
      window_start: value("id_window_start"), window_end: value("id_window_end"),
    });
    showFor(params.get("cadence"), !!(params.get("window_start") || params.get("window_end")));
    var asked = ++asking;
    if (!params.get("interval") && params.get("cadence") !== "cron") {
      // Nothing typed yet: a hint, not an error.
      var hint = document.createElement("div");
      hint.className = "help";
      hint.textContent = "Enter an interval to see the next five run times.";
      box.replaceChildren(hint);
      return;
    }
    fetch(box.dataset.url + "?" + params.toString(), {credentials: "same-origin"})
      .then(function (response) { return response.json(); })
      .then(function (data) {
        if (asked !== asking) return;  // a later edit's answer is on its way: this one is stale
        box.replaceChildren();
        var lines = data.error ? [data.error] : data.times.slice();
        if (!lines.length) lines = ["No run before the end."];
        if (!data.error && data.window) lines.push(data.window);
        lines.forEach(function (line) {
          var div = document.createElement("div");
          div.textContent = line;
          if (data.error) div.className = "errornote";
          box.appendChild(div);
        });
      })
      .catch(function () { /* the preview is a convenience: the form still validates */ });
  }
  var timer = null;
  function later() { clearTimeout(timer); timer = setTimeout(refresh, 300); }
  document.addEventListener("DOMContentLoaded", function () {
    ["id_cadence", "id_interval", "id_cron", "id_timezone", "id_start_at_0", "id_start_at_1",
     "id_end_at_0", "id_end_at_1", "id_window_start", "id_window_end"].forEach(function (id) {
      var el = document.getElementById(id);
      if (el) { el.addEventListener("input", later); el.addEventListener("change", later); }
    });
    refresh();
  });
})();
