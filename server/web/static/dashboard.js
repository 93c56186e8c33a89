// The collector's dashboard: every agent's health and, per sensor, the latest
// value and a chart of the chosen range (the last hour to the last year): the mean
// with a min/max band, from /api/series (which reads raw readings or the 1-minute or
// 1-hour rollups, as the range needs) on each (re)connection and range change.
// Everything else arrives over the /v1/live WebSocket, and for ranges up to a day
// each stored reading is appended to its chart as it comes.
// Every text from the collector is set with textContent, never parsed as HTML.
"use strict";

(function () {
  const LIVE_RANGE = 24 * 3600;  // s: up to this range, live readings are appended
  const RELOAD_EVERY = 60000;    // ms: longer ranges reload their points this often
  const MAX_HOURS = 366 * 24;    // the longest range ?hours= may ask for
  const RECONNECT_MAX = 10000;   // ms between two tries, at most
  const FAILING = 3;             // failed reads in a row that mark a sensor as failing
  // One colour per kind of reading, the same on every agent's card.
  const METRIC_COLORS = { temperature: "#c0392b", humidity: "#0a58ca", motion: "#8e44ad",
    pressed: "#b7791f" };
  const COLORS = ["#1a7f37", "#16808a", "#6d4c41", "#5c6bc0", "#d81b60"];
  const DIGITAL = { motion: ["idle", "motion"], pressed: ["released", "pressed"] };

  const main = document.getElementById("agents");
  const link = document.getElementById("link");
  const summary = document.getElementById("summary");
  const hoursSelect = document.getElementById("hours");

  const agents = new Map();        // id -> card
  let skew = 0;                    // collector clock minus this browser's, in seconds
  let windowSeconds = 3 * 3600;
  let socket = null;
  let failures = 0;
  let queued = null;               // live readings that arrive while history loads
  let dirty = new Set();
  let frame = 0;

  const now = () => Date.now() / 1000 + skew;

  // ---- formatting -------------------------------------------------------
  function ago(ts) {
    if (ts == null) return "never";
    const s = Math.max(0, now() - ts);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " days ago";
  }
  function duration(s) {
    if (typeof s !== "number") return "?";
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " days";
  }
  function number(v, digits) {
    return typeof v === "number" && isFinite(v)
      ? v.toLocaleString(undefined, { maximumFractionDigits: digits }) : "?";
  }
  function formatValue(metric, value) {
    const words = DIGITAL[metric];
    if (words) return words[value >= 0.5 ? 1 : 0];
    return number(value, 2);
  }
  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text != null) e.textContent = text;
    return e;
  }

  // ---- agents -----------------------------------------------------------
  function card(id) {
    let c = agents.get(id);
    if (c) return c;
    const root = el("section", "agent offline");
    root.dataset.agent = id;
    const head = el("div");
    head.append(el("h2", null, id));
    const badge = el("span", "badge", "never seen");
    head.append(badge);
    const health = el("div", "health");
    const sensors = el("div", "sensors");
    root.append(head, health, sensors);
    c = { id, root, badge, health, sensors, tiles: new Map(), info: null };
    agents.set(id, c);
    // Keep cards in id order.
    const ids = [...agents.keys()].sort();
    const next = ids[ids.indexOf(id) + 1];
    const empty = main.querySelector(".empty");
    if (empty) empty.remove();
    main.insertBefore(root, next ? agents.get(next).root : null);
    return c;
  }

  function updateAgents(list) {
    for (const info of list) {
      const c = card(info.id);
      c.info = info;
      for (const l of info.latest || []) {
        const t = tile(c, l.sensor, l.metric, l.unit);
        if (t.lastTs == null || l.ts > t.lastTs) showLatest(t, l.value, l.ts);
      }
      drawHealth(c);
    }
    const live = list.filter((a) => a.connected && !a.stale).length;
    summary.textContent = `${live} of ${list.length} agents live`;
  }

  function drawHealth(c) {
    const info = c.info;
    if (!info) return;
    const state = info.stale ? (info.last_seen == null ? "never seen" : "stale")
      : info.connected ? "live" : "offline";
    c.root.className = "agent " + (info.stale ? "stale" : info.connected ? "live" : "offline");
    c.badge.textContent = state;
    const st = info.status || {};
    const items = [
      ["last seen", ago(info.last_seen), info.stale],
      ["connected", info.connected ? "yes" : "no", !info.connected],
      ["clock offset", info.clock_offset == null ? "?" : (info.clock_offset >= 0 ? "+" : "")
        + number(info.clock_offset, 2) + " s", Math.abs(info.clock_offset || 0) > 2],
      ["backlog", st.buffer_depth == null ? "?" : number(st.buffer_depth, 0) + " readings"
        + (st.buffer_oldest_age ? ", oldest " + duration(st.buffer_oldest_age) : ""),
        st.buffer_depth > 1000],
      ["dropped", st.dropped == null ? "?" : number(st.dropped, 0), st.dropped > 0],
      ["version", info.version || st.version || "?", false],
      ["uptime", st.uptime == null ? "?" : duration(st.uptime), false],
      ["CPU", st.cpu_temperature == null ? "-" : number(st.cpu_temperature, 1) + " °C",
        st.cpu_temperature > 75],
      ["clock sync", st.clock_synced == null ? "?" : st.clock_synced ? "yes" : "no",
        st.clock_synced === false],
      ["stored", number(info.readings, 0), false],
    ];
    const spans = items.map(([label, value, bad]) => {
      const s = el("span", bad ? "bad" : null, label + " ");
      s.append(el("b", null, value));
      return s;
    });
    c.health.replaceChildren(...spans);
    const sensors = st.sensors && typeof st.sensors === "object" ? st.sensors : {};
    for (const t of c.tiles.values()) drawReads(t, sensors[t.sensor]);
  }

  function drawReads(t, stats) {
    if (!stats || typeof stats !== "object") {
      t.reads.textContent = "";
      return;
    }
    const failed = Number(stats.failed) || 0;
    let text = `reads: ${number(stats.good, 0)} good, ${number(failed, 0)} failed`;
    if (failed && stats.last_error) text += ` (last: ${stats.last_error})`;
    t.reads.textContent = text;
    t.reads.title = stats.last_error || "";
    // Failing now, not just now and then (a DHT misses a read every so often).
    t.reads.className = "reads" + (Number(stats.consecutive_failures) >= FAILING ? " bad" : "");
  }

  // ---- sensor tiles and charts ------------------------------------------
  function tile(c, sensor, metric, unit) {
    const key = sensor + "\u0000" + metric;
    let t = c.tiles.get(key);
    if (t) return t;
    const root = el("div", "tile");
    root.dataset.agent = c.id;
    root.dataset.sensor = sensor;
    root.dataset.metric = metric;
    const name = el("div", "name", `${sensor} · ${metric}`);
    const age = el("span", "age", "");
    const line = el("div");
    const value = el("span", "value", "–");
    const unitEl = el("span", "unit", unit || "");
    line.append(value, unitEl, age);
    const chart = el("div", "chart");
    const reads = el("div", "reads", "");
    root.append(name, line, chart, reads);
    // One point per step: time, min, mean, max (a live reading is a point of its own).
    t = { c, sensor, metric, unit, root, value, age, chart, reads, xs: [], lo: [], avg: [],
      hi: [], lastTs: null, plot: null, color: colorFor(metric) };
    c.tiles.set(key, t);
    root.dataset.color = t.color;
    // Tiles in (sensor, metric) order.
    const keys = [...c.tiles.keys()].sort();
    const next = keys[keys.indexOf(key) + 1];
    c.sensors.insertBefore(root, next ? c.tiles.get(next).root : null);
    t.plot = makePlot(t);
    drawReads(t, c.info && c.info.status && c.info.status.sensors
      ? c.info.status.sensors[sensor] : null);
    return t;
  }

  function colorFor(metric) {
    if (Object.prototype.hasOwnProperty.call(METRIC_COLORS, metric)) return METRIC_COLORS[metric];
    let hash = 0;
    for (const ch of metric) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
    return COLORS[hash % COLORS.length];
  }

  function makePlot(t) {
    const digital = metricIsDigital(t.metric);
    const opts = {
      width: Math.max(200, t.chart.clientWidth || 280),
      height: 120,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true, range: () => [now() - windowSeconds, now()] },
        y: digital ? { range: [-0.1, 1.1] } : {},
      },
      axes: [
        { stroke: "#646b75", grid: { stroke: "#eef0f2" }, ticks: { stroke: "#e3e6ea" }, size: 28 },
        { stroke: "#646b75", grid: { stroke: "#eef0f2" }, ticks: { stroke: "#e3e6ea" }, size: 42,
          values: digital ? (u, vals) => vals.map((v) => (v === 0 || v === 1 ? String(v) : ""))
            : undefined },
      ],
      series: [
        {},
        { stroke: "transparent", width: 0, points: { show: false } },  // min
        {
          stroke: t.color, width: 1.5, points: { show: false },
          paths: digital ? uPlot.paths.stepped({ align: 1 }) : undefined,
        },
        { stroke: "transparent", width: 0, points: { show: false } },  // max
      ],
      // The band between each step's max and min, around the mean.
      bands: [{ series: [3, 1], fill: t.color + "33" }],
    };
    return new uPlot(opts, data(t), t.chart);
  }

  function data(t) {
    return [t.xs, t.lo, t.avg, t.hi];
  }

  function clear(t) {
    t.xs = []; t.lo = []; t.avg = []; t.hi = [];
    t.root.dataset.points = "0";
  }

  function metricIsDigital(metric) {
    return Object.prototype.hasOwnProperty.call(DIGITAL, metric);
  }

  function showLatest(t, value, ts) {
    t.lastTs = ts;
    t.value.textContent = formatValue(t.metric, value);
    t.age.textContent = ago(ts);
    t.root.dataset.ts = String(ts);
  }

  function addPoint(t, ts, lo, avg, hi) {
    let i = t.xs.length;
    // Late (a backlog draining after an outage): keep the series sorted.
    while (i > 0 && t.xs[i - 1] > ts) i--;
    t.xs.splice(i, 0, ts);
    t.lo.splice(i, 0, lo);
    t.avg.splice(i, 0, avg);
    t.hi.splice(i, 0, hi);
  }

  function addReading(r) {
    const c = card(r.agent);
    const t = tile(c, r.sensor, r.metric, r.unit);
    if (windowSeconds <= LIVE_RANGE) {
      addPoint(t, r.ts, r.value, r.value, r.value);
      dirty.add(t);
      schedule();
    }
    if (t.lastTs == null || r.ts >= t.lastTs) showLatest(t, r.value, r.ts);
  }

  function schedule() {
    if (!frame) frame = requestAnimationFrame(redraw);
  }

  function redraw() {
    frame = 0;
    const start = now() - windowSeconds;
    for (const t of dirty) {
      // Forget what slid out of the window, in one cut.
      let cut = 0;
      while (cut < t.xs.length && t.xs[cut] < start - (t.step || 0)) cut++;
      if (cut) for (const list of data(t)) list.splice(0, cut);
      t.plot.setData(data(t));
    }
    dirty = new Set();
  }

  function everyTile(fn) {
    for (const c of agents.values()) for (const t of c.tiles.values()) fn(t);
  }

  // ---- firing alerts, at the top ------------------------------------------
  const alertsBox = document.getElementById("alerts");
  async function loadAlerts() {
    const firing = (await getJSON("/api/alerts")).alerts.filter((a) => a.state === "firing");
    alertsBox.replaceChildren(...firing.map((a) => {
      const row = el("div", "alert");
      row.dataset.alert = a.name;
      const what = a.sensor ? `${a.agent} ${a.sensor} ${a.metric} = ${number(a.value, 2)}`
        : `${a.agent} silent for ${duration(a.value)}`;
      row.append(el("strong", null, a.name), " firing: " + what,
                 el("span", "since", "since " + ago(a.since)));
      return row;
    }));
    alertsBox.hidden = firing.length === 0;
  }

  // ---- history and the live feed ----------------------------------------
  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store" });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  // Points per chart: about one per pixel of its width.
  function chartPoints() {
    const width = main.querySelector(".chart")?.clientWidth || 300;
    return Math.max(100, Math.min(2000, Math.round(width)));
  }

  async function loadHistory() {
    const until = now();
    const since = until - windowSeconds;
    const list = (await getJSON("/api/agents")).agents;
    updateAgents(list);
    const answers = await Promise.all(list.map((a) => getJSON(
      `/api/series?agent=${encodeURIComponent(a.id)}&since=${since}&until=${until}`
      + `&points=${chartPoints()}`)));
    everyTile(clear);
    list.forEach((a, i) => {
      const c = card(a.id);
      for (const s of answers[i].series) {
        const t = tile(c, s.sensor, s.metric, s.unit);
        for (const [ts, lo, avg, hi] of s.points) addPoint(t, ts, lo, avg, hi);
        t.step = answers[i].step;
        t.root.dataset.points = String(s.points.length);
        t.root.dataset.step = String(answers[i].step);
      }
    });
    everyTile((t) => dirty.add(t));
    schedule();
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + "/v1/live");
    socket = ws;
    queued = [];
    ws.onopen = async () => {
      failures = 0;
      link.textContent = "live";
      link.className = "link up";
      document.body.dataset.live = "true";
      loadAlerts().catch((e) => console.warn("alerts:", e));
      try {
        await loadHistory();
      } catch (e) {
        console.warn("history:", e);
      }
      // Readings that came in while the history loaded, unless it already had them.
      const pending = queued || [];
      queued = null;
      for (const r of pending) {
        const t = agents.get(r.agent)?.tiles.get(r.sensor + "\u0000" + r.metric);
        if (!t || !t.xs.length || r.ts > t.xs[t.xs.length - 1]) addReading(r);
      }
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      if (message.type === "agents") {
        if (typeof message.time === "number") skew = message.time - Date.now() / 1000;
        updateAgents(message.agents || []);
      } else if (message.type === "readings") {
        for (const r of message.readings || []) {
          if (queued) queued.push(r); else addReading(r);
        }
      }
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      document.body.dataset.live = "false";
      failures += 1;
      // Back off, with jitter, so a restarted collector is not stampeded by every tab.
      const delay = Math.min(RECONNECT_MAX, 500 * 2 ** Math.min(failures, 5))
        * (0.5 + Math.random() / 2);
      link.textContent = `reconnecting in ${Math.ceil(delay / 1000)} s`;
      link.className = "link down";
      setTimeout(connect, delay);
    };
  }

  // ---- the page ---------------------------------------------------------
  const wanted = Number(new URLSearchParams(location.search).get("hours"));
  if (wanted > 0 && wanted <= MAX_HOURS) {
    windowSeconds = wanted * 3600;
    if (![...hoursSelect.options].some((o) => Number(o.value) === wanted)) {
      hoursSelect.append(new Option(`${wanted} hours`, String(wanted)));
    }
    hoursSelect.value = String(wanted);
  }
  hoursSelect.addEventListener("change", () => {
    windowSeconds = Number(hoursSelect.value) * 3600;
    const url = new URL(location.href);
    url.searchParams.set("hours", hoursSelect.value);
    history.replaceState(null, "", url);
    loadHistory().catch((e) => console.warn("history:", e));
  });

  // Relative times tick, and the charts' time axis moves on, even when nothing new arrives.
  setInterval(() => {
    everyTile((t) => {
      if (t.lastTs != null) t.age.textContent = ago(t.lastTs);
      dirty.add(t);
    });
    for (const c of agents.values()) drawHealth(c);
    schedule();
    loadAlerts().catch((e) => console.warn("alerts:", e));
  }, 5000);

  // Past a day no live reading is drawn: the points come again, a minute apart.
  setInterval(() => {
    if (windowSeconds > LIVE_RANGE && socket && socket.readyState === WebSocket.OPEN) {
      loadHistory().catch((e) => console.warn("history:", e));
    }
  }, RELOAD_EVERY);

  new ResizeObserver(() => everyTile((t) => {
    const width = t.chart.clientWidth;
    if (width && Math.abs(width - t.plot.width) > 2) t.plot.setSize({ width, height: 120 });
  })).observe(main);

  // With `api.token` set on the collector, the API and the live feed want it: ask once and
  // keep it in a same-site cookie (a browser cannot put a header on a WebSocket handshake).
  async function authorize() {
    for (let tries = 0; tries < 3; tries += 1) {
      const response = await fetch("/api/agents", { cache: "no-store" });
      if (response.status !== 401) return;
      const token = window.prompt("This collector's API token (api.token in its config):");
      if (!token) return;
      document.cookie = `sensor_edge_api_token=${encodeURIComponent(token)}; path=/; `
        + "SameSite=Strict" + (location.protocol === "https:" ? "; Secure" : "");
    }
  }

  authorize().catch((e) => console.warn("authorize:", e)).finally(connect);
})();
