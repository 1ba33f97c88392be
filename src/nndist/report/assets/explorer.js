/* nndist report explorer: one distribution at a time, picked with selects, drawn with Plotly.
 *
 * Reads the JSON of <script id="nndist-explorer-data"> (built by nndist.report.explorer):
 * selectors [{key, label, default}], items [{keys, grid: [lo, hi, bins], series [{name, density}],
 * stats {columns, rows}, numbers [[name, value]]}], boxes {layer: {emission|absorption: {channel,
 * q05, q25, q50, q75, q95, mean, std, n}}}, notes [text]. Every value from the run is put into the
 * page as text (textContent), never as HTML. window.nndistExplorer reports its state to the
 * report's self-check and to the browser test.
 */
(function () {
  "use strict";
  var state = { ready: false, error: null, items: 0, draws: 0 };
  window.nndistExplorer = state;
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
  var CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["sendDataToCloud", "select2d", "lasso2d"] };

  function byId(id) { return document.getElementById(id); }
  function fail(message) {
    state.error = message;
    var p = byId("nndist-explorer-msg");
    if (p) { p.textContent = message; p.hidden = false; }
  }
  function fmt(v) {
    if (v === null || v === undefined) { return "–"; }
    if (typeof v !== "number") { return String(v); }
    if (Number.isInteger(v) && Math.abs(v) < 1e15) { return String(v); }
    var a = Math.abs(v);
    return (a !== 0 && (a >= 1e5 || a < 1e-3)) ? v.toExponential(3) : String(Number(v.toPrecision(4)));
  }
  function esc(text) {  // Plotly reads titles and names as a subset of HTML
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function unique(values) {
    var seen = {}, out = [];
    values.forEach(function (v) { if (!Object.prototype.hasOwnProperty.call(seen, v)) { seen[v] = true; out.push(v); } });
    return out;
  }
  function option(value) {
    var o = document.createElement("option");
    o.value = value; o.textContent = value;
    return o;
  }
  function labelled(text, control) {
    var label = document.createElement("label");
    label.appendChild(document.createTextNode(text + " "));
    label.appendChild(control);
    return label;
  }
  function select(id, values, onChange) {
    var sel = document.createElement("select");
    sel.id = id;
    values.forEach(function (v) { sel.appendChild(option(v)); });
    sel.addEventListener("change", onChange);
    return sel;
  }
  function cell(row, tag, text) {
    var c = document.createElement(tag);
    c.textContent = text;
    row.appendChild(c);
    return c;
  }

  var root = byId("nndist-explorer");
  if (!root) { return; }
  if (typeof window.Plotly === "undefined") { fail("The plotting library did not load; the static figures above still show the run."); return; }
  var data;
  try { data = JSON.parse(byId("nndist-explorer-data").textContent); }
  catch (e) { fail("The explorer's data cannot be read: " + e.message); return; }
  state.data = data;
  state.items = data.items.length;
  (data.notes || []).forEach(function (n) { var p = document.createElement("p"); p.className = "muted"; p.textContent = n; byId("nndist-explorer-notes").appendChild(p); });

  // ------------------------------------------------------------------ histogram of one item
  var selectors = data.selectors, items = data.items, selects = {};
  var initial = data.initial || null;  // the first item to show (e.g. the most changed tensor)
  var controls = byId("nndist-explorer-controls");
  var histDiv = byId("nndist-hist");
  var yScale = select("nndist-yscale", ["linear", "log"], function () { draw(); if (boxLayer) { drawBoxes(); } });

  function matching(upto) {
    return items.filter(function (it) {
      for (var i = 0; i < upto; i++) {
        var k = selectors[i].key;
        if (it.keys[k] !== selects[k].value) { return false; }
      }
      return true;
    });
  }
  function refresh(fromIndex) {
    for (var i = fromIndex; i < selectors.length; i++) {
      var s = selectors[i], sel = selects[s.key], old = sel.value;
      var values = unique(matching(i).map(function (it) { return it.keys[s.key]; }));
      sel.replaceChildren.apply(sel, values.map(option));
      var wanted = initial ? initial[s.key] : old;
      sel.value = values.indexOf(wanted) >= 0 ? wanted : (s["default"] === "last" ? values[values.length - 1] : values[0]);
    }
    initial = null;
    draw();
  }
  function current() { return matching(selectors.length)[0] || null; }

  function drawStats(item) {
    // One column per series, one row per statistic: it fits beside the plot.
    var table = byId("nndist-stats");
    table.replaceChildren();
    var head = table.createTHead().insertRow();
    cell(head, "th", "");
    item.stats.rows.forEach(function (r, i) { cell(head, "th", r[0]).style.color = COLORS[i % COLORS.length]; });
    var body = table.createTBody();
    item.stats.columns.forEach(function (c, j) {
      var row = body.insertRow();
      cell(row, "th", c);
      item.stats.rows.forEach(function (r) { cell(row, "td", fmt(r[j + 1])).className = "num"; });
    });
    var dl = byId("nndist-numbers");
    dl.replaceChildren();
    item.numbers.forEach(function (kv) {
      cell(dl, "dt", kv[0]);
      cell(dl, "dd", fmt(kv[1]));
    });
  }
  function draw() {
    var item = current();
    if (!item) { histDiv.replaceChildren(); return; }
    var lo = item.grid[0], hi = item.grid[1], bins = item.grid[2], w = (hi - lo) / bins;
    var x = [];
    for (var i = 0; i < bins; i++) { x.push(lo + (i + 0.5) * w); }
    var traces = item.series.map(function (s, k) {
      return { type: "bar", x: x, y: s.density, width: w, name: esc(s.name), opacity: item.series.length > 1 ? 0.55 : 0.8,
               marker: { color: COLORS[k % COLORS.length] }, hovertemplate: "%{x:.4g}: %{y:.4g}<extra>" + esc(s.name) + "</extra>" };
    });
    var title = selectors.map(function (s) { return item.keys[s.key]; }).join(" · ");
    var layout = {
      barmode: "overlay", bargap: 0, margin: { l: 60, r: 16, t: 56, b: 48 },
      title: { text: esc(title), font: { size: 13 }, x: 0.01, xanchor: "left" },
      xaxis: { title: { text: "value" }, zeroline: false },
      yaxis: { title: { text: "density" }, type: yScale.value },
      legend: { orientation: "h", x: 0, y: 1.0, yanchor: "bottom" }
    };
    Plotly.react(histDiv, traces, layout, CONFIG);
    drawStats(item);
    state.draws += 1;
  }

  if (items.length) {
    selectors.forEach(function (s, i) {
      var sel = select("nndist-sel-" + s.key, [], function () { refresh(i + 1); syncBoxes(); });
      selects[s.key] = sel;
      controls.appendChild(labelled(s.label, sel));
    });
    controls.appendChild(labelled("y axis", yScale));
  } else {
    byId("nndist-explorer-hist").hidden = true;
  }

  // ------------------------------------------------------------------ per-channel box plots
  var boxes = data.boxes || {}, boxLayers = Object.keys(boxes);
  var boxLayer = null, boxSort = null;
  var SORTS = { "channel": null, "median": function (d, i) { return d.q50[i]; },
                "spread (q75 - q25)": function (d, i) { return d.q75[i] - d.q25[i]; },
                "mean": function (d, i) { return d.mean[i]; }, "std": function (d, i) { return d.std[i]; } };

  function drawBox(stat, divId, color) {
    var d = boxes[boxLayer.value] && boxes[boxLayer.value][stat], div = byId(divId);
    if (!d) { div.replaceChildren(); return; }
    var labels = d.channel.map(function (c) { return "c" + c; });
    var order = labels.map(function (_, i) { return i; });
    var key = SORTS[boxSort.value];
    if (key) { order.sort(function (a, b) { return (key(d, b) || 0) - (key(d, a) || 0); }); }
    var trace = { type: "box", x: labels, q1: d.q25, median: d.q50, q3: d.q75, lowerfence: d.q05, upperfence: d.q95,
                  mean: d.mean, name: stat, marker: { color: color }, boxpoints: false };
    var layout = { margin: { l: 60, r: 16, t: 40, b: 48 }, showlegend: false,
                   title: { text: esc(boxLayer.value) + ": " + stat + " per channel (box q25-q75, whiskers q05-q95)",
                            font: { size: 13 }, x: 0.01, xanchor: "left" },
                   xaxis: { type: "category", categoryorder: "array", categoryarray: order.map(function (i) { return labels[i]; }),
                            title: { text: "channel" } },
                   yaxis: { title: { text: stat }, type: yScale.value } };
    Plotly.react(div, [trace], layout, CONFIG);
  }
  function drawBoxes() {
    drawBox("emission", "nndist-box-emission", COLORS[0]);
    drawBox("absorption", "nndist-box-absorption", COLORS[1]);
  }
  function syncBoxes() {
    if (boxLayer && selects.layer && boxes[selects.layer.value] && boxLayer.value !== selects.layer.value) {
      boxLayer.value = selects.layer.value;
      drawBoxes();
    }
  }
  if (boxLayers.length) {
    boxLayer = select("nndist-box-layer", boxLayers, drawBoxes);
    boxSort = select("nndist-box-sort", Object.keys(SORTS), drawBoxes);
    var bc = byId("nndist-box-controls");
    bc.appendChild(labelled("Layer", boxLayer));
    bc.appendChild(labelled("Sort channels by", boxSort));
    if (!items.length) { bc.appendChild(labelled("y axis", yScale)); }
    byId("nndist-explorer-boxes").hidden = false;
  }

  try {
    if (items.length) { refresh(0); }
    if (boxLayers.length) { syncBoxes(); drawBoxes(); }
    state.ready = true;
  } catch (e) {
    fail("The explorer failed: " + e.message);
  }
})();
