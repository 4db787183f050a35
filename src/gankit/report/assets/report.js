// gankit's report pages: curves drawn with uPlot, and the frame sliders. The page's data is
// the JSON in <script id="gankit-data">; everything else on the page is static HTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("gankit-data").textContent);
  var COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
                 "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
  var MARK_COLOURS = {warning: "#d62728", rollback: "#ff7f0e", best: "#2ca02c",
                      diverged: "#000000", failed: "#000000"};
  var charts = {};
  window.gankitReport = {data: data, charts: charts};

  // TensorBoard's smoothing: an exponential moving average, debiased at the start.
  function smooth(values, weight) {
    var out = [], last = 0, n = 0;
    for (var i = 0; i < values.length; i++) {
      var v = values[i];
      if (v === null || !isFinite(v)) { out.push(null); continue; }
      last = last * weight + (1 - weight) * v;
      n += 1;
      out.push(last / (1 - Math.pow(weight, n)));
    }
    return out;
  }

  // Vertical lines at the steps of warnings, rollbacks and the best checkpoint.
  function marksPlugin(marks) {
    return {hooks: {draw: [function (u) {
      var ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
      ctx.save();
      ctx.lineWidth = 1.5 * devicePixelRatio;
      ctx.setLineDash([5 * devicePixelRatio, 4 * devicePixelRatio]);
      marks.forEach(function (mark) {
        var x = u.valToPos(mark.x, "x", true);
        if (!(x >= u.bbox.left && x <= u.bbox.left + u.bbox.width)) return;
        ctx.strokeStyle = MARK_COLOURS[mark.kind] || "#555";
        ctx.beginPath();
        ctx.moveTo(x, top);
        ctx.lineTo(x, top + height);
        ctx.stroke();
      });
      ctx.restore();
    }]}};
  }

  function seriesOptions(line, colour) {
    return {label: line.label, stroke: colour, width: line.faint ? 1 : 2,
            alpha: line.faint ? 0.35 : 1, spanGaps: true,
            points: {show: line.points === true}};
  }

  // spec: {id, title, xlabel, x: {axis name: [values]}, lines: [{label, key, values,
  // smooth, points, run}], marks: [{x, kind, text}], log: bool}
  function draw(spec, xname) {
    var holder = document.getElementById(spec.id);
    var xs = spec.x[xname];
    var columns = [xs], series = [{label: spec.xlabels ? spec.xlabels[xname] : "step"}];
    spec.lines.forEach(function (line, i) {
      var colour = COLOURS[(line.colour !== undefined ? line.colour : i) % COLOURS.length];
      var values = (line.by && line.by[xname]) || line.values;  // against this x axis
      if (line.smooth) {
        columns.push(values);
        series.push(seriesOptions({label: line.label + " (raw)", faint: true}, colour));
        columns.push(smooth(values, line.smooth));
        series.push(seriesOptions({label: line.label}, colour));
      } else {
        columns.push(values);
        series.push(seriesOptions(line, colour));
      }
    });
    var marks = (xname === "step" ? spec.marks || [] : []);
    // the x axis reaches every mark (a divergence after the last logged row)
    var reach = marks.reduce(function (hi, mark) { return Math.max(hi, mark.x); }, -Infinity);
    var options = {
      title: spec.title,
      width: Math.max(280, holder.clientWidth || 600),
      height: spec.height || 240,
      series: series,
      scales: {x: {time: false, range: function (u, lo, hi) { return [lo, Math.max(hi, reach)]; }},
               y: spec.log ? {distr: 3} : {}},
      axes: [{label: spec.xlabels ? spec.xlabels[xname] : "step"}, {}],
      legend: {live: true},
      cursor: {drag: {x: true, y: false}},
      plugins: [marksPlugin(marks)],
    };
    if (charts[spec.id]) charts[spec.id].plot.destroy();
    holder.textContent = "";
    charts[spec.id] = {plot: new uPlot(options, columns, holder), spec: spec};
  }

  function drawAll(xname) {
    (data.charts || []).forEach(function (spec) {
      draw(spec, spec.x[xname] ? xname : "step");
    });
  }

  // Frame sliders: the same fixed noise at every step, one frame per saved grid.
  function wireSlider(slider) {
    var frames = data.frames[slider.getAttribute("data-frames")];
    var img = document.getElementById(slider.getAttribute("data-image"));
    var label = document.getElementById(slider.getAttribute("data-label"));
    var own = img.getAttribute("src");  // the frame the page shows without scripts
    slider.addEventListener("input", function () {
      var frame = frames[Number(slider.value)];
      img.setAttribute("src", frame.src || own);
      label.textContent = "step " + frame.step.toLocaleString("en");
    });
  }

  function start() {
    var axis = document.getElementById("x-axis");
    drawAll(axis ? axis.value : "step");
    if (axis) axis.addEventListener("change", function () { drawAll(axis.value); });
    Array.prototype.forEach.call(document.querySelectorAll("input.frames"), wireSlider);
    var width = window.innerWidth;
    window.addEventListener("resize", function () {
      if (Math.abs(window.innerWidth - width) < 40) return;
      width = window.innerWidth;
      drawAll(axis ? axis.value : "step");
    });
    window.addEventListener("beforeprint", function () { drawAll(axis ? axis.value : "step"); });
    document.body.setAttribute("data-ready", "true");
  }

  start();
})();
