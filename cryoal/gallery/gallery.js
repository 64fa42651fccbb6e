/* cryoal labelling page: plain JavaScript, no libraries, works from file://.
 *
 * The gallery's data (classes, particles, images as data: URIs) is a JSON block in the page.
 * Labels live in localStorage under a key made of the pool and the gallery id, saved on every
 * change, so a reload or a crash loses nothing. "Export labels" downloads labels.csv
 * (particle_id,label with class names) that `cryoal label POOL labels.csv` imports as it is.
 */
(function () {
  "use strict";

  var DATA = JSON.parse(document.getElementById("gallery-data").textContent);
  var UNSURE = "__unsure__";
  var KEY = DATA.storageKey;
  var items = DATA.items;
  var cardsEl = document.getElementById("cards");
  var cards = [];
  var storageOk = true;

  // ---- state -------------------------------------------------------------------------------
  function emptyState() { return { version: 1, labels: {}, extraClasses: [], cursor: 0 }; }

  function loadState() {
    var s = null;
    try {
      s = JSON.parse(window.localStorage.getItem(KEY) || "null");
    } catch (e) {
      storageOk = false;
    }
    var st = emptyState();
    if (s && typeof s === "object") {
      if (s.labels && typeof s.labels === "object") { st.labels = s.labels; }
      if (Array.isArray(s.extraClasses)) { st.extraClasses = s.extraClasses.filter(function (c) { return typeof c === "string"; }); }
      if (typeof s.cursor === "number") { st.cursor = s.cursor; }
    }
    return st;
  }

  var state = loadState();

  function saveState() {
    try {
      window.localStorage.setItem(KEY, JSON.stringify(state));
    } catch (e) {
      storageOk = false;
      updateHelp();
      fitScrollPadding();
    }
  }

  function classes() {
    var out = DATA.classes.slice();
    state.extraClasses.forEach(function (c) { if (out.indexOf(c) < 0) { out.push(c); } });
    return out;
  }

  // ---- rendering ---------------------------------------------------------------------------
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }

  function buildCards() {
    items.forEach(function (it, i) {
      var card = el("article", "card");
      card.tabIndex = -1;
      card.dataset.idx = String(i);
      card.dataset.pid = it.id;
      card.style.setProperty("--w", it.w + "px");
      var img = el("img");
      img.src = it.img;
      img.width = it.w;
      img.height = it.h;
      img.alt = "views of " + it.id;
      card.appendChild(img);
      var cap = el("div", "cap");
      cap.appendChild(el("span", "rank", "#" + it.rank + " "));
      cap.appendChild(el("span", "pid", it.id));
      cap.title = it.id;
      card.appendChild(cap);
      var info = [];
      if (it.pred) { info.push("pred " + it.pred + (it.conf ? " (" + it.conf + ")" : "")); }
      if (it.label) { info.push("pool label " + it.label); }
      if (info.length) { card.appendChild(el("div", "cap muted", info.join(" · "))); }
      card.appendChild(el("div", "cap assigned"));
      card.appendChild(el("div", "buttons"));
      card.addEventListener("click", function (ev) {
        var btn = ev.target.closest("button[data-cls]");
        if (btn) {
          assign(i, btn.dataset.cls, false);
        } else {
          setCursor(i, true);
        }
      });
      cardsEl.appendChild(card);
      cards.push(card);
    });
  }

  function buildButtons() {
    var cl = classes();
    cards.forEach(function (card) {
      var box = card.querySelector(".buttons");
      box.textContent = "";
      cl.forEach(function (c, k) {
        var b = el("button", "cls-btn");
        b.type = "button";
        b.dataset.cls = c;
        if (k < 9) { b.appendChild(el("kbd", "", String(k + 1))); b.appendChild(document.createTextNode(" ")); }
        b.appendChild(document.createTextNode(c));
        box.appendChild(b);
      });
      var u = el("button", "unsure-btn");
      u.type = "button";
      u.dataset.cls = UNSURE;
      u.appendChild(el("kbd", "", "0"));
      u.appendChild(document.createTextNode(" unsure"));
      box.appendChild(u);
    });
    var legend = document.getElementById("legend");
    legend.textContent = "";
    legend.appendChild(el("span", "", "Classes:"));
    cl.forEach(function (c, k) {
      var s = el("span", "cls");
      if (k < 9) { s.appendChild(el("kbd", "", String(k + 1))); s.appendChild(document.createTextNode(" ")); }
      s.appendChild(document.createTextNode(c));
      legend.appendChild(s);
    });
    if (!cl.length) { legend.appendChild(el("span", "help", "none yet: add one below")); }
    cards.forEach(function (_, i) { paintCard(i); });
  }

  function paintCard(i) {
    var card = cards[i];
    var lab = state.labels[items[i].id];
    card.classList.toggle("labelled", !!lab && lab !== UNSURE);
    card.classList.toggle("unsure", lab === UNSURE);
    card.dataset.label = lab === UNSURE ? "unsure" : (lab || "");
    card.querySelector(".assigned").textContent =
      lab === UNSURE ? "unsure" : (lab ? "label: " + lab : "\u00a0");
    card.querySelectorAll("button[data-cls]").forEach(function (b) {
      b.classList.toggle("on", b.dataset.cls === lab);
    });
  }

  function updateProgress() {
    var done = 0, unsure = 0;
    items.forEach(function (it) {
      var lab = state.labels[it.id];
      if (lab === UNSURE) { unsure += 1; } else if (lab) { done += 1; }
    });
    var p = document.getElementById("progress");
    p.textContent = done + " / " + items.length + " labelled" + (unsure ? " · " + unsure + " unsure" : "");
    p.classList.toggle("complete", done + unsure === items.length && items.length > 0);
    p.dataset.done = String(done);
    p.dataset.unsure = String(unsure);
  }

  function updateHelp() {
    var help = document.getElementById("help");
    var cmd = DATA.labelCommand + (state.extraClasses.some(function (c) { return DATA.classes.indexOf(c) < 0; })
      ? " --add-classes" : "");
    help.textContent = "";
    help.appendChild(document.createTextNode(
      "Keys: 1–9 class · 0 or s unsure · Backspace clear · arrows move · click works too. " +
      "Views: " + DATA.views + ". Export, then import with "));
    help.appendChild(el("code", "", cmd));
    if (!storageOk) {
      help.appendChild(el("strong", "", " · This browser does not keep labels across reloads here: export often."));
    }
  }

  // ---- actions -----------------------------------------------------------------------------
  function setCursor(i, focus) {
    if (!cards.length) { return; }
    i = Math.max(0, Math.min(cards.length - 1, i));
    if (cards[state.cursor]) { cards[state.cursor].classList.remove("current"); }
    state.cursor = i;
    cards[i].classList.add("current");
    if (focus) { cards[i].scrollIntoView({ block: "nearest", inline: "nearest" }); }
    saveState();
  }

  function assign(i, cls, advance) {
    var id = items[i].id;
    if (cls === null) { delete state.labels[id]; } else { state.labels[id] = cls; }
    paintCard(i);
    updateProgress();
    setCursor(advance ? i + 1 : i, true);  // saves the state
  }

  function moveVertical(dir) {
    // The card in the next row up or down that is closest horizontally.
    var cur = cards[state.cursor].getBoundingClientRect();
    var best = -1, bestTop = null, bestDx = null;
    cards.forEach(function (c, k) {
      var r = c.getBoundingClientRect();
      var ahead = dir > 0 ? r.top > cur.top + 1 : r.top < cur.top - 1;
      if (!ahead) { return; }
      var dy = Math.abs(r.top - cur.top), dx = Math.abs(r.left - cur.left);
      if (bestTop === null || dy < bestTop - 1 || (Math.abs(dy - bestTop) <= 1 && dx < bestDx)) {
        best = k; bestTop = dy; bestDx = dx;
      }
    });
    if (best >= 0) { setCursor(best, true); }
  }

  function csvField(s) {
    s = String(s);
    return /[",\r\n]/.test(s) || s !== s.trim() ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function exportCsv() {
    var rows = ["particle_id,label"];
    items.forEach(function (it) {
      var lab = state.labels[it.id];
      if (lab && lab !== UNSURE) { rows.push(csvField(it.id) + "," + csvField(lab)); }
    });
    var blob = new Blob([rows.join("\n") + "\n"], { type: "text/csv" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "labels.csv";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 2000);
  }

  function addClass(name) {
    var msg = document.getElementById("new-class-msg");
    name = name.trim();
    msg.textContent = "";
    if (!name) { return false; }
    if (/^[0-9]+$/.test(name)) { msg.textContent = "a class name cannot be only digits (cryoal label reads those as class numbers)"; return false; }
    if (/[\r\n]/.test(name) || name === UNSURE) { msg.textContent = "not a valid class name"; return false; }
    if (classes().indexOf(name) >= 0) { msg.textContent = "'" + name + "' is already a class"; return false; }
    state.extraClasses.push(name);
    saveState();
    buildButtons();
    updateHelp();
    fitScrollPadding();
    return true;
  }

  // ---- events ------------------------------------------------------------------------------
  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) {
      if (ev.key === "Escape") { t.blur(); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !cards.length) { return; }
    var k = ev.key;
    var i = state.cursor;
    if (k >= "1" && k <= "9" && k.length === 1) {
      var cls = classes()[Number(k) - 1];
      if (cls !== undefined) { assign(i, cls, true); }
    } else if (k === "0" || k === "s" || k === "S") {
      assign(i, UNSURE, true);
    } else if (k === "Backspace" || k === "Delete") {
      assign(i, null, false);
    } else if (k === "ArrowRight") {
      setCursor(i + 1, true);
    } else if (k === "ArrowLeft") {
      setCursor(i - 1, true);
    } else if (k === "ArrowDown") {
      moveVertical(1);
    } else if (k === "ArrowUp") {
      moveVertical(-1);
    } else {
      return;
    }
    ev.preventDefault();
  });

  document.getElementById("export").addEventListener("click", exportCsv);
  document.getElementById("new-class").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var input = document.getElementById("new-class-name");
    if (addClass(input.value)) { input.value = ""; input.blur(); }
  });

  // The sticky toolbar must not hide the card that scrollIntoView brings into view.
  function fitScrollPadding() {
    document.documentElement.style.scrollPaddingTop = (document.getElementById("toolbar").offsetHeight + 8) + "px";
  }

  // ---- start -------------------------------------------------------------------------------
  window.addEventListener("resize", fitScrollPadding);
  document.getElementById("title").textContent = DATA.title;
  buildCards();
  buildButtons();
  updateProgress();
  updateHelp();
  fitScrollPadding();
  setCursor(Math.min(state.cursor, Math.max(0, cards.length - 1)), false);
  document.body.dataset.ready = "1";
}());
