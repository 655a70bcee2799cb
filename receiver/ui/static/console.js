// The console's only script: live updates over server-sent events. Every page works without
// it. HTML arriving here was rendered (and escaped) by the server's templates; nothing from a
// task is ever put into the page as markup by this file.
(function () {
  "use strict";

  function fromHtml(html) {
    var holder = document.createElement("template");
    holder.innerHTML = html.trim();
    return holder.content.firstElementChild;
  }

  // Calls onData with each `name` event's JSON from the stream named by el's data-live.
  function follow(el, name, onData) {
    var url = el.getAttribute("data-live");
    if (!url || !window.EventSource) { return; }
    new EventSource(url).addEventListener(name, function (event) {
      onData(JSON.parse(event.data));
    });
  }

  function liveGallery(grid) {
    follow(grid, "card", function (data) {
      var card = fromHtml(data.html);
      if (!card) { return; }
      var cards = grid.querySelectorAll("[data-id]");
      for (var i = 0; i < cards.length; i++) {
        if (cards[i].getAttribute("data-id") === data.id) {
          cards[i].replaceWith(card);
          return;
        }
      }
      var first = cards.length ? cards[0] : null;
      // Newest first: a task newer than the top card goes on top; older ones belong to
      // pages further down and are left there.
      if (!first || data.id > first.getAttribute("data-id")) {
        grid.insertBefore(card, first);
        var empty = document.getElementById("empty");
        if (empty) { empty.remove(); }
      }
    });
  }

  function liveTask(panel) {
    follow(panel, "panel", function (data) {
      panel.innerHTML = data.html;
      panel.setAttribute("data-seq", String(data.seq));
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var grid = document.getElementById("grid");
    if (grid) { liveGallery(grid); }
    var panel = document.getElementById("panel");
    if (panel) { liveTask(panel); }
  });
})();
