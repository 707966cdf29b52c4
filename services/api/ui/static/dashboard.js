// The dashboard's only hand-written script: what htmx does not do for us.
(function () {
  "use strict";

  // A live stream says its session ended (token revoked or expired): go to the login page,
  // which says why. Listening on each stream's EventSource as htmx opens it.
  document.addEventListener("htmx:sseOpen", function (event) {
    var source = event.detail && event.detail.source;
    if (!source || source.__ratchetEnded) { return; }
    source.__ratchetEnded = true;
    source.addEventListener("session-ended", function (message) {
      source.close();
      window.location.assign(message.data || "/ui/login?ended=1");
    });
  });

  // Forms that change something hard to undo ask first (data-confirm holds the question).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form instanceof HTMLFormElement ? form.getAttribute("data-confirm") : null;
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  // Copy buttons: data-copy names the element whose text is copied.
  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("[data-copy]") : null;
    if (!button) { return; }
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) { return; }
    var text = source.textContent || "";
    var done = function () { button.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { selectText(source); });
    } else {
      selectText(source);
      if (document.execCommand && document.execCommand("copy")) { done(); }
    }
  });

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
})();
