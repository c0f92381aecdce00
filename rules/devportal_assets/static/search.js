/* The portal's offline search: window.STELLA_SEARCH_INDEX (search-index.js, built with the bundle)
   filtered in the page; every word must appear in an entry's title, kind or text. No network. */
(function () {
  "use strict";
  var index = window.STELLA_SEARCH_INDEX || [];
  var input = document.getElementById("search-input");
  var list = document.getElementById("search-results");
  var status = document.getElementById("search-status");
  var form = document.getElementById("search-form");

  function words(text) {
    return text.toLowerCase().split(/[^a-z0-9_.:{}\/-]+/).filter(function (w) { return w.length > 0; });
  }

  function score(entry, terms) {
    var title = entry.t.toLowerCase();
    var hay = title + " " + entry.k.toLowerCase() + " " + entry.s.toLowerCase();
    var total = 0;
    for (var i = 0; i < terms.length; i++) {
      if (hay.indexOf(terms[i]) < 0) { return 0; }
      total += title.indexOf(terms[i]) >= 0 ? 10 : 1;
      if (title === terms[i]) { total += 20; }
    }
    return total;
  }

  function show(query) {
    var terms = words(query);
    while (list.firstChild) { list.removeChild(list.firstChild); }
    if (terms.length === 0) { status.textContent = "Type a word: the index is part of the bundle, no network needed."; return; }
    var hits = [];
    for (var i = 0; i < index.length; i++) {
      var s = score(index[i], terms);
      if (s > 0) { hits.push({ s: s, i: i, e: index[i] }); }
    }
    hits.sort(function (a, b) { return b.s - a.s || a.i - b.i; });
    status.textContent = hits.length + (hits.length === 1 ? " result" : " results") + " for \u201c" + query + "\u201d";
    for (var j = 0; j < hits.length && j < 100; j++) {
      var li = document.createElement("li");
      var a = document.createElement("a");
      a.href = hits[j].e.u;
      a.textContent = hits[j].e.t;
      var kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = hits[j].e.k;
      li.appendChild(a);
      li.appendChild(kind);
      if (hits[j].e.s) {
        var p = document.createElement("div");
        p.textContent = hits[j].e.s;
        li.appendChild(p);
      }
      list.appendChild(li);
    }
  }

  var query = new URLSearchParams(window.location.search).get("q") || "";
  input.value = query;
  show(query);
  input.addEventListener("input", function () { show(input.value); });
  form.addEventListener("submit", function (event) { event.preventDefault(); show(input.value); });
}());
