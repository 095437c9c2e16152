/* Page-level recorder of tvlens's offline report (inlined before any other script).
 *
 * Every JavaScript error, unhandled promise rejection, console.error and failed resource
 * load is written into <html data-js-errors="[...]"> and shown in a banner; every resource
 * the page fetched from anywhere but the file itself (data:, blob:, file:, about:) goes into
 * <html data-external-requests="[...]">, and the laid-out page height into data-page-height.
 * A person sees the banner; a headless browser test reads the attributes from the rendered
 * DOM (chromium --dump-dom), so no browser driver is needed.
 */
(function () {
  var root = document.documentElement;
  var errors = [];
  function show() {
    var box = document.getElementById("js-errors");
    if (box && errors.length) {
      box.hidden = false;
      box.textContent = "JavaScript errors on this page: " + errors.join(" | ");
    }
  }
  function record(msg) {
    errors.push(String(msg));
    root.setAttribute("data-js-errors", JSON.stringify(errors));
    show();
  }
  window.addEventListener(
    "error",
    function (e) {
      var t = e.target;
      if (t && t !== window && (t.src || t.href)) {
        record("failed to load " + (t.src || t.href));  // resource errors do not bubble
      } else {
        record((e.message || "error") + " (" + (e.filename || "") + ":" + (e.lineno || "") + ")");
      }
    },
    true
  );
  window.addEventListener("unhandledrejection", function (e) {
    record("unhandled rejection: " + ((e.reason && e.reason.message) || e.reason));
  });
  var consoleError = console.error;
  console.error = function () {
    record("console.error: " + Array.prototype.join.call(arguments, " "));
    return consoleError.apply(console, arguments);
  };
  function external() {
    var local = /^(data|blob|file|about|javascript):/;
    var names = performance.getEntriesByType("resource").map(function (e) { return e.name; });
    root.setAttribute(
      "data-external-requests",
      JSON.stringify(names.filter(function (n) { return !local.test(n); }))
    );
  }
  function measured() {
    external();
    // the laid-out height, so a headless screenshot can take the whole page
    root.setAttribute("data-page-height", String(root.scrollHeight));
  }
  root.setAttribute("data-js-errors", "[]");
  root.setAttribute("data-external-requests", "[]");
  document.addEventListener("DOMContentLoaded", show);
  window.addEventListener("load", function () { setTimeout(measured, 0); });
})();
